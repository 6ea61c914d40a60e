"""The report's index.html: one self-contained page (figures inline as base64 PNG, no file beside it needed)
that a real browser renders with every image loaded. Opened in headless Chromium (Debian's ``chromium``)
through the DevTools protocol on a pipe: no port, no extra Python package. Without chromium the browser
test skips, except under CI=true, where it fails (CI installs it, as it installs the daemons)."""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from daemons import skip_or_fail
from nnlab.analysis.fake import log_fake_sweep
from nnlab.report import FIGURES, main

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("html")
    uri = f"sqlite:///{work}/mlflow.db"
    log_fake_sweep(MlflowClient(uri), "fake", depths=(1, 4), fail=[("random", "tanh", 4, 2)])
    out = work / "report"
    assert main(["--experiment", "fake", "--tracking-uri", uri, "--out", str(out)]) == 0
    return out


def _png_width(data: bytes) -> int:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">I", data[16:20])[0]  # IHDR: width, height right after the chunk header


def test_html_is_self_contained_with_every_figure_inline(report):
    import base64

    page = (report / "index.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(FIGURES)
    assert all(src.startswith("data:image/png;base64,") for src in sources)  # nothing to fetch beside the page
    for src, name in zip(sources, FIGURES):  # the same bytes as the PNG files, in the page's order
        assert base64.b64decode(src.split(",", 1)[1]) == (report / name).read_bytes()
    assert "<th>test_acc mean</th>" in page and page.count("<tr>") == 1 + 8  # header + 8 configurations
    assert "24 runs: 8 configurations x 3 seeds; 1 failed (1 diverged)." in page
    assert not re.search(r"\*\*|`", page.split("<body>", 1)[1])  # the sentences' Markdown became HTML


class Chromium:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (it reads commands on fd 3, answers on fd 4)."""

    def __init__(self, binary: str):
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def child_fds() -> None:  # fds 3 and 4 in the browser, whatever numbers the pipes got here
            a, b = os.dup(to_browser), os.dup(from_browser)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      "--remote-debugging-pipe", f"--user-data-dir={os.environ.get('TMPDIR', '/tmp')}"
                                      f"/nnlab-chromium-{os.getpid()}"],
                                     preexec_fn=child_fds, close_fds=False, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._events, self._id = b"", [], 0

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._write, json.dumps(message).encode() + b"\0")
        answer = self._next(lambda m: m.get("id") == self._id)
        assert "error" not in answer, answer
        return answer.get("result", {})

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        return self._next(lambda m: m.get("method") == method, timeout)

    def _next(self, wanted, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, message in enumerate(self._events):
                if wanted(message):
                    return self._events.pop(i)
            while b"\0" not in self._buffer:
                if time.monotonic() > deadline:
                    raise TimeoutError("chromium did not answer")
                chunk = os.read(self._read, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed its pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            self._events.append(json.loads(raw))

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        os.close(self._read)


def test_chromium_renders_every_image(report, tmp_path):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        skip_or_fail("chromium is not installed: apt-get install chromium")
    browser = Chromium(binary)
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        browser.send("Page.enable", session)
        browser.send("Page.navigate", session, url=(report / "index.html").as_uri())
        browser.wait_event("Page.loadEventFired")  # after every image has loaded or failed
        result = browser.send("Runtime.evaluate", session, returnByValue=True, expression=(
            "JSON.stringify(Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, "
            "width: i.naturalWidth, height: i.naturalHeight})))"))
        images = json.loads(result["result"]["value"])
        shot = browser.send("Page.captureScreenshot", session, format="png")
    finally:
        browser.close()
    assert len(images) == len(FIGURES)
    for image, name in zip(images, FIGURES):
        assert image["complete"] and image["height"] > 0, image
        assert image["width"] == _png_width((report / name).read_bytes()), (name, image)  # the figure itself
    import base64

    assert _png_width(base64.b64decode(shot["data"])) > 0  # the page painted
