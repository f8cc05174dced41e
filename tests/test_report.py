"""The cross-run report: table and figures for good, unfinished and broken runs; HTML escaping;
and (where Chromium is installed) the page as a browser renders it."""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import re
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest_runs import has_line, tear_history, write_run
from PIL import Image

from cifarlab.cli import main
from cifarlab.report import load_run, make_report
from cifarlab.rundir import RunDir

EVIL = "run<img src=x onerror=alert(1)>&\"'"  # a legal directory name


class Page(HTMLParser):
    """The parts of index.html the tests look at."""

    def __init__(self, text: str):
        super().__init__()
        self.imgs: list[dict] = []
        self.headers: list[str] = []
        self.rows: list[list[str]] = []
        self.scripts = self.links = 0
        self._in_tbody = self._in_cell = self._in_th = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag in ("script", "iframe", "object", "embed"):
            self.scripts += 1
        elif tag == "link" or (tag in ("a", "source") and ("href" in a or "src" in a)):
            self.links += 1
        elif tag == "tbody":
            self._in_tbody = True
        elif tag == "tr" and self._in_tbody:
            self.rows.append([])
        elif tag == "td" and self._in_tbody:
            self._in_cell = True
            self.rows[-1].append("")
        elif tag == "th":
            self._in_th = True
            self.headers.append("")

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_tbody = False
        elif tag == "td":
            self._in_cell = False
        elif tag == "th":
            self._in_th = False

    def handle_data(self, data):
        if self._in_cell:
            self.rows[-1][-1] += data
        elif self._in_th:
            self.headers[-1] += data

    def table(self) -> list[dict[str, str]]:
        """Rows as {header: text} (the first column is the colour swatch)."""
        return [dict(zip(self.headers, r, strict=True)) for r in self.rows]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> tuple[list[Path], Path]:
    """Every kind of run directory the report must cope with."""
    root = tmp_path_factory.mktemp("runs")
    runs = [
        write_run(root, "long", epochs=12, top=0.9,
                  metrics_extra={"macs": 12_345_678, "receptive_field": 77}),
        write_run(root, "short", epochs=5, top=0.8),  # no macs/RF in metrics: computed
        write_run(root, "going", epochs=3, planned=30, finished=False),
        write_run(root, "torn", epochs=6, finished=False),
        write_run(root, "badmetrics", epochs=4),
        write_run(root, "nohistory", epochs=4, history=False),
        write_run(root, "unknownmodel", epochs=2, model="nosuchnet"),
        write_run(root, EVIL, epochs=3, top=0.7),
        root / "empty",
        root / "does-not-exist",
        root / "afile.txt",
    ]
    tear_history(runs[3])
    (runs[4] / "metrics.json").write_text('{"test_acc": 0.7, "best_te')
    (root / "empty").mkdir()
    (root / "afile.txt").write_text("hello")
    out = root / "report"
    make_report(runs, out, target=0.75)
    return runs, out


def _by_run(out: Path) -> dict[str, dict[str, str]]:
    page = Page((out / "index.html").read_text())
    return {r["run"]: r for r in page.table()}


def test_one_row_per_run_and_files(zoo):
    runs, out = zoo
    page = Page((out / "index.html").read_text())
    assert len(page.rows) == len(runs)
    for f in ("index.html", "report.md", "curves.png", "per_class.png"):
        assert (out / f).is_file(), f
    md = (out / "report.md").read_text()
    md_rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(md_rows) == len(runs) + 1  # + header
    for name in re.findall(r"\]\(([^)]+\.png)\)", md):
        assert (out / name).is_file(), name


def test_html_is_self_contained(zoo):
    _, out = zoo
    text = (out / "index.html").read_text()
    page = Page(text)
    assert page.scripts == 0 and page.links == 0
    assert "http://" not in text and "https://" not in text
    assert len(page.imgs) >= 3  # curves, per-class, confusion matrices
    for img in page.imgs:
        src = img["src"]
        assert src.startswith("data:image/png;base64,"), src[:40]
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.load()
            assert im.width >= 300 and im.height >= 200
        assert img.get("alt")


def test_html_escapes_names(zoo):
    _, out = zoo
    text = (out / "index.html").read_text()
    assert EVIL not in text
    assert "run&lt;img src=x onerror=alert(1)&gt;&amp;" in text
    assert EVIL in _by_run(out)  # and reads back as the literal name
    md = (out / "report.md").read_text()
    assert EVIL in md  # Markdown keeps the name (only pipes are escaped)


