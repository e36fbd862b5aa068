"""The HTML report: safe embedding of trace data, and the page itself driven in real headless Chromium.

Chromium is driven through the DevTools protocol over `--remote-debugging-pipe` (NUL-separated JSON on file
descriptors 3 and 4), so no websocket client is needed and the clicks are real mouse events.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from thinkrm.me2 import analyze
from thinkrm.report import ReportWriter, script_json
from thinkrm.trace import Trace, load_traces

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "traces.jsonl"
CHROMIUM = shutil.which("chromium")
HOSTILE = ("Let me compute 2 + 2 = 5 first.\n\nWait, no, that's wrong: 2 + 2 = 4. Also </script><script>"
           "document.title='pwned'</script> and <!-- a comment opener & an <b>html</b> tag.\n\n"
           "Therefore the answer is 4.")


def write_report(path: Path, traces: list[Trace], scores: list[float] | None = None) -> None:
    with open(path, "w", encoding="utf-8") as f:
        w = ReportWriter(f, title="test <report>")
        for i, t in enumerate(traces):
            w.add(t, analyze(t), None if scores is None else scores[i])
        w.finish()


def example_traces() -> list[Trace]:
    hostile = Trace(id="hostile", prompt="What is 2 + 2? </script>", reasoning=HOSTILE, answer="4",
                    extra={"quality": "flawed"})
    return [*load_traces(EXAMPLES), hostile]


def test_script_json_cannot_close_the_script_element():
    s = script_json({"t": "</script><!-- & </SCRIPT >"})
    assert "<" not in s and ">" not in s and "&" not in s
    assert json.loads(s) == {"t": "</script><!-- & </SCRIPT >"}


def test_report_embeds_every_trace_and_summary_rows(tmp_path):
    traces = example_traces()
    out = tmp_path / "index.html"
    write_report(out, traces, scores=[float(i) for i in range(len(traces))])
    page = out.read_text(encoding="utf-8")
    assert "https://" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert page.count("<script") == len(traces) + 3  # one per trace, meta, rows, the code
    assert "</script><script>document.title" not in page
    rows = json.loads(re.search(r'id="rows">(.*?)</script>', page, re.S).group(1))
    assert [r["id"] for r in rows] == [t.id for t in traces]
    assert rows[3]["score"] == 3.0 and "backtracks" in rows[0] and rows[0]["quality"] == "clean"
    meta = json.loads(re.search(r'id="meta">(.*?)</script>', page, re.S).group(1))
    keys = [c["key"] for c in meta["columns"]]
    assert keys[:2] == ["id", "quality"] and "score" in keys and "arithmetic_wrong" in keys
    detail = json.loads(re.search(r'id="t10">(.*?)</script>', page, re.S).group(1))
    assert detail["text"] == HOSTILE and detail["dag"]["answer_path"]
    assert "test &lt;report&gt;" in page


class DevTools:
    """A minimal Chrome DevTools Protocol client over the `--remote-debugging-pipe` file descriptors."""

    def __init__(self, profile: Path, size=(1400, 1000)):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def fds() -> None:  # runs in the child: Chromium reads commands on fd 3 and writes replies on fd 4
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
             "about:blank"],
            pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._next = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def _read(self, timeout: float) -> dict:
        import select

        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("no reply from Chromium")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise ConnectionError("Chromium closed the pipe")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def call(self, method: str, timeout: float = 30, **params):
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        while True:
            e = self._read(timeout)
            if e.get("method") == method:
                return e
            self.events.append(e)

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"JS failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element (scrolled into view first)."""
        box = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView("
                      "{block: 'center'}); const r = e.getBoundingClientRect(); "
                      "return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def exceptions(self) -> list[dict]:
        return [e for e in self.events if e.get("method") == "Runtime.exceptionThrown"]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self._r)
        os.close(self._w)


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make browser)")
    b = DevTools(tmp_path / "profile")
    yield b
    b.close()


