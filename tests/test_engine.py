import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import cifarlab
from cifarlab.engine import Lookahead
from cifarlab.errors import CifarlabError
from cifarlab.rundir import RunDirError, load_checkpoint

FAST = {"epochs": 2, "batch_size": 50, "lr": 0.05}


def test_train_writes_run_dir(shared_cifar_dir, tmp_path):
    m = cifarlab.train("default", data_dir=shared_cifar_dir, runs_dir=tmp_path / "runs",
                       progress=False, log=lambda s: None, **FAST)
    run = Path(m["run_dir"])
    assert run == tmp_path / "runs" / "default"
    for f in ("config.json", "history.csv", "metrics.json", "best.pt", "last.pt",
              "plots/curves.png", "plots/per_class.png", "plots/confusion.png",
              "plots/misclassified.png"):
        assert (run / f).is_file(), f
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                            "seconds"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test_acc"] <= 1.0 and metrics["params"] == 92_394
    assert metrics["epochs"] == 2 and len(metrics["per_class_acc"]) == 10
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["recipe"]["train"]["epochs"] == 2  # fully resolved, overrides included
    assert cfg["recipe"]["augment"]["crop_pad"] == 4  # defaults written out


def test_learns_synthetic(shared_cifar_dir, tmp_path):
    m = cifarlab.train("default", data_dir=shared_cifar_dir, runs_dir=tmp_path,
                       progress=False, log=lambda s: None,
                       **{"epochs": 6, "batch_size": 50, "lr": 0.05, "augment.cutout": 0})
    assert m["best_test_acc"] > 0.5  # 10 colour-coded classes: chance is 0.1


@pytest.mark.parametrize("opt, sched, loss", [
    ("adam", "step", "ce"), ("adamw", "cosine", "ce"), ("sgd", "constant", "ce"),
])
def test_optimizers_and_schedules(shared_cifar_dir, tmp_path, opt, sched, loss):
    m = cifarlab.train("default", data_dir=shared_cifar_dir, runs_dir=tmp_path, progress=False,
                       log=lambda s: None, optimizer=opt, schedule=sched, epochs=1,
                       batch_size=100, lr=0.001, grad_clip=1.0, precision="fp32",
                       channels_last=False, ema=0.9)
    assert m["epochs"] == 1


def test_lookahead_pulls_weights_to_slow_copy():
    net = torch.nn.Linear(1, 1, bias=False)
    net.weight.data.fill_(0.0)
    la = Lookahead(net, decay=0.5, every=2, total_steps=5)
    net.weight.data.fill_(1.0)
    la.step(net, 1)  # not a pull step
    assert net.weight.item() == 1.0
    la.step(net, 2)  # d = 0.5**2 * (2/5)**3 = 0.016: slow = 0.984, weights = slow
    assert net.weight.item() == pytest.approx(0.984)
    net.weight.data.fill_(2.0)
    la.step(net, 4)  # d = 0.25 * (4/5)**3 = 0.128
    slow = 0.984 + (1 - 0.128) * (2 - 0.984)
    assert net.weight.item() == pytest.approx(slow)
    net.weight.data.fill_(5.0)
    la.step(net, 5)  # the last step: the weights become the slow copy
    assert net.weight.item() == pytest.approx(slow)


def test_eval_every_and_alternate_flips(shared_cifar_dir, tmp_path):
    m = cifarlab.train("default", data_dir=shared_cifar_dir, runs_dir=tmp_path, progress=False,
                       log=lambda s: None, plots=False, epochs=3, batch_size=50,
                       **{"train.eval_every": 2, "augment.flip_mode": "alternate"})
    rows = list(csv.DictReader(open(Path(m["run_dir"]) / "history.csv")))
    tested = [r["test_acc"] != "nan" for r in rows]
    assert tested == [False, True, True]  # epoch 2, and the last
    assert m["test_acc"] == float(rows[-1]["test_acc"])
    assert m["best_epoch"] in (2, 3)
    m0 = cifarlab.train("default", data_dir=shared_cifar_dir, runs_dir=tmp_path, name="end",
                        progress=False, log=lambda s: None, epochs=2, batch_size=50,
                        **{"train.eval_every": 0})
    rows = list(csv.DictReader(open(Path(m0["run_dir"]) / "history.csv")))
    assert [r["test_acc"] != "nan" for r in rows] == [False, True]
    assert (Path(m0["run_dir"]) / "plots" / "curves.png").stat().st_size > 10_000


def test_run_names_never_overwrite(shared_cifar_dir, tmp_path):
    kw = dict(data_dir=shared_cifar_dir, runs_dir=tmp_path, progress=False, log=lambda s: None,
              epochs=1, batch_size=100)
    a = cifarlab.train("default", **kw)["run_dir"]
    b = cifarlab.train("default", **kw)["run_dir"]
    assert a != b and Path(b).name == "default-2"


