"""The shipped notebooks are saved without outputs, so a `git diff` shows code, not 5 MB of
plotly.js and someone's run.

Two ways in: ``make lab`` installs :func:`pre_save_hook` in JupyterLab (a save of a shipped
notebook writes it stripped; the outputs stay on screen), and ``python -m sppd_lib.nbstrip
[--check] FILE...`` strips files (``make strip-notebooks``; ``--check`` only reports, for CI).
A copy saved under another name keeps its outputs: only the names shipped in ``notebooks/``
are stripped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["SHIPPED", "main", "pre_save_hook", "strip_outputs"]

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
#: Names of the notebooks shipped in ``notebooks/`` (each paired with a jupytext ``.py``).
SHIPPED = frozenset(p.with_suffix(".ipynb").name for p in NOTEBOOKS_DIR.glob("*.py"))


def strip_outputs(notebook: dict[str, Any]) -> bool:
    """Remove outputs, execution counts and widget state from a notebook (an nbformat dict,
    in place); True when anything was removed."""
    changed = False
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("outputs"):
            cell["outputs"] = []
            changed = True
        if cell.get("execution_count") is not None:
            cell["execution_count"] = None
            changed = True
        for key in ("execution", "papermill"):  # timing metadata written by Lab / papermill
            if key in cell.get("metadata", {}):
                del cell["metadata"][key]
                changed = True
    metadata = notebook.get("metadata", {})
    for key in ("widgets", "papermill"):
        if key in metadata:
            del metadata[key]
            changed = True
    return changed


def pre_save_hook(model: dict[str, Any], path: str, **_: Any) -> None:
    """Jupyter's ``ContentsManager.pre_save_hook``: strip a shipped notebook before it is
    written (``make lab`` sets ``--ContentsManager.pre_save_hook`` to this function)."""
    if model.get("type") == "notebook" and Path(path).name in SHIPPED:
        strip_outputs(model["content"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sppd_lib.nbstrip", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path, help=".ipynb files")
    parser.add_argument("--check", action="store_true", help="report, do not change (exit 1)")
    args = parser.parse_args(argv)
    import nbformat

    dirty = []
    for path in args.files:
        notebook = nbformat.read(path, as_version=4)
        if strip_outputs(notebook):
            dirty.append(path)
            if not args.check:
                nbformat.write(notebook, path)
    for path in dirty:
        print(f"{'has outputs' if args.check else 'stripped'}: {path}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
