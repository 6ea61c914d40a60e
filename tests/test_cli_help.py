"""``python -m nnlab.run --help``: what a user can choose, one line each, no Hydra internals."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from nnlab import spec as C

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def help_text() -> str:
    result = subprocess.run([sys.executable, "-m", "nnlab.run", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_help_has_no_internal_groups(help_text):
    assert "schema/" not in help_text and "experiment/baseline" not in help_text
    assert "== Config ==" not in help_text  # no dump of the whole config: --cfg job does that


def test_help_lists_every_option_of_every_group(help_text):
    lines = {line.split("=", 1)[0].strip(): line for line in help_text.splitlines() if "=" in line}
    for group in (*C.GROUPS, "experiment"):
        folder = ROOT / ("experiments" if group == "experiment" else f"conf/{group}")
        options = {p.stem for p in folder.glob("*.yaml")}
        line = lines.get(group) or lines.get(f"+{group}")
        assert line is not None, group
        assert options <= set(line.replace("|", " ").split()), (group, options)


def _leaves(node, prefix=""):
    for field in dataclasses.fields(node):
        value = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{field.name}.")
        elif field.name not in C.GROUPS:
            yield prefix + field.name


def test_help_explains_every_plain_key_on_one_line(help_text):
    keys = list(_leaves(C.Config()))
    assert {"model.depth", "trainer.probe_size", "blas_threads", "tracking.flush_seconds",
            "trainer.schedule_params"} <= set(keys)
    for key in keys:
        (line,) = [ln for ln in help_text.splitlines() if ln.strip().startswith(key + " ")]
        assert len(line.split(None, 1)) == 2, key  # the key, then what it does


def test_server_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "nnlab.server", "--help"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True).stdout
    port = out.split("  --port PORT", 1)[1].split("  --", 1)[0]
    assert "default 5000" in port
