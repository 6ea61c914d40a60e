"""``python -m nnlab.report``: the report of one study (figures, index.md, index.html) drawn by
``nnlab.analysis.report``.

    python -m nnlab.report --experiment init_depth [--tracking-uri sqlite:///mlflow.db] [--out DIR]

Exit status 0, or 2 with one ``nnlab-report: error: ...`` line when the study cannot be reported
(nothing is half-written: the folder is drawn aside and moved into place at the end).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from nnlab._cli import exit_without_final_collection, first_import_without_collection

with first_import_without_collection("mlflow"):
    from nnlab.analysis.report import (DEFAULT_OUT, DPI, FIGURES, INSTRUMENT_FIGURES,  # noqa: F401
                                       MAX_DRAWING_WORKERS, THEORY_FIGURES, TRAINABILITY_FIGURE, SweepReportError,
                                       draw, figures, load_study, make_figures, write_report, write_sweep_report)
    from nnlab.analysis.records import AnalysisError

# the library's names, for scripts and tests that drive the report from Python
__all__ = ["DEFAULT_OUT", "DPI", "FIGURES", "INSTRUMENT_FIGURES", "THEORY_FIGURES", "TRAINABILITY_FIGURE",
           "SweepReportError", "draw", "figures", "load_study", "make_figures", "write_report", "write_sweep_report",
           "main", "cli"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nnlab-report", description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--experiment", required=True, help="MLflow experiment (= the study's tracking.experiment)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--out", default=None,
                        help=f"output folder (default: ./{DEFAULT_OUT}/<experiment>/; the committed reports/ "
                             "are written by `make report`, which passes --out)")
    parser.add_argument("--metric", default="test_acc", help="final metric to compare (default: test_acc)")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"processes drawing the figures at once (default: one per core, at most "
                             f"{MAX_DRAWING_WORKERS}; 1 draws them in this process)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: 0 on success; 2 with one ``nnlab-report: error: ...`` line on bad input."""
    args = parse_args(argv)
    out = Path(args.out or DEFAULT_OUT / args.experiment)
    start = time.perf_counter()
    store = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    print(f"nnlab-report: reading experiment {args.experiment!r} from {store} and drawing its report into "
          f"{out}/ ...", flush=True)
    try:
        path = write_report(args.experiment, out, args.tracking_uri, args.metric, workers=args.workers)
    except AnalysisError as exc:
        print(f"nnlab-report: error: {exc}", file=sys.stderr)
        return 2
    print(f"nnlab-report: wrote {path / 'index.md'}, {path / 'index.html'} and "
          f"{len(list(path.glob('*.png')))} figures in {time.perf_counter() - start:.1f} s")
    return 0


def cli() -> None:
    """``python -m nnlab.report`` / ``nnlab-report``."""
    exit_without_final_collection()
    sys.exit(main())


if __name__ == "__main__":
    cli()
