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
    same_name = "attributes.run_name = '{}'".format(name.replace("'", "\\'"))
    tag = f"tags.`{fingerprint_tag}`"
    try:
        experiment_id = tracker.experiment_id(experiment)
        # at most one run each (another fingerprint; none): not every run of that name with all its
        # params, metrics and tags: with 100 earlier runs of the name that took a one-epoch command from
        # 2.05 to 2.71 s CPU; now 1.70 and 1.74 s (docs/speed.md, start-up)
        taken = (tracker.search(experiment_id, f"{same_name} and {tag} != '{fingerprint}'", max_results=1)
                 or tracker.search(experiment_id, f"{same_name} and {tag} IS NULL", max_results=1))
    except Exception:  # a name is not worth failing a run for; the store's own errors come later
        return name
    return f"{name}-{fingerprint[:SUFFIX_HEX]}" if taken else name