def test_target_stops_early(shared_cifar_dir, tmp_path):
    m = cifarlab.train("default", data_dir=shared_cifar_dir, runs_dir=tmp_path, progress=False,
                       log=lambda s: None, epochs=5, batch_size=50, target=0.05)
    assert m["target_epoch"] == 1 and m["epochs"] == 1


def test_checkpoint_weights_only_and_evaluate(shared_cifar_dir, tmp_path):
    m = cifarlab.train("default", data_dir=shared_cifar_dir, runs_dir=tmp_path, progress=False,
                       log=lambda s: None, epochs=1, batch_size=100)
    st = torch.load(Path(m["run_dir"]) / "best.pt", weights_only=True)
    assert st["meta"]["model"] == "seed001"
    r = cifarlab.evaluate(m["run_dir"], data_dir=shared_cifar_dir)
    assert r["acc"] == pytest.approx(m["best_test_acc"])
    assert sum(map(sum, r["confusion"])) == 200


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/cifarlab_ckpt_pwned",))


def test_malicious_checkpoint_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"model": {}, "meta": Payload()}, p)
    with pytest.raises(RunDirError, match="refused to load: it would import posix.system"):
        load_checkpoint(p)
    assert not Path("/tmp/cifarlab_ckpt_pwned").exists()


def test_corrupt_checkpoint(tmp_path):
    p = tmp_path / "bad.pt"
    p.write_bytes(b"garbage" * 100)
    with pytest.raises(RunDirError, match="corrupt or not a checkpoint"):
        load_checkpoint(p)


