"""A headless Chromium driven over the DevTools protocol, for the page's browser tests.

Debian's ``chromium`` (``scripts/bootstrap.sh test`` installs it) is started with a
fresh profile and ``--remote-debugging-port=0``; the port it picked is read from the
profile's ``DevToolsActivePort`` file, and one page target is driven over a websocket
(``websockets``, which uvicorn[standard] brings). Only what the tests need: navigate,
evaluate JavaScript, wait for a condition, type, click, screenshot; JavaScript
exceptions and console errors are collected so that a test can assert there were none.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.servers import stop_process

#: The flags this machine (and CI) needs; a fresh --user-data-dir is added per browser.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio", "--window-size=1600,1000")
START_TIMEOUT_S = 30.0


class BrowserError(AssertionError):
    """The browser could not be started or driven, or a condition never held."""


def chromium_binary() -> str:
    """The Chromium to drive: ``$TOPOSCHED_CHROMIUM``, else ``chromium`` on PATH.

    Fails (never skips) when there is none: the page's tests are part of the suite.
    """
    found = os.environ.get("TOPOSCHED_CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser")
    if not found:
        raise BrowserError("no Chromium found: the /ui browser tests need Debian's `chromium` "
                           "(run ./scripts/bootstrap.sh test as root to apt-get install it, "
                           "or set TOPOSCHED_CHROMIUM to a Chromium binary)")
    return found


class Browser:
    """One headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self, workdir: Path, width: int = 1600, height: int = 1000) -> None:
        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        self.log = (workdir / "chromium.log").open("wb")
        self.process = subprocess.Popen(
            [chromium_binary(), *FLAGS, f"--user-data-dir={profile}",
             "--remote-debugging-port=0", "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self._ids = itertools.count(1)
        self._closing = contextlib.ExitStack()
        self.errors: list[str] = []
        try:
            port = self._port(profile / "DevToolsActivePort")
            self.ws = self._attach(port)
            for method in ("Page.enable", "Runtime.enable"):
                self.send(method)
            self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    def _port(self, active: Path) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrowserError(f"chromium exited with {self.process.returncode}; see "
                                   f"{self.log.name}")
            if active.exists() and active.read_text().strip():
                return int(active.read_text().split()[0])
            time.sleep(0.05)
        raise BrowserError(f"chromium did not open its DevTools port in {START_TIMEOUT_S:.0f} s")

    def _attach(self, port: int) -> ClientConnection:
        with httpx.Client(trust_env=False, timeout=10) as http:
            targets = http.get(f"http://127.0.0.1:{port}/json/list").json()
        page = next(t for t in targets if t["type"] == "page")
        return self._closing.enter_context(connect(
            page["webSocketDebuggerUrl"], max_size=None, proxy=None,
            open_timeout=START_TIMEOUT_S))

    # -- protocol ----------------------------------------------------------------------
    def send(self, method: str, timeout_s: float = 30.0, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result (events seen meanwhile are noted)."""
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"{method}: no answer in {timeout_s} s")
            message = json.loads(self.ws.recv(timeout=left))
            if message.get("id") == call_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self._note(message)

    def _note(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"exception: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append("console.error: " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))

    # -- page --------------------------------------------------------------------------
    def navigate(self, url: str) -> None:
        """Open ``url`` and wait until its document has loaded."""
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", what=f"{url} to load")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises are awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, *, what: str, timeout_s: float = 20.0) -> Any:
        """Poll ``expression`` until it is truthy; its value. Fails naming ``what``."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout_s} s waiting for {what} "
                                   f"({expression}); page errors: {self.errors}")
            time.sleep(0.1)

    def type_into(self, selector: str, text: str) -> None:
        """Focus an input and type ``text`` as key events."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)

    def click(self, selector: str) -> None:
        """Click the element ``selector`` names (a real mouse event at its centre)."""
        box = self.evaluate(f"""(() => {{ const r = document.querySelector({json.dumps(selector)})
            .getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left",
                      clickCount=1)

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """A PNG of the page (the whole scrollable page unless ``full_page`` is off)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True, clip={
                "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        data = self.send("Page.captureScreenshot", **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """Close the browser and its process."""
        ws = getattr(self, "ws", None)
        if ws is not None:
            with contextlib.suppress(Exception):  # the process is stopped next anyway
                self.send("Browser.close", timeout_s=5)
        self._closing.close()
        stop_process(self.process, timeout_s=5)
        self.log.close()