def test_table_values(zoo):
    _, out = zoo
    t = _by_run(out)
    long, short = t["long"], t["short"]
    assert long["MACs"] == "12.35M" and long["RF"] == "77"  # from metrics.json
    assert short["MACs"] not in ("?", "") and short["RF"] not in ("?", "")  # computed
    assert long["params"] == "92,394" and long["epochs"] == "12"
    assert long["images/s"] == "2,050" and long["train time"] == "2m 30s"
    assert long["notes"] == "" and short["notes"] == ""
    # epoch at which test accuracy first reached 75% (history_rows: 0.1 -> 0.9 exponential)
    from conftest_runs import history_rows
    first = next(r["epoch"] for r in history_rows(12, 0.9) if r["test_acc"] >= 0.75)
    assert long["epoch reaching 75%"] == str(first)
    assert short["epoch reaching 75%"] == "not reached"
    assert long["best test acc"].endswith("(epoch 12)")


@pytest.mark.parametrize("run, needle", [
    ("going", "in progress"),
    ("torn", "torn write"),
    ("badmetrics", "metrics.json is corrupt"),
    ("nohistory", "history.csv missing"),
    ("unknownmodel", "could not build model 'nosuchnet'"),
    ("empty", "not a run directory"),
    ("does-not-exist", "no such directory"),
    ("afile.txt", "not a directory"),
])
def test_problems_are_noted(zoo, run, needle):
    _, out = zoo
    assert needle in _by_run(out)[run]["notes"]


def test_unfinished_runs_use_history(zoo):
    _, out = zoo
    t = _by_run(out)
    assert t["going"]["epochs"] == "3 of 30"
    assert t["going"]["final test acc"].endswith("(latest)")
    assert t["torn"]["epochs"] == "5 of 6"  # the torn 6th line is dropped
    assert t["badmetrics"]["best test acc"] != "?"
    assert t["unknownmodel"]["MACs"] == "?" and t["unknownmodel"]["RF"] == "?"
    assert t["nohistory"]["final test acc"] != "?"  # from metrics.json


def test_nothing_to_plot(tmp_path):
    index = make_report([tmp_path / "a", tmp_path / "b"], tmp_path / "rep")
    page = Page(index.read_text())
    assert len(page.rows) == 2 and page.imgs == []
    assert "epoch reaching" not in " ".join(page.headers)  # no target, no column


def test_duplicate_names_are_told_apart(tmp_path):
    a = write_run(tmp_path / "x", "default", epochs=2)
    b = write_run(tmp_path / "y", "default", epochs=3)
    t = _by_run(make_report([a, b, a], tmp_path / "rep").parent)
    assert set(t) == {"x/default", "y/default", "x/default (2)"}


def test_load_run_never_raises(tmp_path):
    run = write_run(tmp_path, "r", epochs=2)
    (run / "config.json").write_text("[1, 2]")
    (run / "history.csv").write_bytes(b"\xff\xfe\x00garbage")
    info = load_run(run)
    assert any("config.json" in p for p in info.problems)
    assert any("history.csv" in p for p in info.problems)


def test_cli_report(zoo, tmp_path, capsys):
    runs, _ = zoo
    out = tmp_path / "rep"
    assert main(["report", *map(str, runs[:3]), "--out", str(out), "--reached", "0.8"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "index.html"), str(out / "report.md")]
    assert len(Page((out / "index.html").read_text()).rows) == 3
    assert main(["report", str(runs[0]), "--reached", "85"]) == 2
    assert "expected a fraction" in capsys.readouterr().err


# --------------------------------------------------------------------------- in a browser

