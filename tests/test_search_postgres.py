"""Scale-out for real: a PostgreSQL server started for the test (as a non-root user: initdb
refuses root), two worker processes on one study through Optuna's RDB storage, every trial
recorded once with its own run directory; the server is stopped at the end."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from cifarlab.search import storage
from cifarlab.search.trials import outcome

PG_BIN = Path(os.environ.get("CIFARLAB_PG_BIN", "/usr/lib/postgresql/15/bin"))

pytestmark = [
    pytest.mark.skipif(not (PG_BIN / "initdb").is_file(),
                       reason=f"PostgreSQL binaries not in {PG_BIN} (set CIFARLAB_PG_BIN)"),
    pytest.mark.skipif(pytest.importorskip("psycopg2", reason="psycopg2 not installed")
                       is None, reason="psycopg2"),
]

SEARCH = """
name = "pg"
base = "fast-50k"
[constraints]
max_params = 5000
[search]
minutes = 10
min_epochs = 1
val_split = 100
startup_trials = 2
[space]
stages = { low = 1, high = 2 }
stem = { choices = [4, 8] }
width = { low = 4, high = 16, step = 4 }
depth = 1
block = { choices = ["plain", "dwsep"] }
downsample = { choices = ["stride", "avgpool"] }
lr = { low = 0.05, high = 0.2, log = true }
epochs = 1
batch_size = 64
"train.precision" = "fp32"
"train.channels_last" = false
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_user(user: str | None, cmd: list[str], **kw) -> subprocess.CompletedProcess:
    if user is not None:
        cmd = ["runuser", "-u", user, "--"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


class Server:
    """A throw-away PostgreSQL server on 127.0.0.1 (trust authentication: any password is
    accepted, so a URL may carry one to check that it is never written)."""

    def __init__(self, user: str | None, data: Path, log: Path, port: int, sock: Path):
        self.user, self.data, self.log, self.port = user, data, log, port
        self.opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.url = f"postgresql://cifarlab:unused@127.0.0.1:{port}/postgres"

    def start(self) -> subprocess.CompletedProcess:
        return _as_user(self.user, [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o",
                                    self.opts, "-l", str(self.log), "-w", "start"])

    def stop(self) -> subprocess.CompletedProcess:
        return _as_user(self.user, [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m",
                                    "fast", "-w", "stop"])


@pytest.fixture
def server():
    """A throw-away PostgreSQL server (see Server); stopped afterwards."""
    user = None
    if os.geteuid() == 0:  # initdb refuses root: run the server as an unprivileged user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser")
        user = "nobody"
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", user], check=True)
    root = Path(tempfile.mkdtemp(prefix="cifarlab-pg-"))  # not under a 0700 pytest folder
    data, sock, log = root / "data", root / "sock", root / "server.log"
    sock.mkdir()
    root.chmod(0o755)
    if user is not None:
        pw = pwd.getpwnam(user)
        for p in (root, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    r = _as_user(user, [str(PG_BIN / "initdb"), "-D", str(data), "-U", "cifarlab",
                        "--auth=trust", "-E", "UTF8", "--no-sync"])
    if r.returncode:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed: {r.stderr[-1500:]}")
    srv = Server(user, data, log, _free_port(), sock)
    r = srv.start()
    if r.returncode:
        text = log.read_text() if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed: {r.stderr[-800:]} {text[-800:]}")
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres(server):
    """The server's URL."""
    return server.url


def test_two_workers_share_a_postgres_study(postgres, tmp_path, cifar_dir):
    (cifar_dir / "test_batch").unlink()
    f = tmp_path / "pg.toml"
    f.write_text(SEARCH)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "cifarlab.search.cli", str(f), "--study", "pg", "--storage",
           postgres, "--trials", "4", "--runs-dir", str(runs), "--data-dir", str(cifar_dir),
           "--threads", "1"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(env, CIFARLAB_SEARCH_TAG=f"[w{i}] "))
               for i in (1, 2)]
    t0 = time.time()
    outs = [w.communicate(timeout=180) for w in workers]
    for w, (_out, err) in zip(workers, outs, strict=True):
        assert w.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    study = storage.load_study("pg", postgres)
    trials = study.get_trials(deepcopy=False)
    trained = [t for t in trials if outcome(t) in ("complete", "pruned")]
    assert len(trained) >= 4
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.FAIL)]
    run_dirs = [t.user_attrs["run_dir"] for t in trained]
    assert len(set(run_dirs)) == len(run_dirs)  # each trial recorded once, with its own run
    for d in run_dirs:
        assert (Path(d) / "metrics.json").is_file() and (Path(d) / "config.json").is_file()
    assert sorted(Path(d).name for d in run_dirs) == sorted(
        f"trial-{t.number:04d}" for t in trained)
    pids = {t.user_attrs["worker"]["pid"] for t in trained}
    assert len(pids) == 2, "both workers trained trials"
    assert len(list((runs / "pg" / "trials").iterdir())) == len(trained)
    assert time.time() - t0 < 180
    # the report reads the study from the server
    from cifarlab.search.report import make_search_report

    index = make_search_report("pg", storage=postgres, runs_dir=runs)
    assert "postgresql://cifarlab:***@" in index.read_text()


