"""The report in a real browser: headless Chromium opens it from a file path, with no console
error, no failed or external request, a working sort script, and a screenshot.

Talks the DevTools protocol over --remote-debugging-pipe (fd 3 in, fd 4 out, NUL-separated JSON),
so no driver package is needed. Skips only where no Chromium binary exists; set MPBENCH_CHROMIUM
to use another one, MPBENCH_SCREENSHOT_DIR to keep the screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from report_fixtures import realistic_run

from bench.views.report import render_report

pytestmark = pytest.mark.browser

TIMEOUT_S = 60.0
VIEWPORT = (1280, 900)


def chromium_binary() -> str | None:
    """MPBENCH_CHROMIUM, else the first Chromium/Chrome on PATH."""
    if os.environ.get("MPBENCH_CHROMIUM"):
        return os.environ["MPBENCH_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _high_fd(fd: int, lowest: int = 10) -> int:
    """Duplicate fd to a number >= lowest (closing the original) and return the new number."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, lowest)
    os.close(fd)
    return high


class DevTools:
    """A minimal DevTools protocol client over Chromium's pipe transport."""

    def __init__(self, binary: str, profile_dir: Path) -> None:
        to_browser_r, self._to_browser_w = os.pipe()
        self._from_browser_r, from_browser_w = os.pipe()
        # Move the child's ends above 3 and 4, so the redirections below cannot clobber them.
        to_browser_r, from_browser_w = (_high_fd(to_browser_r), _high_fd(from_browser_w))
        args = [
            binary,
            "--headless",
            "--no-sandbox",  # root in CI containers
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile_dir}",
            "about:blank",
        ]
        # The browser reads commands on fd 3 and writes answers on fd 4: a shell moves the pipe
        # ends there (a preexec_fn would run Python in a forked child, unsafe with threads).
        wire = (
            f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        )
        self.proc = subprocess.Popen(
            # bash, not sh: dash takes only single-digit fds in redirections.
            [shutil.which("bash") or "/bin/bash", "-c", wire, "bash", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(to_browser_r, from_browser_w),
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._responses: dict[int, dict[str, Any]] = {}
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        """Split the browser's output into messages (each ends with a NUL byte)."""
        buffer = b""
        while True:
            chunk = os.read(self._from_browser_r, 65536)
            if not chunk:
                self._messages.put(None)
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                self._messages.put(json.loads(raw))

    def _pump(self, deadline: float) -> None:
        """Take one message: responses are kept by id, events recorded in order."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no answer from Chromium in time")
        try:
            message = self._messages.get(timeout=remaining)
        except queue.Empty:
            raise TimeoutError("no answer from Chromium in time") from None
        if message is None:
            raise RuntimeError("Chromium closed the DevTools pipe")
        if "id" in message:
            self._responses[message["id"]] = message
        else:
            self.events.append(message)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send a command and wait for its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while self._next_id not in self._responses:
            self._pump(deadline)
        response = self._responses.pop(self._next_id)
        if "error" in response:
            raise RuntimeError(f"{method}: {response['error']}")
        return response.get("result", {})

    def wait_event(self, method: str, session: str) -> dict[str, Any]:
        """Wait until an event of this method arrives for the session."""
        deadline = time.monotonic() + TIMEOUT_S
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            seen = len(self.events)
            self._pump(deadline)

    def close(self) -> str:
        """Close the browser (it started here, so it is ours to end) and return its stderr."""
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            _, stderr = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, stderr = self.proc.communicate()
        os.close(self._to_browser_w)
        return stderr.decode(errors="replace")


def open_page(binary: str, url: str, profile_dir: Path) -> tuple[DevTools, str]:
    """Start Chromium, open url in a fresh tab with console/network logging, wait for load."""
    browser = DevTools(binary, profile_dir)
    target = browser.call("Target.createTarget", url="about:blank")["targetId"]
    session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.call(f"{domain}.enable", session)
    width, height = VIEWPORT
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        session,
        width=width,
        height=height,
        deviceScaleFactor=1,
        mobile=False,
    )
    browser.call("Page.navigate", session, url=url)
    browser.wait_event("Page.loadEventFired", session)
    return browser, session


def evaluate(browser: DevTools, session: str, expression: str) -> Any:
    """Evaluate JavaScript in the page and return its JSON value."""
    result = browser.call(
        "Runtime.evaluate", session, expression=expression, returnByValue=True, awaitPromise=True
    )
    if "exceptionDetails" in result:
        raise AssertionError(f"page script failed: {result['exceptionDetails']}")
    return result["result"].get("value")


def page_problems(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions, failed loads and any request that is not file:/data:."""
    problems = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            problems.append(f"uncaught: {params.get('exceptionDetails', {}).get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            problems.append(f"console.{params['type']}: {params.get('args')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            problems.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        elif method == "Network.loadingFailed":
            problems.append(f"failed load: {params.get('errorText')} ({params.get('type')})")
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if not url.startswith(("file:", "data:")):
                problems.append(f"request leaves the file: {url}")
    return problems


def screenshot(browser: DevTools, session: str, path: Path, max_height: int = 12000) -> Path:
    """A full-page PNG (up to max_height CSS pixels tall)."""
    size = browser.call("Page.getLayoutMetrics", session)["cssContentSize"]
    height = min(int(size["height"]), max_height)
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        session,
        width=VIEWPORT[0],
        height=height,
        deviceScaleFactor=1,
        mobile=False,
    )
    data = browser.call("Page.captureScreenshot", session, format="png")["data"]
    path.write_bytes(base64.b64decode(data))
    return path


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium binary, or a skip that says how to get one."""
    binary = chromium_binary()
    if binary is None:
        pytest.skip(
            "no Chromium binary found (apt-get install -y chromium, or set MPBENCH_CHROMIUM)"
        )
    return binary


def test_report_renders_in_chromium(chromium: str, tmp_path: Path) -> None:
    """Loads from file:// with no console error, no failed or outside request; sorting works."""
    html = render_report(realistic_run(tmp_path / "run"))
    browser, session = open_page(chromium, html.resolve().as_uri(), tmp_path / "profile")
    try:
        counts = evaluate(
            browser,
            session,
            """(() => {
                const out = {};
                document.querySelectorAll('section[data-section]').forEach(s => {
                    out[s.dataset.section] = s.querySelectorAll('figure.plot svg').length;
                });
                out.title = document.title;
                out.rawRows = document.querySelectorAll('#raw-table tbody tr').length;
                // Every figure laid out with a real size (a broken SVG renders 0x0).
                out.zeroSized = Array.from(document.querySelectorAll('figure.plot svg'))
                    .filter(s => s.getBoundingClientRect().width < 50).length;
                return out;
            })()""",
        )
        sorted_ok = evaluate(
            browser,
            session,
            """(() => {
                const table = document.getElementById('raw-table');
                const heads = Array.from(table.tHead.rows[0].cells);
                const col = heads.findIndex(h => h.textContent === 'samples/s');
                const values = () => Array.from(table.tBodies[0].rows)
                    .map(r => parseFloat(r.cells[col].dataset.v)).filter(v => !isNaN(v));
                heads[col].click();
                const up = values();
                heads[col].click();
                const down = values();
                const isSorted = (xs, sign) =>
                    xs.every((x, i) => i === 0 || sign * (x - xs[i - 1]) >= 0);
                return up.length > 10 && isSorted(up, 1) && isSorted(down, -1)
                    && heads[col].getAttribute('aria-sort') === 'descending';
            })()""",
        )
        shot = screenshot(browser, session, tmp_path / "report.png")
    finally:
        stderr = browser.close()
    keep = os.environ.get("MPBENCH_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / "report.png")

    assert page_problems(browser.events) == [], stderr[-2000:]
    assert counts["title"].startswith("mpbench report: tiny-sweep")
    for section in (
        "throughput",
        "memory",
        "speedup",
        "loss",
        "tradeoff",
        "step-times",
        "activations",
    ):
        assert counts[section] >= 1, (section, counts)
    assert counts["zeroSized"] == 0
    assert counts["rawRows"] == 2 * 2 * 7 * 2 + 2
    assert sorted_ok is True
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 50_000
