"""Notebook setup: a plotly renderer that works in JupyterLab and in offline HTML exports."""

from __future__ import annotations

from typing import Any

import plotly.io as pio

from sppd_lib.viz.style import TEMPLATE

__all__ = ["plotly_script", "setup_notebook"]


class _OfflineRenderer(pio.base_renderers.MimetypeRenderer):
    """The plotly mimetype (for JupyterLab) plus ``text/html`` that draws with the plotly.js
    embedded by :func:`setup_notebook`: no CDN, no MathJax, so exports render offline."""

    def to_mimebundle(self, fig_dict: dict[str, Any]) -> dict[str, Any]:
        bundle = pio.base_renderers.PlotlyRenderer(config={"displaylogo": False})
        html_snippet = pio.to_html(
            fig_dict,
            config={"displaylogo": False},
            include_plotlyjs=False,
            include_mathjax=False,
            full_html=False,
            default_width="100%",
            validate=False,
        )
        return {**bundle.to_mimebundle(fig_dict), "text/html": html_snippet}


def plotly_script() -> str:
    """The ``<script>`` holding plotly.js that :func:`setup_notebook` outputs, exactly; a
    report swaps it for one shared file (:func:`sppd_lib.report.share_plotly_js`)."""
    from plotly.offline import get_plotlyjs

    return f'<script type="text/javascript">{get_plotlyjs()}</script>'


def setup_notebook() -> None:
    """Make figures render in JupyterLab and in offline HTML exports of the notebook.

    Registers the ``sppd`` plotly renderer as the default and outputs plotly.js once (an
    invisible ``<script>``), so nbconvert's HTML holds everything it needs.
    """
    from IPython.display import HTML, display

    pio.renderers["sppd"] = _OfflineRenderer()
    pio.renderers.default = "sppd"
    pio.templates.default = TEMPLATE
    config = (
        "<script type=\"text/javascript\">window.PlotlyConfig = {MathJaxConfig: 'local'};</script>"
    )
    display(HTML(config + plotly_script()))
