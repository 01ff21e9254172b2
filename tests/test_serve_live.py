"""fewstep serve for real: the official openai client against a uvicorn server, SIGTERM to
``fewstep serve`` in a subprocess while a request decodes, and the playground in a headless browser."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from serve_helpers import QUESTIONS, ROOT, free_port, generate, post

# --- the official openai client against a real server --------------------------------------------------------------

def test_openai_client(live, model):
    openai = pytest.importorskip("openai", reason="the openai client (dev extra) is not installed")
    base, _ = live
    c = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    q = QUESTIONS[3]
    ref = generate(model, q, "cad", ["tau=0.9"])
    extra = {"strategy": "cad", "settings": {"tau": 0.9}}
    chat = c.chat.completions.create(model="tiny-dlm", messages=[{"role": "user", "content": q}], extra_body=extra)
    assert chat.choices[0].message.content == ref.text and chat.usage.completion_tokens == ref.answer_tokens
    stream = c.chat.completions.create(model="tiny-dlm", messages=[{"role": "user", "content": q}], stream=True,
                                       extra_body=extra)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == ref.text
    text = "Q: " + q + " A:"
    ref_c = generate(model, list(model.tokenizer.encode(text)), "llada", ["steps=12"])
    comp = c.completions.create(model="tiny-dlm", prompt=text, max_tokens=24, extra_body={"settings": {"steps": 12}})
    assert comp.choices[0].text == ref_c.text
    stream = c.completions.create(model="tiny-dlm", prompt=text, max_tokens=24, stream=True,
                                  extra_body={"settings": {"steps": 12}})
    assert "".join(ch.choices[0].text for ch in stream) == ref_c.text
    with pytest.raises(openai.BadRequestError, match="has no setting 'tau'"):
        c.completions.create(model="tiny-dlm", prompt=text, extra_body={"settings": {"tau": 0.5}})
    assert [m.id for m in c.models.list()] == ["tiny-dlm"]


# --- fewstep serve in a subprocess: SIGTERM ------------------------------------------------------------------------

class _Log:
    """A subprocess's stderr, read on a thread as it comes."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._cv = threading.Condition()
        self._ended = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._cv:
                self.lines.append(line)
                self._cv.notify_all()
        with self._cv:
            self._ended = True
            self._cv.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        """Whether a line containing ``text`` arrives (False: the stream ended or ``timeout`` passed first)."""
        def seen() -> bool:
            return any(text in line for line in self.lines)

        with self._cv:
            self._cv.wait_for(lambda: self._ended or seen(), timeout)
            return seen()

    def text(self) -> str:
        """All of it (once the process has ended)."""
        self._thread.join(30)
        return "".join(self.lines)


def _sse_events(resp):
    """The data of each server-sent event of a streamed answer, as it arrives."""
    for line in iter(resp.readline, b""):
        if line.startswith(b"data: "):
            yield line.removeprefix(b"data: ").strip().decode()


@pytest.mark.slow
def test_sigterm_lets_requests_in_flight_finish(model):
    """`fewstep serve` in a subprocess: SIGTERM while a (streamed) request decodes; the request
    still gets its whole answer, then the server exits."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fewstep.cli", "serve", "--port", str(port), "--log-level",
                             "info", "--max-tokens", "160"], env=env, stderr=subprocess.PIPE, text=True)
    log = _Log(proc.stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        assert log.wait_for("Uvicorn running on", timeout=120), "fewstep serve did not start:\n" + log.text()
        body = {"model": "tiny-dlm", "prompt": "Q: " + QUESTIONS[0] + " A:", "max_tokens": 160,
                "settings": {"steps": 160}, "stream": True, "canvas": True, "stream_options": {"include_usage": True}}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        events = _sse_events(resp)
        first = json.loads(next(events))  # a step of the decode: the request is in flight
        assert None in first["fewstep"]["tokens"]
        proc.send_signal(signal.SIGTERM)
        rest = list(events)
        conn.close()
        assert rest[-1] == "[DONE]"
        last = [json.loads(e) for e in rest[:-1]]
        assert last[-1]["usage"]["nfe"] == 160 and last[-2]["fewstep"]["done"]
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn ends by re-raising the signal it handled
        assert "Traceback" not in log.text()
        with pytest.raises(OSError):
            post(base, "/v1/completions", body, timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the playground in a real headless browser ----------------------------------------------------------------------

def _browser() -> str | None:
    """A Chromium executable: $FEWSTEP_CHROMIUM, the system's, or Playwright's own download."""
    import shutil

    for path in (os.environ.get("FEWSTEP_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                 shutil.which("google-chrome")):
        if path and Path(path).exists():
            return path
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            path = p.chromium.executable_path
        return path if Path(path).exists() else None
    except Exception:
        return None


@pytest.mark.slow
def test_playground_in_a_browser(live, tmp_path):
    """The page loads, a prompt is submitted, the final text equals the API's answer; then two
    strategies side by side. The screenshot goes to tmp_path (and to docs/img/playground.png with
    FEWSTEP_UPDATE_SCREENSHOT=1)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    chromium = _browser()
    if chromium is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium, or python -m playwright install chromium)")
    base, _ = live
    q = QUESTIONS[5]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 640})
            page.goto(base + "/")
            page.wait_for_function("document.querySelectorAll('#strategy-a option').length > 1")
            page.fill("#prompt", q)
            page.fill("#max-tokens", "24")
            page.select_option("#strategy-a", "llada")
            page.click("#run")
            page.wait_for_function("document.getElementById('status-a').textContent === 'done'", timeout=60000)
            body = {"model": "tiny-dlm", "max_tokens": 24, "messages": [{"role": "user", "content": q}]}
            status, api = post(base, "/v1/chat/completions", {**body, "strategy": "llada"})
            assert status == 200 and api["choices"][0]["message"]["content"]
            assert page.inner_text("#final-a") == api["choices"][0]["message"]["content"]
            assert page.locator("#canvas-a .tok").count() == 24 and page.locator("#canvas-a .mask").count() == 0
            assert f"NFE {api['usage']['nfe']} " in page.inner_text("#stats-a")
            page.select_option("#strategy-b", "cad")
            page.fill("#params-b input[data-param=tau]", "0.8")
            page.click("#compare")
            page.wait_for_function("['a', 'b'].every(s => document.getElementById('status-' + s).textContent === "
                                   "'done')", timeout=60000)
            status, api_b = post(base, "/v1/chat/completions", {**body, "strategy": "cad", "settings": {"tau": 0.8}})
            assert page.inner_text("#final-b") == api_b["choices"][0]["message"]["content"]
            shot = tmp_path / "playground.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("FEWSTEP_UPDATE_SCREENSHOT") == "1":
                page.screenshot(path=str(ROOT / "docs" / "img" / "playground.png"), full_page=True)
        finally:
            browser.close()