def wait_for(browser: DevTools, expression: str, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = browser.js(expression)
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {expression}")


def png_is_nontrivial(data: bytes) -> None:
    import matplotlib.image as mpimg

    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    img = mpimg.imread(io.BytesIO(data), format="png")
    assert img.shape[0] >= 800 and img.shape[1] >= 1200
    assert img[..., :3].std() > 0.05  # not a blank page: text, table and graph give real contrast


@pytest.mark.slow
def test_report_in_chromium_opens_a_trace_draws_its_dag_and_reads_nodes(tmp_path, browser):
    traces = example_traces()
    page = tmp_path / "index.html"
    write_report(page, traces)
    browser.open(page.as_uri())
    wait_for(browser, "document.body.dataset.ready === '1'")
    assert browser.js("document.querySelectorAll('#traces tbody tr').length") == len(traces)
    assert browser.js("document.title") == "test <report>"  # the hostile trace's script never ran

    # Sorting by backtracks, descending on the second click: the detour-heavy trace floats to the top.
    browser.click('#traces th[data-key="backtracks"]')
    browser.click('#traces th[data-key="backtracks"]')
    col = browser.js("[...document.querySelectorAll('#traces th')]"
                     ".findIndex(t => t.dataset.key === 'backtracks')")
    shown = browser.js("[...document.querySelectorAll('#traces tbody tr')]"
                       f".map(r => Number(r.children[{col}].textContent))")
    assert shown == sorted(shown, reverse=True) and shown[0] > 0

    hostile = len(traces) - 1
    browser.click(f'#traces tbody tr[data-i="{hostile}"]')
    wait_for(browser, f"document.body.dataset.opened === '{hostile}'")
    n_super = len(analyze(traces[hostile]).dag.supernodes)
    assert browser.js("document.querySelectorAll('#dagsvg .node').length") == n_super
    assert browser.js("document.querySelector('#textpane').textContent").count("</script><script>") == 1
    assert browser.js("document.querySelectorAll('#textpane mark.arithmetic_wrong').length") == 1

    # Open the detour-heavy trace and click a node: its steps are selected and described.
    detour = next(i for i, t in enumerate(traces) if t.id == "hexagon-detours")
    browser.click(f'#traces tbody tr[data-i="{detour}"]')
    wait_for(browser, f"document.body.dataset.opened === '{detour}'")
    dag = analyze(traces[detour]).dag
    assert browser.js("document.querySelectorAll('#dagsvg .node').length") == len(dag.supernodes)
    assert browser.js("document.querySelectorAll('#dagsvg .node.onpath').length") == len(dag.answer_path)
    assert browser.js("document.querySelectorAll('#dagsvg path.edge.backtrack').length") >= 1
    target = dag.supernodes[-1]
    browser.click(f'#dagsvg .node[data-node="{target.id}"]')
    wait_for(browser, f"document.body.dataset.selected === '{target.id}'")
    assert browser.js("document.getElementById('nodeinfo').textContent").startswith(f"Node {target.id}")
    selected = browser.js("[...document.querySelectorAll('#textpane .step.sel')]"
                          ".map(s => Number(s.dataset.step))")
    assert selected == target.members

    assert browser.js("document.getElementById('errors').textContent") == ""
    assert browser.exceptions() == []
    shot = browser.screenshot()
    (tmp_path / "report.png").write_bytes(shot)
    png_is_nontrivial(shot)


@pytest.mark.slow
def test_report_with_5000_traces_stays_responsive(tmp_path, browser):
    base = list(load_traces(EXAMPLES))
    analyses = [analyze(t) for t in base]
    page = tmp_path / "index.html"
    with open(page, "w", encoding="utf-8") as f:
        w = ReportWriter(f)
        for i in range(5000):
            t = base[i % len(base)]
            w.add(Trace(id=f"{t.id}-{i}", prompt=t.prompt, reasoning=t.reasoning, extra=t.extra),
                  analyses[i % len(base)])
        w.finish()
    start = time.monotonic()
    browser.open(page.as_uri() + "#trace=4321")
    wait_for(browser, "document.body.dataset.ready === '1'", timeout=30)
    loaded = time.monotonic() - start
    assert browser.js("document.querySelectorAll('#traces tbody tr').length") == 200  # one page in the DOM
    assert browser.js("document.body.dataset.opened") == "4321"
    assert browser.js("document.querySelectorAll('#dagsvg .node').length") > 0
    browser.click("#filter")
    browser.call("Input.insertText", text="divisors-loops-4")
    expected = sum(1 for i in range(5000) if "divisors-loops-4" in f"{base[i % len(base)].id}-{i}")
    wait_for(browser, f"document.querySelectorAll('#traces tbody tr').length === {min(expected, 200)}")
    assert browser.js("document.getElementById('pager').textContent").startswith(f"{expected} of 5000")
    assert browser.exceptions() == [] and browser.js("document.getElementById('errors').textContent") == ""
    assert loaded < 20, f"5,000-trace report took {loaded:.1f} s to become ready"


@pytest.mark.slow
def test_report_with_an_empty_trace_and_an_empty_report(tmp_path, browser):
    page = tmp_path / "index.html"
    write_report(page, [Trace(id="empty", prompt="Q?", reasoning=""),
                        Trace(id="one", prompt="Q?", reasoning="Just 1 + 1 = 2.")])
    browser.open(page.as_uri() + "#trace=0")
    wait_for(browser, "document.body.dataset.ready === '1'")
    assert browser.js("document.body.dataset.opened") == "0"
    assert "empty trace" in browser.js("document.getElementById('dagpane').textContent")
    browser.click('#traces tbody tr[data-i="1"]')
    wait_for(browser, "document.body.dataset.opened === '1'")
    assert browser.js("document.querySelectorAll('#dagsvg .node').length") == 1
    nothing = tmp_path / "nothing.html"
    write_report(nothing, [])
    browser.call("Page.navigate", url=nothing.as_uri())
    browser.wait_event("Page.loadEventFired")
    wait_for(browser, "document.body.dataset.ready === '1'")
    assert browser.js("document.getElementById('pager').textContent") == "0 of 0 traces"
    assert browser.exceptions() == [] and browser.js("document.getElementById('errors').textContent") == ""
