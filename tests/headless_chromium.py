"""Debian's headless Chromium over the DevTools protocol: open a page, wait for text, click, screenshot.

The Prefect UI is a single-page app that fills in from API calls after load, so a test waits for the text
it expects rather than for a load event.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

# Clicks the innermost visible element whose own text is `label` (a tab, a link, a button).
CLICK_JS = """(label) => {
  const hits = [...document.querySelectorAll('body *')].filter(
    (el) => el.offsetParent !== null && el.textContent.trim() === label);
  const inner = hits.filter((el) => !hits.some((other) => other !== el && el.contains(other)));
  if (!inner.length) return false;
  inner[0].click();
  return true;
}"""


class Page:
    """One browser tab, spoken to over its DevTools websocket."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:  # events arrive in between; only the answer to this call matters
            answer = json.loads(self._socket.recv(timeout=60))
            if answer.get("id") == message_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, ready: Callable[[str], bool], timeout_s: float = 30) -> str:
        """The page's visible text once `ready(text)` holds; fails with the last text seen."""
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.text()
            if ready(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"page not ready after {timeout_s} s; it shows:\n{text[:3000]}")
            time.sleep(0.25)

    def click(self, label: str) -> None:
        if not self.evaluate(f"({CLICK_JS})({json.dumps(label)})"):
            raise AssertionError(f"nothing visible reads {label!r}; the page shows:\n{self.text()[:3000]}")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path


@contextmanager
def chromium(profile: Path, width: int = 1400, height: int = 1000) -> Iterator[Page]:
    """A headless Chromium with a throwaway profile; yields its first tab and kills the browser after."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise RuntimeError("chromium is not installed: make browser")
    profile.mkdir(parents=True, exist_ok=True)
    command = [binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
    process = subprocess.Popen(
        [*command, "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port = _devtools_port(profile / "DevToolsActivePort", process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            target = next(t for t in json.load(answer) if t["type"] == "page")
        with connect(target["webSocketDebuggerUrl"], max_size=None) as socket:
            page = Page(socket)
            page.call("Page.enable")
            yield page
    finally:
        process.kill()
        process.wait(timeout=10)


def _devtools_port(active_port: Path, process: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
    """Chromium writes the port it chose for --remote-debugging-port=0 into its profile."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode} before it listened")
        if active_port.exists() and (lines := active_port.read_text().split()):
            return int(lines[0])
        time.sleep(0.1)
    raise RuntimeError(f"chromium wrote no {active_port.name} in {timeout_s} s")
