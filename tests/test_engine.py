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
import torch.nn.functional as F

import cifarlab
from cifarlab import api, engine
from cifarlab.analysis import macs_at
from cifarlab.errors import CifarlabError
from cifarlab.inference import fixed_test_inputs
from cifarlab.models import create_model
from cifarlab.optim import Lookahead, build_optimizer, build_scheduler, loss_fn
from cifarlab.recipe import resolve
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
    cfg = json.loads((run / "config.json").read_text())
    model = create_model(cfg["recipe"]["model"], **cfg["recipe"]["model_args"])
    cm = torch.tensor(metrics["confusion"])  # the final test figure is its confusion matrix's
    assert metrics["test_acc"] == pytest.approx(float(cm.diag().sum() / cm.sum()))
    assert metrics["test_acc"] == pytest.approx(float(rows[-1]["test_acc"]), abs=1e-4)
    assert metrics["params"] == sum(p.numel() for p in model.parameters())
    assert metrics["epochs"] == 2 and len(metrics["per_class_acc"]) == 10
    # fully resolved: the overrides and every default written out
    assert cfg["recipe"] == resolve("default", FAST)
    assert cfg["recipe"]["train"]["epochs"] == 2


def test_learns_synthetic(shared_cifar_dir, tmp_path):
    m = cifarlab.train("default", data_dir=shared_cifar_dir, runs_dir=tmp_path,
                       progress=False, log=lambda s: None,
                       **{"epochs": 6, "batch_size": 50, "lr": 0.05, "augment.cutout": 0})
    assert m["best_test_acc"] > 0.5  # 10 colour-coded classes: chance is 0.1


@pytest.fixture
def loss_calls(monkeypatch):
    """Every F.cross_entropy / F.nll_loss call as ("ce" | "nll", whether it is a training
    loss): training scores carry gradients, evaluation's come from inference mode."""
    calls = []
    for kind, name in (("ce", "cross_entropy"), ("nll", "nll_loss")):
        real = getattr(torch.nn.functional, name)

        def spy(*a, _kind=kind, _real=real, **k):
            calls.append((_kind, (a[0] if a else k['input']).requires_grad))
            return _real(*a, **k)

        monkeypatch.setattr(torch.nn.functional, name, spy)
    return calls


@pytest.mark.parametrize("recipe, opt, sched, loss", [
    ("seed003-net1", "adam", "step", "ce"), ("seed003-net1", "adamw", "cosine", "ce"),
    ("seed000-m2", "sgd", "constant", "nll"),  # seed000-m2 ends in log_softmax
])
def test_optimizers_and_schedules(shared_cifar_dir, tmp_path, loss_calls, recipe, opt, sched,
                                  loss):
    m = cifarlab.train(recipe, data_dir=shared_cifar_dir, runs_dir=tmp_path, progress=False,
                       log=lambda s: None, plots=False, optimizer=opt, schedule=sched,
                       loss=loss, epochs=1, batch_size=100, lr=0.001, grad_clip=1.0,
                       precision="fp32", channels_last=False, ema=0.9, procs=1)
    assert m["epochs"] == 1
    st = load_checkpoint(Path(m["run_dir"]) / "last.pt")
    assert st["meta"]["loss"] == loss
    trained_with = [kind for kind, grad in loss_calls if grad]
    assert trained_with == [loss] * 10  # 1,000 images / 100 per batch, each step this loss
    group = st["optimizer"]["param_groups"][0]
    if opt == "sgd":
        assert group["momentum"] == 0.9 and "betas" not in group
    else:
        assert group["decoupled_weight_decay"] == (opt == "adamw") and "momentum" not in group
    rows = list(csv.DictReader(open(Path(m["run_dir"]) / "history.csv")))
    # the learning rate after the epoch's 10 steps: step drops only after 10 epochs, cosine
    # has annealed to min_lr (0) at the end of the run, constant stays put
    want = {"step": 0.001, "cosine": 0.0, "constant": 0.001}[sched]
    assert float(rows[-1]["lr"]) == pytest.approx(want, abs=1e-12)
    assert st["ema"] is not None and any(
        not torch.equal(st["ema"][k], v) for k, v in st["model"].items()
        if v.dtype.is_floating_point)  # the averaged weights are stored beside the raw ones


