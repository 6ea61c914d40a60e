"""``python -m nnlab.notebook NOTEBOOK [OUTPUT] [-p NAME VALUE ...]``: run one of nnlab's analysis
notebooks with papermill and say in one line why it stopped, if it did.

papermill reports a failed cell with its own traceback around the notebook's error; nnlab's
notebooks raise errors that already say what is wrong in one line (``AnalysisError: no experiment
named 'init_depth' in sqlite:///mlflow.db; experiments there: smoke``), so this runner prints
that line alone. The executed notebook (outputs included) is written to OUTPUT (default:
``<notebook>.out.ipynb`` beside the input). papermill and the Jupyter kernel come with nnlab's
``dev`` extra; without them: one line naming its install command, exit 2.

Exit status: 0 the notebook ran; 1 a cell raised (its error in one line); 2 refused (no such
notebook, papermill missing).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nnlab.notebook", description=__doc__.split("\n\n")[0])
    p.add_argument("notebook", type=Path, help="the notebook to run, e.g. notebooks/ablation.ipynb")
    p.add_argument("output", type=Path, nargs="?", help="where the executed notebook goes "
                   "(default: NOTEBOOK with .out.ipynb)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a notebook parameter, as papermill's -p (e.g. -p experiment init_depth); repeatable")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    return p.parse_args(argv)


def error_line(err: BaseException) -> str:
    """A failed cell (papermill's ``PapermillExecutionError``) as ``cell N: Name: message``."""
    ename, evalue = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
    cell = getattr(err, "exec_count", None)
    first = (str(evalue).splitlines() or [""])[0]
    return f"{'cell ' + str(cell) + ': ' if cell is not None else ''}{ename}: {first}"


def main(argv: Sequence[str] | None = None) -> int:
    from nnlab.extras import MissingExtra, require

    args = parse_args(argv)
    try:
        require("dev", "python -m nnlab.notebook (papermill and a Jupyter kernel)")
    except MissingExtra as err:
        print(f"nnlab: {err}", file=sys.stderr)
        return 2
    if not args.notebook.is_file():
        print(f"nnlab: no notebook {args.notebook} (nnlab's are in notebooks/: ablation.ipynb, inspect_run.ipynb)",
              file=sys.stderr)
        return 2
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output = args.output or args.notebook.with_suffix(".out.ipynb")
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        papermill.execute_notebook(str(args.notebook), str(output), parameters=dict(args.parameter),
                                   kernel_name=args.kernel, cwd=str(args.notebook.resolve().parent),
                                   progress_bar=False)
    except PapermillExecutionError as err:
        print(f"nnlab: {args.notebook} stopped at {error_line(err)} (executed notebook: {output})", file=sys.stderr)
        return 1
    print(f"nnlab: {args.notebook} ran; executed notebook: {output}", file=sys.stderr)
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
