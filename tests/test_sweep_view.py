"""The sweep's parent run as a researcher sees it: its name and its summary (pure functions)."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from nnlab.sweep.view import (BEST_METRIC, BEST_RUN_ID_TAG, BEST_RUN_TAG, JOBS_FAILED, JOBS_FINISHED,
                              SWEEP_SECONDS, parent_run_name, parent_summary, summary_fields)

STARTED = time.mktime((2026, 11, 25, 14, 54, 31, 0, 0, -1))  # local time, as the name shows it


def run(name: str, status: str = "FINISHED", **metrics: float) -> SimpleNamespace:
    return SimpleNamespace(info=SimpleNamespace(run_name=name, run_id=f"id-{name}", status=status),
                           data=SimpleNamespace(metrics=metrics, tags={}))


def test_name_reads_study_axes_then_time():
    name = parent_run_name("init_depth", ["init", "activation", "model.depth", "seed"], STARTED,
                           "20261125-145431-845b")
    assert name == "init_depth: init×activation×depth×seed 2026-11-25 14:54 (845b)"


def test_name_is_unique_for_sweeps_started_in_the_same_minute():
    a = parent_run_name("nnlab", ["activation"], STARTED, "20261125-145431-845b")
    b = parent_run_name("nnlab", ["activation"], STARTED + 20, "20261125-145451-1c3e")
    assert a != b and a.endswith("(845b)") and b.endswith("(1c3e)")


def test_name_without_axes_and_with_many_axes():
    assert parent_run_name("smoke", [], STARTED, "x-abcd").startswith("smoke: 1 configuration 2026-11-25")
    many = parent_run_name("nnlab", ["init", "activation", "model.depth", "optimizer", "optimizer.lr", "seed"],
                           STARTED, "x-abcd")
    assert "init×activation×depth×optimizer +2 more" in many
    more = parent_run_name("nnlab", [f"k{i}" for i in range(40)], STARTED, "x-abcd")
    assert len(more) < 80  # however many axes: the name stays a name, not a wall of keys


def test_name_drops_override_prefixes_and_duplicates():
    assert parent_run_name("s", ["+experiment", "~x.lr", "x.lr"], STARTED, "x-abcd").startswith("s: experiment×lr ")
    # a config group chosen per job, with the package it is merged into: the group's own name
    assert parent_run_name("s", ["+experiment/depth_arch@_global_", "model.depth"], STARTED,
                           "x-abcd").startswith("s: depth_arch×depth ")


def test_summary_counts_best_and_time():
    children = [run("relu-he-d2-s0", test_acc=0.97), run("tanh-he-d2-s0", test_acc=0.981),
                run("sigmoid-he-d2-s0", "FAILED"), run("tanh-he-d4-s0", "KILLED"),
                run("relu-he-d4-s0", "FINISHED", test_acc=0.95)]
    metrics, tags = parent_summary(children, started=100.0, ended=142.5)
    assert metrics == {JOBS_FINISHED: 3.0, JOBS_FAILED: 2.0, BEST_METRIC: 0.981, SWEEP_SECONDS: 42.5}
    assert tags == {BEST_RUN_TAG: "tanh-he-d2-s0", BEST_RUN_ID_TAG: "id-tanh-he-d2-s0"}


def test_summary_counts_jobs_that_never_made_a_run_as_failed():
    metrics, _ = parent_summary([run("a", test_acc=0.5)], n_jobs=4)
    assert metrics[JOBS_FINISHED] == 1 and metrics[JOBS_FAILED] == 3


def test_summary_leaves_best_out_when_no_run_has_the_metric():
    metrics, tags = parent_summary([run("a", "FAILED"), run("b", test_acc=float("nan"))])
    assert BEST_METRIC not in metrics and tags == {}
    assert SWEEP_SECONDS not in metrics  # no times given: absent, not 0
    assert metrics[JOBS_FAILED] == 1 and metrics[JOBS_FINISHED] == 1


def test_summary_other_metric_and_one_line():
    metrics, tags = parent_summary([run("a", val_acc=0.5), run("b", val_acc=0.7)], metric="val_acc",
                                   started=0.0, ended=12.0)
    assert metrics["sweep/best_val_acc"] == pytest.approx(0.7) and tags[BEST_RUN_TAG] == "b"
    assert summary_fields(metrics, tags) == "2 finished, 0 failed, best val_acc=0.7000 (b), 12 s"