def test_loss_fn_nll_and_ce():
    out = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])  # raw scores, not log-probabilities
    y = torch.tensor([0, 2])
    nll = loss_fn(resolve("default", {"loss.name": "nll", "loss.label_smoothing": 0.2}))
    assert nll(out, y).item() == pytest.approx(-(2.0 + 3.0) / 2)  # -mean(out[y]), no smoothing
    ce = loss_fn(resolve("default", {"loss.name": "ce", "loss.label_smoothing": 0.0}))
    assert ce(out, y).item() == pytest.approx(nll(out.log_softmax(1), y).item())
    smooth = loss_fn(resolve("default", {"loss.name": "ce", "loss.label_smoothing": 0.2}))
    assert smooth(out, y).item() > ce(out, y).item()


def test_nll_recipe_trains_log_softmax_model(shared_cifar_dir, tmp_path, loss_calls):
    """seed000-m2's recipe: NLL on a network that ends in log_softmax."""
    assert resolve("seed000-m2")["loss"]["name"] == "nll"
    m = cifarlab.train("seed000-m2", data_dir=shared_cifar_dir, runs_dir=tmp_path,
                       progress=False, log=lambda s: None, plots=False, epochs=1,
                       batch_size=100)
    assert [kind for kind, grad in loss_calls if grad] == ["nll"] * 10
    assert m["test_acc"] > 0.5  # colour-coded classes: chance is 0.1
    st = load_checkpoint(Path(m["run_dir"]) / "best.pt")
    assert st["meta"]["loss"] == "nll" and st["meta"]["model"] == "seed000-m2"
    r = cifarlab.evaluate(m["run_dir"], data_dir=shared_cifar_dir)
    assert r["acc"] == m["test_acc"] and r["loss"] == pytest.approx(m["test_loss"], rel=1e-6)
    model, meta = api.load_model(m["run_dir"])
    data = api.load_data(shared_cifar_dir)
    logp = engine.infer(model, data.test.images, meta)
    assert torch.allclose(logp.exp().sum(1), torch.ones(len(logp)), atol=1e-2)  # log-probs
    assert r["loss"] == pytest.approx(F.nll_loss(logp, data.test.labels).item(), rel=1e-6)


def _sgd(lr: float = 0.05) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(sched, opt, steps: int) -> list[float]:
    """The learning rate each of `steps` batches trains with (stepped once per batch)."""
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_schedule_counts_epochs_in_batches():
    cfg = resolve("default", {"schedule.name": "step", "schedule.step_size": 2,
                              "schedule.gamma": 0.1, "train.epochs": 6, "optim.lr": 0.05})
    opt = _sgd()
    lrs = _lrs(build_scheduler(cfg, opt, steps_per_epoch=7), opt, 6 * 7)
    first_drop = next(i for i, lr in enumerate(lrs) if lr < 0.05)
    assert first_drop == 2 * 7  # the first batch of epoch 3
    assert lrs[:14] == pytest.approx([0.05] * 14)
    assert lrs[14:28] == pytest.approx([0.005] * 14)
    assert lrs[28:] == pytest.approx([0.0005] * 14)


def test_cosine_schedule_ends_at_min_lr():
    cfg = resolve("default", {"schedule.name": "cosine", "schedule.min_lr": 0.001,
                              "train.epochs": 3, "optim.lr": 0.05})
    opt = _sgd()
    sched = build_scheduler(cfg, opt, steps_per_epoch=4)
    lrs = _lrs(sched, opt, 12) + [opt.param_groups[0]["lr"]]  # and after the last step
    assert lrs[0] == pytest.approx(0.05)
    assert lrs[6] == pytest.approx((0.05 + 0.001) / 2)  # half way: half way down
    assert lrs[-1] == pytest.approx(0.001, abs=1e-12)  # min_lr after the run's last batch
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