def test_database_down_is_one_line(tmp_path, cifar_dir):
    f = tmp_path / "pg.toml"
    f.write_text(SEARCH)
    url = f"postgresql://cifarlab:secret@127.0.0.1:{_free_port()}/postgres"
    r = subprocess.run([sys.executable, "-m", "cifarlab.search.cli", str(f), "--storage", url,
                        "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(cifar_dir)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    err = r.stderr.strip()
    assert err.startswith("error: storage postgresql://cifarlab:***@") and "cannot open" in err
    assert len(err.splitlines()) == 1 and "secret" not in err


SECRET = "pw-Zq81xK"


def _watch(cmd: list[str], on_line) -> tuple[int, str]:
    """Run a worker, calling on_line(line) for each line it prints; (exit status, output)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env)
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            on_line(line)
        return p.wait(timeout=240), "".join(lines)
    finally:
        if p.poll() is None:
            p.kill()


def test_a_database_outage_is_ridden_out_and_no_password_is_written(server, tmp_path,
                                                                    cifar_dir):
    """The server is stopped in the middle of a trial: the worker retries (one line per
    attempt); started again, the trial resumes from its checkpoint. Stopped for good: one
    line and a non-zero exit, no traceback. The password of the URL is nowhere."""
    (cifar_dir / "test_batch").unlink()
    f = tmp_path / "pg.toml"
    f.write_text(SEARCH.replace("epochs = 1", "epochs = 3"))
    runs, url = tmp_path / "runs", server.url.replace("unused", SECRET)
    cmd = [sys.executable, "-m", "cifarlab.search.cli", str(f), "--study", "pg", "--storage",
           url, "--runs-dir", str(runs), "--data-dir", str(cifar_dir), "--threads", "1"]
    state = {"stopped": False, "started": False}

    def outage(line: str) -> None:
        if not state["stopped"] and "trial 0 epoch 1/3" in line:
            assert server.stop().returncode == 0
            state["stopped"] = True
        elif state["stopped"] and not state["started"] and "attempt 2," in line:
            assert server.start().returncode == 0
            state["started"] = True

    rc, out = _watch(cmd + ["--trials", "2", "--storage-wait", "1"], outage)
    assert rc == 0 and state["started"], out[-3000:]
    attempts = [x for x in out.splitlines() if " unreachable (" in x]
    assert [x.split("attempt ")[1].split(",")[0] for x in attempts] == ["1", "2", "3"][
        :len(attempts)] and len(attempts) >= 2
    assert "answers again: carrying on" in out and "Traceback" not in out
    study = storage.load_study("pg", url)
    trials = study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    (first,) = [t for t in trials if t.number == 0]
    assert first.state == TrialState.FAIL  # interrupted by the outage, then retried
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.state == TrialState.COMPLETE and "resuming" in out
    assert retry.user_attrs["run_dir"] == first.user_attrs["run_dir"]
    hist = (Path(retry.user_attrs["run_dir"]) / "history.csv").read_text().splitlines()
    assert len(hist) == 4  # header + 3 epochs: nothing trained twice or lost

    # the report, the winner: every command with the URL
    outs = [out]
    for argv in (["report", "pg"], ["best", "pg", "--out", str(tmp_path / "w.toml")]):
        r = subprocess.run([sys.executable, "-m", "cifarlab.search.cli", *argv, "--storage",
                            url, "--runs-dir", str(runs)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        outs += [r.stdout, r.stderr]
    assert "postgresql://cifarlab:***@" in (runs / "pg" / "report" / "index.html").read_text()

    # stopped for good: retries for --storage-wait, then one line and a non-zero exit
    def stop(line: str) -> None:
        if not state.get("down") and "epoch 1/3" in line:
            assert server.stop().returncode == 0
            state["down"] = True

    rc, out = _watch(cmd + ["--trials", "4", "--storage-wait", "0.05"], stop)
    outs.append(out)
    assert rc == 2, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: storage postgresql://cifarlab:***@") and "unreachable" in last
    assert "giving up" in last and "Traceback" not in out
    assert sum(1 for x in out.splitlines() if " unreachable (" in x) >= 2

    # no credential in anything it wrote (runs dir, recursively, binary files too) or printed
    written = [p for p in [*runs.rglob("*"), tmp_path / "w.toml"] if p.is_file()]
    assert len(written) > 10
    leaks = [str(p) for p in written if SECRET.encode() in p.read_bytes()]
    assert leaks == [] and not [o for o in outs if SECRET in o]