def test_resume_takes_no_overrides_and_finished_run(shared_cifar_dir, tmp_path):
    m = cifarlab.train("default", data_dir=shared_cifar_dir, runs_dir=tmp_path, progress=False,
                       log=lambda s: None, epochs=1, batch_size=100)
    with pytest.raises(CifarlabError, match="no other options"):
        cifarlab.train(resume=m["run_dir"], data_dir=shared_cifar_dir, lr=0.5)
    m2 = cifarlab.train(resume=m["run_dir"], data_dir=shared_cifar_dir, progress=False,
                        log=lambda s: None)  # already finished: re-reports, trains nothing
    assert m2["epochs"] == 1 and m2["test_acc"] == pytest.approx(m["test_acc"])


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "cifarlab.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_kill_mid_epoch_and_resume(tmp_path):
    """SIGKILL during epoch 2, resume: same history as an uninterrupted run, intact files."""
    from conftest import write_cifar

    data = write_cifar(tmp_path / "data", per_batch=160, test=100)
    args = ["train", "--data-dir", str(data), "--epochs", "3", "--batch-size", "16",
            "--no-progress", "--set", "train.ema=0.5", "--set", "train.lookahead=0.9"]
    ref = _cli(*args, "--runs-dir", str(tmp_path / "ref"))
    out, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err
    runs = tmp_path / "runs"
    p = _cli(*args, "--runs-dir", str(runs))
    run = runs / "default"
    deadline = time.time() + 300
    while not (run / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # now inside epoch 2
    p.send_signal(signal.SIGKILL)
    p.wait()
    st = load_checkpoint(run / "last.pt")  # never torn
    assert st["epoch"] == 1
    r = _cli("train", "--resume", str(run), "--data-dir", str(data), "--no-progress")
    out, err = r.communicate(timeout=600)
    assert r.returncode == 0, err
    assert "resuming" in out
    a = list(csv.DictReader(open(run / "history.csv")))
    b = list(csv.DictReader(open(tmp_path / "ref" / "default" / "history.csv")))
    assert [int(x["epoch"]) for x in a] == [1, 2, 3]
    for x, y in zip(a, b, strict=True):  # resumed run continues exactly (RNG restored)
        assert float(x["train_loss"]) == pytest.approx(float(y["train_loss"]), rel=1e-4)
        assert float(x["test_acc"]) == pytest.approx(float(y["test_acc"]), abs=1e-9)
    assert not list(run.glob(".*.tmp"))


def test_time_budget_stops_resumably(shared_cifar_dir, tmp_path):
    m = cifarlab.train("default", data_dir=shared_cifar_dir, runs_dir=tmp_path, progress=False,
                       log=lambda s: None, epochs=3, batch_size=100, max_seconds=0.001)
    assert m["epochs"] == 1 and m["epochs_planned"] == 3
    m = cifarlab.train(resume=m["run_dir"], data_dir=shared_cifar_dir, progress=False,
                       log=lambda s: None)
    assert m["epochs"] == 3


def test_data_parallel_processes(shared_cifar_dir, tmp_path):
    """Two processes each train on half of every batch; rank 0 tests and writes the run."""
    quiet = dict(data_dir=shared_cifar_dir, runs_dir=tmp_path, progress=False,
                 log=lambda s: None, plots=False)
    m = cifarlab.train("fast-50k", procs=2, epochs=3, batch_size=100, max_seconds=0.001,
                       **quiet)
    assert m["epochs"] == 1 and m["epochs_planned"] == 3  # both ranks agreed to stop
    st = load_checkpoint(Path(m["run_dir"]) / "last.pt")
    assert st["epoch"] == 1 and st["images_seen"] == 1000  # the two halves, all-reduced
    m = cifarlab.train(resume=m["run_dir"], data_dir=shared_cifar_dir, progress=False,
                       log=lambda s: None)
    assert m["epochs"] == 3 and 0 <= m["test_acc"] <= 1
    rows = list(csv.DictReader(open(Path(m["run_dir"]) / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert torch.get_num_threads() >= 1 and not torch.distributed.is_initialized()


def test_data_parallel_errors(shared_cifar_dir, tmp_path, monkeypatch):
    quiet = dict(data_dir=shared_cifar_dir, runs_dir=tmp_path, progress=False,
                 log=lambda s: None, plots=False)
    with pytest.raises(CifarlabError, match="does not split evenly over 2 processes"):
        cifarlab.train("fast-50k", procs=2, epochs=1, batch_size=51, **quiet)
    from cifarlab import parallel

    real = parallel.all_sum

    def fail_in_rank1(*values):
        if torch.distributed.get_rank() == 1:
            raise RuntimeError("injected failure")
        return real(*values)

    monkeypatch.setattr(parallel, "all_sum", fail_in_rank1)  # forked: the worker has it too
    with pytest.raises(CifarlabError,
                       match="^worker process 1 failed: RuntimeError: injected failure$"):
        cifarlab.train("fast-50k", procs=2, epochs=1, batch_size=100, **quiet)

    def user_error_in_rank1(*values):  # an error only a worker sees keeps its message
        if torch.distributed.get_rank() == 1:
            raise CifarlabError("cannot read shard 1")
        return real(*values)

    monkeypatch.setattr(parallel, "all_sum", user_error_in_rank1)
    with pytest.raises(CifarlabError, match="^worker process 1 failed: cannot read shard 1$"):
        cifarlab.train("fast-50k", procs=2, epochs=1, batch_size=100, **quiet)


def test_torchrun_ranks_share_one_run(shared_cifar_dir, tmp_path):
    """Under torchrun every rank runs the CLI; rank 0 alone reports and writes the run."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed beside this Python")
    r = subprocess.run([str(torchrun), "--nproc-per-node", "2", "-m", "cifarlab.cli", "train",
                        "--recipe", "fast-50k", "--data-dir", str(shared_cifar_dir),
                        "--runs-dir", str(tmp_path), "--epochs", "2", "--batch-size", "100",
                        "--no-progress", "--no-plots"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("final test accuracy") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["fast-50k"]
    rows = list(csv.DictReader(open(tmp_path / "fast-50k" / "history.csv")))
    assert len(rows) == 2


def test_model_initialised_from_training_data(shared_cifar_dir, tmp_path):
    m = cifarlab.train("fast-50k", data_dir=shared_cifar_dir, runs_dir=tmp_path, progress=False,
                       log=lambda s: None, plots=False, epochs=1, batch_size=100, procs=1,
                       **{"model": "fast-top", "constraints.max_params": 0,
                          "data.train_subset": 300, "data.test_subset": 100})
    w = load_checkpoint(Path(m["run_dir"]) / "last.pt")["model"]["whiten.weight"]
    assert torch.equal(w[12:], -w[:12])  # whitening filters, and frozen through training


def test_norm_bias_lr_scale_and_fixed_momentum():
    from cifarlab.engine import build_optimizer, build_scheduler
    from cifarlab.models import create_model
    from cifarlab.recipe import resolve

    cfg = resolve("fast-top")
    model = create_model("fast-top")
    opt = build_optimizer(cfg, model)
    weights, biases = opt.param_groups
    bn_biases = {id(m.bias) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in biases["params"]} == bn_biases
    assert not any(id(p) in bn_biases for p in weights["params"])
    assert all(p.requires_grad for g in opt.param_groups for p in g["params"])  # frozen left out
    sched = build_scheduler(cfg, opt, steps_per_epoch=10)
    for _ in range(30):
        ratio = biases["lr"] / weights["lr"]
        assert ratio == pytest.approx(64)  # the scale holds along the whole schedule
        assert biases["weight_decay"] * biases["lr"] == pytest.approx(
            weights["weight_decay"] * weights["lr"])  # same decay per step
        assert weights["momentum"] == biases["momentum"] == 0.85  # not cycled
        opt.step()
        sched.step()
    plain = build_optimizer(resolve("fast-top", {"optim.norm_bias_lr_scale": 1.0}), model)
    assert len(plain.param_groups) == 1
