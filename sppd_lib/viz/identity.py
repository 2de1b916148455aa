"""The header every run page starts with: which run it shows (id, path, model, dates,
iterations) and, in a report folder, a link back to the run's index."""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from sppd_lib.viz.run import Run
from sppd_lib.viz.table import HTMLBlock

__all__ = ["run_header", "run_started", "runs_header"]

_CSS = """
.sppd-run { font: 13px/1.5 system-ui, sans-serif; background: #f5f7fa; border: 1px solid #dde3ea;
  border-radius: 4px; padding: 6px 12px; margin: 0 0 1em; }
.sppd-run b { font-size: 15px; } .sppd-run code { font-size: 12px; }
.sppd-run .picked { color: #a04000; }
"""


def run_started(run: Run) -> datetime | None:
    """When the run started: the time its ``config.yaml`` was written (``None`` if absent)."""
    config = run.directory.config
    return datetime.fromtimestamp(config.stat().st_mtime) if config.is_file() else None


def _stamp(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "unknown"


def run_header(run: Run, page: str, index_link: bool = True) -> HTMLBlock:
    """``page`` title with the run id, absolute path, model, start date, the iterations
    found and when the page was made; ``index_link`` adds "← run index" (``index.html``
    beside the page, as in a report folder). Says so when ``run_dir = None`` picked the run."""
    started = run_started(run)
    iterations = ", ".join(map(str, run.iterations)) or "none yet"
    model = run.config.get("model", "unknown")
    link = '<a href="index.html">← run index</a> · ' if index_link else ""
    picked = f'<div class="picked">{html.escape(run.picked)}</div>' if run.picked else ""
    markup = (
        f"<style>{_CSS}</style><div class='sppd-run'>{link}"
        f"<b>{html.escape(page)}</b> · run <b>{html.escape(run.run_id)}</b><br>"
        f"run directory <code>{html.escape(str(Path(run.path).resolve()))}</code><br>"
        f"model <code>{html.escape(str(model))}</code> · started {_stamp(started)} · "
        f"iterations {html.escape(iterations)} · page made {_stamp(datetime.now())}"
        f"{picked}</div>"
    )
    return HTMLBlock(markup)


def runs_header(runs: Sequence[Run], page: str, index_link: bool = True) -> HTMLBlock:
    """The header of a page about several runs: per run its id, path, model and start."""
    link = '<a href="index.html">← index</a> · ' if index_link else ""
    lines = "".join(
        f"<br>run <b>{html.escape(r.run_id)}</b> <code>{html.escape(str(r.path.resolve()))}"
        f"</code> · model <code>{html.escape(str(r.config.get('model', 'unknown')))}</code> · "
        f"started {_stamp(run_started(r))}"
        for r in runs
    )
    markup = (
        f"<style>{_CSS}</style><div class='sppd-run'>{link}<b>{html.escape(page)}</b> · "
        f"page made {_stamp(datetime.now())}{lines or '<br>no run given (run_dirs is empty)'}"
        "</div>"
    )
    return HTMLBlock(markup)