def _chromium() -> str | None:
    for name in (os.environ.get("CIFARLAB_CHROMIUM"), "chromium", "chromium-browser",
                 "google-chrome", "google-chrome-stable"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
    NUL-terminated JSON on fds 3 and 4), so no websocket client or driver is needed."""

    def __init__(self, exe: str, profile: Path):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def fds():  # in the child: its fd 3 reads our commands, fd 4 carries its answers
            hi_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)  # out of the way of 3 and 4
            hi_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-dev-shm-usage", "--mute-audio", f"--user-data-dir={profile}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=fds)  # every other fd is closed after fds()
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _read(self, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read(timeout)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        for m in self.events:
            if m.get("method") == method:
                return m
        end = time.monotonic() + timeout
        while True:
            m = self._read(max(end - time.monotonic(), 0.01))
            self.events.append(m)
            if m.get("method") == method:
                return m

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._r)
        os.close(self._w)


_PROBE = """JSON.stringify({
  images: Array.from(document.images).map(i => ({complete: i.complete, w: i.naturalWidth,
                                                   h: i.naturalHeight, alt: i.alt})),
  rows: document.querySelectorAll("table#runs tbody tr").length,
  title: document.title,
  height: document.documentElement.scrollHeight
})"""


def test_report_in_chromium(zoo, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium not installed (apt-get install chromium): browser check skipped")
    runs, out = zoo
    b = Browser(exe, tmp_path / "profile")
    try:
        target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            b.send(f"{domain}.enable", session=s)
        b.send("Emulation.setDeviceMetricsOverride",
               {"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False}, s)
        b.send("Page.navigate", {"url": (out / "index.html").as_uri()}, s)
        b.wait_for("Page.loadEventFired")
        res = b.send("Runtime.evaluate", {"expression": _PROBE, "returnByValue": True}, s)
        probe = json.loads(res["result"]["value"])
        assert probe["title"] == "cifarlab report"
        assert probe["rows"] == len(runs)
        assert len(probe["images"]) >= 3
        for img in probe["images"]:
            assert img["complete"] and img["w"] > 0 and img["h"] > 0, img
        errors = [e for e in b.events if e.get("sessionId") == s and (
            e["method"] == "Runtime.exceptionThrown"
            or (e["method"] == "Runtime.consoleAPICalled"
                and e["params"]["type"] in ("error", "assert"))
            or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"))]
        assert errors == []
        requested = [e["params"]["request"]["url"] for e in b.events
                     if e.get("method") == "Network.requestWillBeSent"]
        assert all(u.startswith(("file:", "data:")) for u in requested), requested

        shot = os.environ.get("CIFARLAB_SCREENSHOT")
        if shot:  # e.g. CIFARLAB_SCREENSHOT=docs/report.png for the README
            height = min(int(probe["height"]), 6000)
            data = b.send("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": 1400, "height": height, "scale": 1}}, s)
            Path(shot).parent.mkdir(parents=True, exist_ok=True)
            Path(shot).write_bytes(base64.b64decode(data["data"]))
    finally:
        b.close()


def test_run_stopped_by_time_budget_is_marked(tmp_path):
    run = write_run(tmp_path, "cut", epochs=4, planned=10)  # metrics.json: 4 of 10 epochs
    done = write_run(tmp_path, "done", epochs=4)
    out = make_report([run, done], tmp_path / "report")
    rows = _by_run(out.parent)
    assert "stopped early: 4 of 10 epochs" in rows["cut"]["notes"]
    assert rows["done"]["notes"] == ""


# --------------------------------------------------------------------------- engine-written runs


@pytest.fixture(scope="module")
def engine_report(engine_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("engine-report")
    make_report([engine_runs["plain"], engine_runs["val"]], out, target=0.3)
    return out


def test_report_on_runs_the_engine_wrote(engine_runs, engine_report):
    out = engine_report
    for f in ("index.html", "report.md", "curves.png", "per_class.png", "confusion-plain.png",
              "confusion-val.png"):
        assert (out / f).is_file(), f
    t = _by_run(out)
    md = (out / "report.md").read_text()
    for name in ("plain", "val"):
        m = json.loads((engine_runs[name] / "metrics.json").read_text())
        row = t[name]
        assert row["final test acc"] == f"{100 * m['test_acc']:.2f}%"  # as metrics.json has it
        assert row["final test acc"] in md
        assert row["params"] == f"{m['params']:,}" and row["epochs"] == str(m["epochs"]) == "2"
        assert row["recipe"] == "fast-50k" and row["model"] == "family"
        assert row["MACs"] != "?" and row["RF"] == str(m["receptive_field"])
        assert row["notes"] == "", row["notes"]  # a finished run has nothing to note
    m = json.loads((engine_runs["plain"] / "metrics.json").read_text())
    assert t["plain"]["best test acc"] == (f"{100 * m['best_test_acc']:.2f}% "
                                           f"(epoch {m['best_epoch']})")
    rows, _ = RunDir(engine_runs["plain"]).read_history()
    first = next((str(r["epoch"]) for r in rows if r["test_acc"] >= 0.3), "not reached")
    assert t["plain"]["epoch reaching 30%"] == first  # from the history the engine wrote
    page = Page((out / "index.html").read_text())
    assert len(page.rows) == 2 and len(page.imgs) == 4  # curves, per-class, 2 confusions


def test_report_shows_the_validation_curve(engine_runs, tmp_path, drawn):
    figs = drawn
    make_report([engine_runs["plain"], engine_runs["val"]], tmp_path / "rep")
    rows, _ = RunDir(engine_runs["val"]).read_history()
    assert has_line(figs["curves.png"], [1, 2], [100 * r["val_acc"] for r in rows])


def test_report_target_column_for_a_run_with_a_validation_split(engine_runs, tmp_path):
    m = json.loads((engine_runs["val"] / "metrics.json").read_text())
    assert m["selection"] == "validation" and m["test_acc"] > 0
    target = m["test_acc"]  # its final test accuracy reaches this target by definition
    make_report([engine_runs["val"]], tmp_path / "rep", target=target)
    row = _by_run(tmp_path / "rep")["val"]
    assert row[f"epoch reaching {100 * target:g}%"] != "not reached"
