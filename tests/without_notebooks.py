"""``python tests/without_notebooks.py ARGS``: the ``sppd`` command with the notebook stack
hidden, as after a core install (``pip install -e .``, no extras): importing plotly, papermill,
nbconvert, Jupyter or ipywidgets fails as if they were not installed.
``python tests/without_notebooks.py --import MODULE ...`` imports modules instead."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

#: Top-level packages of the ``notebooks`` extra (and what they pull in).
HIDDEN = (
    "plotly",
    "papermill",
    "nbconvert",
    "nbformat",
    "nbclient",
    "jupyter",
    "jupyterlab",
    "jupyter_client",
    "jupyter_core",
    "jupyter_server",
    "jupytext",
    "ipywidgets",
    "ipykernel",
    "IPython",
    "anywidget",
)


class HideNotebookPackages:
    """A ``sys.meta_path`` finder that reports the hidden packages as missing."""

    def find_spec(self, name: str, path: Sequence[str] | None = None, target: Any = None) -> None:
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def main(argv: list[str]) -> int:
    sys.meta_path.insert(0, HideNotebookPackages())
    if argv[:1] == ["--import"]:
        for module in argv[1:]:
            importlib.import_module(module)
        return 0
    from sppd_lib.cli import main as sppd

    return sppd(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
