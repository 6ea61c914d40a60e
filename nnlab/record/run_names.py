"""Run names that tell configurations apart within an experiment.

``nnlab.spec.run_name`` makes a name readable at a glance (``relu-he-d2-s0``) from the keys a sweep
varies; two sweeps of one experiment that fix different values elsewhere (``optimizer.lr`` per
sub-study) would both name their runs ``relu-he-d2-s0``. Before a run is created its name is
checked against the experiment: taken by a run of another configuration (another
``nnlab.fingerprint``), it gets the first four hex digits of its own fingerprint
(``relu-he-d2-s0-3fa2``). The first configuration keeps the plain name, and a configuration run
again (a re-run, a resumed job) keeps its own.
"""
from __future__ import annotations

from typing import Any

SUFFIX_HEX = 4


def distinct_run_name(tracker: Any, experiment: str, name: str, fingerprint: str,
                      fingerprint_tag: str = "nnlab.fingerprint") -> str:
    """``name``, or ``name-<4 hex of fingerprint>`` if a run of another configuration has it in the
    experiment. Offline (no store to ask) or when the store cannot answer: ``name``."""
    if getattr(tracker, "offline", False):
        return name
    quoted = name.replace("'", "\\'")
    try:
        taken = tracker.search(tracker.experiment_id(experiment), f"attributes.run_name = '{quoted}'")
    except Exception:  # a name is not worth failing a run for; the store's own errors come later
        return name
    others = {r.data.tags.get(fingerprint_tag) for r in taken} - {fingerprint}
    return f"{name}-{fingerprint[:SUFFIX_HEX]}" if others else name
