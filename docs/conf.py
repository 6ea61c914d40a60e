"""Sphinx configuration of nnlab's manual (``make docs``; CI builds it with ``-W --keep-going -n``).

The source directory is the repository root, not ``docs/``: the pages live in ``docs/`` and the committed
study reports in ``reports/<study>/index.md`` (written by ``python -m nnlab.report``) become pages of the
site too, so a link such as ``../reports/init_depth/index.md`` in a page works the same on the repository
host and in the built site. ``include_patterns`` keeps everything else (README, notebooks, .venv) out.

Build: ``sphinx-build -c docs -b html . docs/_build/html`` (what ``make docs`` runs).
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document this checkout's nnlab, not an installed copy

import nnlab  # noqa: E402

project = "nnlab"
author = "the nnlab authors"
copyright = "nnlab authors, MIT licence"
release = version = nnlab.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

root_doc = "docs/index"
include_patterns = ["docs/**", "reports/*/index.md"]
exclude_patterns = ["docs/_build", "docs/_templates", ".*", "**/.ipynb_checkpoints"]
templates_path = [str(Path(__file__).parent / "_templates")]  # absolute: autosummary reads it from the source dir
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}

# --- MyST ----------------------------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links work like on the repository host, down to ###

# --- API reference (docs/api.md) -----------------------------------------------------------------------------
API_MODULES = ("nnlab.core", "nnlab.theory", "nnlab.analysis", "nnlab.data")  # as listed in docs/api.md
autosummary_generate = True  # writes docs/api/generated/*.rst at every build (git-ignored)
autosummary_ignore_module_all = True  # summaries list what a module defines; packages list their modules
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # defaults as written (dtype=np.float32), not their repr, which is not Python
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
add_module_names = False

# No network at build time (CI has none), so no intersphinx: references to other libraries' types in
# signatures (numpy.ndarray, pandas.DataFrame, mlflow's client, ...) cannot resolve. Nitpicky mode (-n)
# still checks every reference into nnlab itself; these patterns only excuse the outside world.
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|pandas|pd|matplotlib|mpl|seaborn|sns|mlflow|omegaconf|hydra|scipy|sklearn)(\..*)?"),
    (r"py:.*", r"(typing|collections|collections\.abc|dataclasses|pathlib|os|enum|abc|re)\..*"),
    (r"py:.*", r"(Path|Sequence|Mapping|Iterable|Iterator|Callable|Any|Literal|Optional|Union|NDArray)"),
    (r"py:.*", r"(np|numpy)\.(ndarray|dtype|random\.Generator|floating|integer)"),
    (r"py:class", r"(ArrayLike|DTypeLike|Array|Axes|Figure|DataFrame|Series|MlflowClient|Run)"),
]


def _exports() -> dict[str, list[tuple[str, str, str]]]:
    """For each documented package, its ``__all__`` as (name, role, target): a function or a class by its
    full name in its own module (``obj``, ``nnlab.core.network.MLP``), data by the module that assigns it
    (``mod``, ``nnlab.core.activations``)."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for pkg_name in API_MODULES:
        pkg = importlib.import_module(pkg_name)
        if not hasattr(pkg, "__path__"):  # a plain module documents its own members
            continue
        subs = [importlib.import_module(f"{pkg_name}.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]
        rows = []
        for name in getattr(pkg, "__all__", []):
            obj = getattr(pkg, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                rows.append((name, "obj", f"{obj.__module__}.{obj.__qualname__}"))
            else:  # data: the first submodule that assigns it at top level
                home = next((m.__name__ for m in subs if _assigns(m, name)), pkg_name)
                rows.append((name, "mod", home))
        out[pkg_name] = rows
    return out


def _assigns(module, name: str) -> bool:
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return False
    return any(line.startswith((f"{name} =", f"{name}:")) for line in source.splitlines())


autosummary_context = {"exports": _exports()}

# --- HTML (pydata-sphinx-theme, as NumPy, pandas, Matplotlib and scikit-learn) --------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"nnlab {release}"
html_static_path = [str(Path(__file__).parent / "_static")]
html_css_files = ["nnlab.css"]
html_theme_options = {
    "navbar_align": "left",
    "header_links_before_dropdown": 7,
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "secondary_sidebar_items": ["page-toc", "sourcelink"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
# Pages without sub-pages get no left sidebar (it would be an empty "Section Navigation" column): the
# article gets the width its tables need. Pages with sub-pages (studies -> reports, api -> modules) keep it.
html_sidebars = {f"docs/{page.stem}": [] for page in (ROOT / "docs").glob("*.md")
                 if page.stem not in ("studies", "api")}
html_show_sourcelink = True
html_copy_source = True


# nnlab's docstrings are written to read in help() and in the source: plain text with ASCII maths
# (``|G|^2``, ``||x_n||``), dash lists that follow their lead-in line directly and tables drawn with notes
# beside them. Those are not valid reStructuredText, and the hook below makes them so instead of rewriting
# every docstring: a bar outside ``literals`` and literal blocks is a literal bar (reST would read |x| as a
# substitution), a list gets the blank lines reST needs around it, and a table drawn between ``=====``
# borders is shown as drawn, in a literal block. Everything else (``literals``, :func:`roles`, *emphasis*,
# ``::`` blocks) is reST as is.
_LITERAL = re.compile(r"(``.+?``|`[^`]+`)")
_ITEM = re.compile(r"^(\s*)[-*] \S")


def _plain_to_rest(app, what, name, obj, options, lines: list[str]) -> None:
    lines[:] = _tables_as_literals(lines)
    out: list[str] = []
    item_indent: int | None = None  # indent of the current list's items, None outside a list
    literal_indent: int | None = None  # inside a literal block (after a "::" line): left as it is
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None and (not line.strip() or indent > literal_indent):
            out.append(line)
            continue
        literal_indent = None
        if line.rstrip().endswith("::"):
            literal_indent = indent
        parts = _LITERAL.split(line)
        line = "".join(p if i % 2 else p.replace("|", r"\|") for i, p in enumerate(parts))
        match = _ITEM.match(line)
        indent = len(line) - len(line.lstrip())
        prev = out[-1] if out else ""
        if match and item_indent is None:
            if prev.strip():
                out.append("")
            item_indent = len(match.group(1))
        elif item_indent is not None and line.strip() and not match and indent <= item_indent:
            if prev.strip():
                out.append("")
            item_indent = None
        elif not line.strip() and item_indent is not None:
            item_indent = None
        out.append(line)
    lines[:] = out


_TABLE_BORDER = re.compile(r"^\s*=+(\s+=+)+\s*$")


def _tables_as_literals(lines: list[str]) -> list[str]:
    """A table drawn for help() (rows under ``=====  =====`` borders, notes past the last column) is shown
    as the docstring draws it, in a literal block, instead of being parsed as a reST table."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if _TABLE_BORDER.match(line) and (not out or not out[-1].strip()):
            indent = line[: len(line) - len(line.lstrip())]
            out += [f"{indent}::", ""]
            while i < len(lines) and lines[i].strip():
                out.append(f"{indent}    {lines[i][len(indent):]}")
                i += 1
            out.append("")
            continue
        out.append(line)
        i += 1
    return out


def _dataclass_signature(app, what, name, obj, options, signature, return_annotation):
    """A dataclass field with a default_factory shows as ``= <factory>``, which is not Python, so Sphinx
    cannot parse the signature; show the call that makes the default instead (``= list()``)."""
    if signature and "<factory>" in signature and dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            if f.default_factory is not dataclasses.MISSING:
                factory = getattr(f.default_factory, "__name__", "factory")
                signature = signature.replace("<factory>", f"{factory}()", 1)
    return signature, return_annotation


def _drop_object_base(app, name, obj, options, bases: list) -> None:
    """"Bases: object" says nothing; show a class's bases only when it has real ones."""
    bases[:] = [b for b in bases if b is not object]


def _resolve_reexport(app, env, node, contnode):
    """A reference to a name a package re-exports (``nnlab.core.fit``, or ``predict_network`` in a package's
    docstring) points to where the object is documented: its defining module (``nnlab.core.train.fit``)."""
    if node.get("refdomain") != "py":
        return None
    target, module = node["reftarget"], node.get("py:module") or ""
    for candidate in ([f"{module}.{target}"] if module else []) + [target]:
        mod_name, _, attr = candidate.rpartition(".")
        try:
            obj = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError, ValueError):
            continue
        home = getattr(obj, "__module__", None)
        if home and home.startswith("nnlab") and f"{home}.{attr}" != candidate:
            node["reftarget"] = f"{home}.{getattr(obj, '__qualname__', attr)}"
            return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, node["reftype"], node[
                "reftarget"], node, contnode)
    return None


def _redirect_root(app, exception) -> None:
    """The site's pages sit under docs/ (the source tree's layout); give the build folder an index.html
    that opens the manual's first page."""
    if exception is None and app.builder.format == "html":
        (Path(app.outdir) / "index.html").write_text(
            '<!doctype html><meta charset="utf-8"><title>nnlab</title>'
            '<meta http-equiv="refresh" content="0; url=docs/index.html">'
            '<a href="docs/index.html">nnlab manual</a>\n', encoding="utf-8")


def setup(app):
    app.connect("autodoc-process-docstring", _plain_to_rest)
    app.connect("autodoc-process-signature", _dataclass_signature)
    app.connect("autodoc-process-bases", _drop_object_base)
    app.connect("missing-reference", _resolve_reexport)
    app.connect("build-finished", _redirect_root)