@pytest.mark.parametrize("mode, clip", [("value", 1e-4), ("norm", 1e-3)])
def test_grad_clip_modes(shared_cifar_dir, tmp_path, monkeypatch, mode, clip):
    """The gradients the optimizer steps with are the raw ones clipped element by element
    (value) or rescaled to the threshold norm (norm)."""
    raw: dict[int, torch.Tensor] = {}
    steps: list[tuple[float, float]] = []  # (raw max |g|, raw total norm) per step
    real = engine.build_optimizer

    def spy_build(cfg, model):
        opt = real(cfg, model)
        params = [p for g in opt.param_groups for p in g["params"]]
        def keep(key):
            return lambda g: raw.__setitem__(key, g.detach().clone())

        for p in params:  # the gradient as backward computed it, before any clipping
            p.register_hook(keep(id(p)))

        def check(optimizer, args, kwargs):
            got = [p.grad for p in params]
            before = [raw[id(p)] for p in params]
            norm = torch.linalg.vector_norm(torch.stack([b.norm() for b in before]))
            steps.append((max(b.abs().max().item() for b in before), norm.item()))
            for b, g in zip(before, got, strict=True):
                if mode == "value":
                    assert torch.equal(g, b.clamp(-clip, clip))
                else:
                    assert torch.allclose(g, b * min(1.0, clip / (norm.item() + 1e-6)),
                                          rtol=1e-4, atol=1e-12)

        opt.register_step_pre_hook(check)
        return opt

    monkeypatch.setattr(engine, "build_optimizer", spy_build)
    cifarlab.train("seed003-net1", data_dir=shared_cifar_dir, runs_dir=tmp_path,
                   progress=False, log=lambda s: None, plots=False, epochs=1, batch_size=250,
                   grad_clip=clip, **{"train.grad_clip_mode": mode})
    assert len(steps) == 4
    assert all((mx if mode == "value" else norm) > clip for mx, norm in steps)  # it did clip


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
                       log=lambda s: None, epochs=5, batch_size=50, target=0.05,
                       **{"train.eval_every": 1})
    assert m["target_epoch"] == 1 and m["epochs"] == 1


def test_checkpoint_weights_only_and_evaluate(shared_cifar_dir, tmp_path):
    m = cifarlab.train("default", data_dir=shared_cifar_dir, runs_dir=tmp_path, progress=False,
                       log=lambda s: None, epochs=1, batch_size=100)
    st = torch.load(Path(m["run_dir"]) / "best.pt", weights_only=True)
    assert st["meta"]["model"] == resolve("default")["model"]
    r = cifarlab.evaluate(m["run_dir"], data_dir=shared_cifar_dir)
    assert r["acc"] == pytest.approx(m["best_test_acc"])
    assert sum(map(sum, r["confusion"])) == 200


def test_augmented_test_set_is_scored_the_same_by_evaluate(shared_cifar_dir, tmp_path):
    """augment.test (seed 003's Model 2): the run scores a test set augmented once with a fixed
    seed, and `evaluate` scores that same set, to the last bit (it used to score the plain
    test images)."""
    m = cifarlab.train("seed003-net2", data_dir=shared_cifar_dir, runs_dir=tmp_path,
                       progress=False, log=lambda s: None, plots=False, epochs=1,
                       batch_size=100)
    run = Path(m["run_dir"])
    assert load_checkpoint(run / "best.pt")["meta"]["test_augment"]["test"] is True
    r = cifarlab.evaluate(run, data_dir=shared_cifar_dir)
    assert r["acc"] == m["test_acc"] and r["loss"] == m["test_loss"]
    assert r["confusion"] == json.loads((run / "metrics.json").read_text())["confusion"]
    # the augmentation matters: the plain test images give other scores
    model, meta = api.load_model(run)
    data = api.load_data(shared_cifar_dir)
    fixed = fixed_test_inputs(data.test.images, meta)
    assert torch.equal(fixed, fixed_test_inputs(data.test.images, meta))  # fixed seed
    plain = engine.score_logits(engine.infer(model, data.test.images, meta), data.test.labels)
    assert plain["loss"] != m["test_loss"]


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
    # seed 001's network (the default recipe until issue 19), one process, tested every epoch
    args = ["train", "--recipe", "seed001-fast", "--data-dir", str(data), "--epochs", "3",
            "--batch-size", "16", "--no-progress", "--procs", "1", "--set", "train.eval_every=1",
            "--set", "train.ema=0.5", "--set", "train.lookahead=0.9"]
    ref = _cli(*args, "--runs-dir", str(tmp_path / "ref"))
    out, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err
    runs = tmp_path / "runs"
    p = _cli(*args, "--runs-dir", str(runs))
    run = runs / "seed001-fast"
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
    b = list(csv.DictReader(open(tmp_path / "ref" / "seed001-fast" / "history.csv")))
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


