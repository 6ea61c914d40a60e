"""Config typos and wrong types: one line in nnlab's words, "did you mean" from the schema's keys
and the group's options, exit 2, no run (real commands); the message parsing itself in-process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnlab import spec as hints  # the refusals in nnlab's words live with the schema

ROOT = Path(__file__).resolve().parents[1]


def nnlab_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "nnlab.run", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("args,line", [
    (["model.dept=3"], "nnlab: unknown config key model.dept; did you mean model.depth?"),
    (["activation=rleu"], "nnlab: activation=rleu is not an option; did you mean relu? (choices: elu, gelu,"),
    (["model.depth=1.5"], "nnlab: invalid config: model.depth=1.5 (must be an integer, got 1.5)"),
    (["-m", "model.depth=1.5,2"], "nnlab: invalid config: model.depth=1.5 (must be an integer, got 1.5)"),
    (["-m", "activation=relu,tanhh"], "nnlab: activation=tanhh is not an option; did you mean tanh?"),
    (["+model.dept=3"], "nnlab: invalid config: +model.dept=3 (nnlab does not use this key; did you mean model.depth?"),
])
def test_a_typo_or_a_wrong_type_is_one_line_with_a_suggestion(tmp_path, args, line):
    result = nnlab_run(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(line), result.stderr
    assert "reference_type" not in lines[0] and "To append" not in lines[0] and "full_key" not in lines[0]
    assert lines[0].endswith("-- no run was created") and not (tmp_path / "mlflow.db").exists()


def test_did_you_mean_picks_the_nearest_and_nothing_when_far():
    assert hints.did_you_mean("trainer.epoch", hints.schema_keys()) == "trainer.epochs"
    assert hints.did_you_mean("optimzer.lr", hints.schema_keys()) == "optimizer.lr"
    assert hints.did_you_mean("zzzz", hints.schema_keys()) is None
    assert hints.unknown_key_line("zzzz").startswith("unknown config key zzzz (")


def test_an_unrecognised_refusal_is_left_alone():
    assert hints.hydra_refusal("Error parsing override 'a=[': mismatched input") is None
