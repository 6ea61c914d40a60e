"""nnlab's optional extras (``pip install 'nnlab[slurm]'`` ...): is one installed, and the one line
that says how to install it when it is not.

A command that needs an extra checks it first, before it creates anything (a sweep folder, an
MLflow run), and exits 2 with :func:`missing_line`. Imports nothing but the standard library.
"""
from __future__ import annotations

import importlib.util
import sys
from typing import Iterable

# extra -> the modules it provides (checked without importing them)
EXTRAS: dict[str, tuple[str, ...]] = {
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
    "server": ("psycopg",),
    "dev": ("papermill", "ipykernel", "nbformat"),  # the notebooks' runner and kernel, and pytest
}
# hydra/launcher=NAME (conf/hydra/launcher/ and the plugins' own names) -> the extra it needs
LAUNCHER_EXTRAS = {"slurm": "slurm", "submitit_local": "slurm", "submitit_slurm": "slurm", "ray": "ray",
                   "ray_aws": "ray"}
# a launcher's _target_ module prefix -> the extra it needs
_TARGET_EXTRAS = {"hydra_plugins.hydra_submitit_launcher": "slurm", "hydra_plugins.hydra_ray_launcher": "ray"}


class MissingExtra(RuntimeError):
    """An optional extra nnlab needs for what was asked is not installed; the message is one line."""

    def __init__(self, extra: str, what: str, modules: Iterable[str]):
        self.extra, self.modules = extra, tuple(modules)
        super().__init__(f"{what} needs nnlab's '{extra}' extra, which is not installed "
                         f"(no module {', '.join(self.modules)}): {install_command(extra)}")


def install_command(extra: str) -> str:
    """``pip install 'nnlab[EXTRA]'`` (into the Python that runs nnlab)."""
    return f"pip install 'nnlab[{extra}]'"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None
        return False


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported ([] when it is installed)."""
    return [m for m in EXTRAS[extra] if not _importable(m)]


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtra` if ``extra`` is not installed; ``what`` names what needs it."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtra(extra, what, missing)


def launcher_extra(name_or_target: str) -> str | None:
    """The extra a launcher needs, from its ``hydra/launcher`` choice or its ``_target_``; None for
    the ones nnlab ships (basic, joblib)."""
    if name_or_target in LAUNCHER_EXTRAS:
        return LAUNCHER_EXTRAS[name_or_target]
    return next((e for prefix, e in _TARGET_EXTRAS.items() if name_or_target.startswith(prefix)), None)


def check_launcher(name_or_target: str) -> None:
    """Raise :class:`MissingExtra` when the launcher's extra is not installed."""
    extra = launcher_extra(name_or_target)
    if extra is not None:
        label = name_or_target if name_or_target in LAUNCHER_EXTRAS else name_or_target.rsplit(".", 1)[-1]
        require(extra, f"hydra/launcher={label}")


def launcher_choices(argv: Iterable[str]) -> list[str]:
    """The ``hydra/launcher=NAME`` choices on a command line."""
    found = []
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key == "hydra/launcher" and value:
            found.append(value)
    return found


def refuse_missing_launcher(argv: Iterable[str]) -> None:
    """``nnlab.run``'s first step: a launcher on the command line whose extra is missing -> one line
    and exit 2, before Hydra makes a sweep folder or nnlab an MLflow run."""
    for choice in launcher_choices(argv):
        try:
            check_launcher(choice)
        except MissingExtra as err:
            sys.stderr.write(f"nnlab: {err} -- no run was created\n")
            sys.exit(2)


def hint_for_hydra_error(text: str) -> str:
    """Hydra's refusal when a launcher plugin is absent (``Could not load 'hydra/launcher/submitit_slurm'``,
    ``Unknown plugin class : '...LocalLauncher'``) -> nnlab's line naming the extra; else ``text``."""
    for name, extra in LAUNCHER_EXTRAS.items():
        if f"hydra/launcher/{name}'" in text and missing_modules(extra):
            return str(MissingExtra(extra, f"hydra/launcher={name}", missing_modules(extra)))
    for prefix, extra in _TARGET_EXTRAS.items():
        if f"{prefix}." in text and missing_modules(extra):
            return str(MissingExtra(extra, "this launcher", missing_modules(extra)))
    return text
