"""Checking an exported report page in headless Chromium (used by the report tests): a
minimal Chrome DevTools Protocol client that loads a page, counts the plotly figures drawn and
collects errors, and optionally takes a screenshot."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sppd_lib.report import ReportError

#: Plotly figures drawn: a graph div holding the SVG plotly renders into.
_COUNT_JS = (
    "[document.querySelectorAll('.plotly-graph-div').length,"
    " [...document.querySelectorAll('.js-plotly-plot')]"
    ".filter(d => d.querySelector('.main-svg')).length]"
)


@dataclass
class BrowserCheck:
    """What headless Chromium saw on a page."""

    #: ``.plotly-graph-div`` elements (figures in the page) and those plotly drew into.
    figures: int
    rendered: int
    #: Uncaught exceptions, ``console.error`` calls and failed loads, as text.
    errors: list[str]
    screenshot: Path | None = None
    #: What the ``probe`` expression returned (after every figure was drawn), if one was given.
    probe: Any = None
    #: ``console.warn`` / ``console.log`` messages (plotly reports a bad colour this way).
    warnings: list[str] | None = None


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable on PATH, if any."""
    import shutil

    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return next((path for name in names if (path := shutil.which(name))), None)


class _DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, url: str, timeout: float) -> None:
        import websocket

        self.socket = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:

        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise ReportError(f"DevTools {method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, deadline: float) -> None:

        while time.monotonic() < deadline:
            message = json.loads(self.socket.recv())
            self.events.append(message)
            if message.get("method") == method:
                return
        raise ReportError(f"page did not fire {method} in time")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def errors(self) -> list[str]:
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                found.append(details.get("exception", {}).get("description") or str(details))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(" ".join(str(a.get("value", a)) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                found.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
        return found

    def warnings(self) -> list[str]:
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.consoleAPICalled" and params.get("type") in (
                "warning",
                "log",
                "trace",
            ):
                found.append(" ".join(str(a.get("value", a)) for a in params.get("args", [])))
        return found


def _devtools_url(profile: Path, deadline: float) -> str:
    import urllib.request

    port_file = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if port_file.is_file() and port_file.read_text().strip():
            port = port_file.read_text().split()[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as response:
                pages = [p for p in json.load(response) if p.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.1)
    raise ReportError("Chromium did not open its DevTools port in time")


def _inspect_page(
    tools: _DevTools, url: str, screenshot: Path | None, deadline: float, probe: str | None = None
) -> BrowserCheck:

    for domain in ("Runtime", "Log", "Page"):
        tools.call(f"{domain}.enable")
    tools.call(
        "Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1,
        mobile=False,
    )  # fmt: skip
    tools.call("Page.navigate", url=url)
    tools.wait_for("Page.loadEventFired", deadline)
    figures, rendered = tools.evaluate(_COUNT_JS)
    while rendered < figures and time.monotonic() < deadline:
        time.sleep(0.2)
        figures, rendered = tools.evaluate(_COUNT_JS)
    probed = tools.evaluate(probe) if probe else None
    if screenshot is not None:
        height = int(tools.evaluate("document.documentElement.scrollHeight"))
        clip = {"x": 0, "y": 0, "width": 1280, "height": min(height, 16000), "scale": 1}
        shot = tools.call("Page.captureScreenshot", clip=clip, captureBeyondViewport=True)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
    return BrowserCheck(figures, rendered, tools.errors(), screenshot, probed, tools.warnings())


def _end_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group of ``process`` (a session leader), then SIGKILL what is left
    of it (helpers that outlive the leader)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def browser_check(
    page: str | os.PathLike[str],
    screenshot: str | os.PathLike[str] | None = None,
    timeout: float = 90.0,
    probe: str | None = None,
) -> BrowserCheck:
    """Open an HTML file in headless Chromium (a fresh profile), wait until plotly has drawn
    every figure, collect JavaScript errors and optionally save a full-page PNG. ``probe``,
    a JavaScript expression, runs before the screenshot (e.g. to pick a tree in the offline
    explorer) and its value comes back as :attr:`BrowserCheck.probe`."""

    chromium = find_chromium()
    if chromium is None:
        raise ReportError("Chromium not found on PATH (Debian: apt-get install chromium)")
    deadline = time.monotonic() + timeout
    # Chromium's helpers may still be writing to the profile when it is removed: a left-over
    # temporary folder must not fail a check that has already finished.
    with tempfile.TemporaryDirectory(
        prefix="sppd-chromium-", ignore_cleanup_errors=True
    ) as profile:
        command = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={profile}", "--remote-debugging-port=0",
            "--remote-allow-origins=*", "--no-first-run", "about:blank",
        ]  # fmt: skip
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: its helpers end with it
        )
        try:
            tools = _DevTools(_devtools_url(Path(profile), deadline), timeout)
            url = Path(page).resolve().as_uri()
            shot = Path(screenshot) if screenshot is not None else None
            return _inspect_page(tools, url, shot, deadline, probe)
        finally:
            _end_process_group(process)