def test_data_parallel_processes(shared_cifar_dir, tmp_path, monkeypatch):
    """Two processes each train on half of every batch; rank 0 tests and writes the run.
    The threads are split between them while training, and rank 0 has them all back while it
    evaluates and after the run."""
    quiet = dict(data_dir=shared_cifar_dir, runs_dir=tmp_path, progress=False,
                 log=lambda s: None, plots=False)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(2)  # whatever this machine has: 2 threads, 1 per process
    eval_threads, train_threads = [], []
    real_infer = engine.infer

    def counting_infer(*a, **k):
        eval_threads.append(torch.get_num_threads())
        return real_infer(*a, **k)

    monkeypatch.setattr(engine, "infer", counting_infer)
    try:
        m = cifarlab.train("fast-50k", procs=2, epochs=3, batch_size=100, max_seconds=0.001,
                           epoch_callback=lambda row: train_threads.append(
                               torch.get_num_threads()), **quiet)
        assert torch.get_num_threads() == 2  # given back after the run
    finally:
        torch.set_num_threads(threads_before)
    assert train_threads == [1]  # rank 0 trained epoch 1 with its share: 2 threads // 2
    assert eval_threads and set(eval_threads) == {2}  # and evaluated with all of them
    assert m["epochs"] == 1 and m["epochs_planned"] == 3  # both ranks agreed to stop
    st = load_checkpoint(Path(m["run_dir"]) / "last.pt")
    assert st["epoch"] == 1 and st["images_seen"] == 1000  # the two halves, all-reduced
    m = cifarlab.train(resume=m["run_dir"], data_dir=shared_cifar_dir, progress=False,
                       log=lambda s: None)
    assert m["epochs"] == 3
    rows = list(csv.DictReader(open(Path(m["run_dir"]) / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert m["test_acc"] == pytest.approx(float(rows[-1]["test_acc"]), abs=1e-4)
    assert not torch.distributed.is_initialized()


def test_interrupting_rank0_stops_a_worker_waiting_in_a_collective():
    """Ctrl-C or SIGTERM reaches rank 0 while the other rank waits in an all-reduce (C code,
    where no Python signal handler runs, such as the one benchmarks.search installs and the
    fork hands down): the worker is stopped at once, not after the 30-minute gloo timeout."""
    from cifarlab import parallel

    def fn():
        if torch.distributed.get_rank() == 0:
            time.sleep(1)
            raise KeyboardInterrupt
        torch.distributed.barrier()

    before = signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(128 + signum))
    try:
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            parallel.launch_local(2, fn)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert time.monotonic() - start < 60
    assert not torch.distributed.is_initialized()


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
    r = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m",
                        "cifarlab.cli", "train", "--recipe", "fast-50k",
                        "--data-dir", str(shared_cifar_dir),
                        "--runs-dir", str(tmp_path), "--epochs", "2", "--batch-size", "100",
                        "--no-progress", "--no-plots"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("final test accuracy") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["fast-50k"]
    rows = list(csv.DictReader(open(tmp_path / "fast-50k" / "history.csv")))
    assert len(rows) == 2


def test_model_initialised_from_training_data(shared_cifar_dir, tmp_path):
    m = cifarlab.train("fast-top", data_dir=shared_cifar_dir, runs_dir=tmp_path, progress=False,
                       log=lambda s: None, plots=False, epochs=1, batch_size=100, procs=1,
                       **{"data.train_subset": 300, "data.test_subset": 100})
    w = load_checkpoint(Path(m["run_dir"]) / "last.pt")["model"]["whiten.weight"]
    assert torch.equal(w[12:], -w[:12])  # whitening filters, and frozen through training


def test_norm_bias_lr_scale_and_fixed_momentum():
    cfg = resolve("fast-top", {"optim.name": "sgd"})  # airbench94's SGD (the recipe: Muon)
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
    plain = build_optimizer(resolve("fast-top", {"optim.name": "sgd",
                                                 "optim.norm_bias_lr_scale": 1.0}), model)
    assert len(plain.param_groups) == 1


def test_compile_trains_the_same_weights_it_checkpoints(shared_cifar_dir, tmp_path):
    """train.compile: the training forward runs through torch.compile; checkpoints hold the
    plain module's keys (no `_orig_mod.`), and a compiled run's checkpoint loads for eval."""
    m = cifarlab.train("default", data_dir=shared_cifar_dir, runs_dir=tmp_path, progress=False,
                       log=lambda s: None, plots=False, compile=True, epochs=1, batch_size=100,
                       procs=1)
    st = load_checkpoint(Path(m["run_dir"]) / "last.pt")
    assert not any("_orig_mod" in k for k in st["model"])
    cfg = json.loads((Path(m["run_dir"]) / "config.json").read_text())
    assert cfg["recipe"]["train"]["compile"] is True
    ev = api.evaluate(m["run_dir"], data_dir=shared_cifar_dir)
    assert ev["acc"] == pytest.approx(m["test_acc"], abs=0.01)


def test_low_res_epochs_train_on_smaller_images(shared_cifar_dir, tmp_path, monkeypatch):
    sizes = []
    real = engine.resize

    def spy(x, size):
        out = real(x, size)
        sizes.append(tuple(out.shape[-2:]))
        return out

    monkeypatch.setattr(engine, "resize", spy)
    m = cifarlab.train("default", data_dir=shared_cifar_dir, runs_dir=tmp_path, progress=False,
                       log=lambda s: None, plots=False, epochs=3, batch_size=50, lr=0.05,
                       low_res=16, low_res_epochs=2)
    steps = 1000 // 50
    assert sizes == [(16, 16)] * (2 * steps)  # epochs 1-2 only; epoch 3 at 32 x 32
    assert m["epochs"] == 3 and m["train_images"] == 1000 and len(sizes) == 2 * steps
    low = macs_at(cifarlab.api.build(resolve("default")).model, 16)
    assert m["train_macs"] == pytest.approx((2 * low + m["macs"]) / 3)  # compute as trained
    # resumed after the low-res epochs: nothing is resized any more
    sizes.clear()
    m2 = cifarlab.train("default", data_dir=shared_cifar_dir, runs_dir=tmp_path, progress=False,
                        log=lambda s: None, plots=False, epochs=3, batch_size=50, lr=0.05,
                        low_res=16, low_res_epochs=2, max_seconds=0.0)
    assert m2["epochs"] == 1 and sizes == [(16, 16)] * steps
    sizes.clear()
    cifarlab.train(resume=m2["run_dir"], data_dir=shared_cifar_dir, progress=False,
                   log=lambda s: None, plots=False)
    assert sizes == [(16, 16)] * steps  # epoch 2 low-res, epoch 3 not


def test_low_res_refused_for_a_fixed_size_head(shared_cifar_dir, tmp_path):
    # seed003-net1 flattens 16 x 5 x 5 features into its first Linear: 32 x 32 inputs only
    with pytest.raises(CifarlabError, match=r"train.low_res 16: this model does not take "
                       r"16x16 images"):
        cifarlab.train("seed003-net1", data_dir=shared_cifar_dir, runs_dir=tmp_path,
                       progress=False, log=lambda s: None, plots=False, epochs=2,
                       batch_size=50, low_res=16, low_res_epochs=1)


def test_fast_top_takes_26_px_but_not_24():
    """fast-top's low_res is 26: its 3x3 max-pool head needs a 3x3 map (a 24 px image gives
    2x2, refused before training)."""
    model, cpu = create_model("fast-top"), torch.device("cpu")
    engine.check_low_res(model, resolve("fast-top")["train"]["low_res"], cpu)
    with pytest.raises(CifarlabError, match="does not take 24x24 images"):
        engine.check_low_res(model, 24, cpu)
