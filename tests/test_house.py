"""Issue 14: one schema, light imports, no hidden cycles, checks before a run directory,
checkpoints that name their network."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

import cifarlab
from cifarlab.cli import build_parser, main
from cifarlab.errors import CifarlabError
from cifarlab.recipe import DEFAULTS, SETTINGS, SHORTCUTS, AugmentConfig, resolve


def fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


def test_help_and_recipes_do_not_import_torch():
    r = fresh_python(
        "import sys, contextlib, io\n"
        "from cifarlab.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['recipes'])\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'matplotlib', 'numpy') if m in sys.modules]\n"
        "print(heavy)\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_no_hidden_cycle_through_the_package():
    # engine (and the version) load without the API, which imports the engine
    r = fresh_python("import sys, cifarlab.engine\n"
                     "print('cifarlab.api' in sys.modules, cifarlab.device.__version__)")
    assert r.returncode == 0, r.stderr
    api_loaded, version = r.stdout.split()
    assert api_loaded == "False" and version == cifarlab.__version__


def test_every_setting_declared_once_and_derived():
    keys = [s.key for s in SETTINGS]
    assert len(keys) == len(set(keys))
    # DEFAULTS is exactly the settings, nested
    flat = {}
    for section, v in DEFAULTS.items():
        if isinstance(v, dict) and v:
            flat |= {f"{section}.{k}": x for k, x in v.items()}
        else:
            flat[section] = v
    assert set(flat) == set(keys)
    # AugmentConfig's fields and defaults are the augment settings
    aug = {f"augment.{f.name}": f.default for f in dataclasses.fields(AugmentConfig)}
    assert aug == {s.key: s.default for s in SETTINGS if s.key.startswith("augment.")}
    # each flag reaches its key, each shortcut its key
    t = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in t._actions}
    assert {s.key for s in SETTINGS if s.flag} <= dests
    assert SHORTCUTS["lr"] == "optim.lr" and SHORTCUTS["val_split"] == "data.val_split"
    a = t.parse_args(["--lr", "0.3", "--val-split", "100", "--fp32"])
    assert getattr(a, "optim.lr") == 0.3 and getattr(a, "data.val_split") == 100
    assert getattr(a, "train.precision") == "fp32"


def test_cli_flags_and_shortcuts_reach_the_same_recipe(monkeypatch):
    seen = {}

    def fake_train(recipe, **kw):
        seen["cfg"] = resolve(recipe, {k: v for k, v in kw.items() if "." in k or k in
                                       SHORTCUTS})
        raise CifarlabError("stop here")

    monkeypatch.setattr("cifarlab.api.train", fake_train)
    assert main(["train", "--lr", "0.3", "--epochs", "4", "--val-split", "10",
                 "--set", "augment.cutout=8"]) == 2
    api = resolve("default", {"lr": 0.3, "epochs": 4, "val_split": 10, "augment.cutout": 8})
    assert seen["cfg"] == api


def test_cross_field_checks_before_any_run_dir(shared_cifar_dir, tmp_path):
    bad = {"augment.backend": "albumentations", "augment.flip_mode": "alternate"}
    with pytest.raises(CifarlabError, match="alternate' needs augment.backend"):
        cifarlab.train("default", data_dir=shared_cifar_dir, runs_dir=tmp_path, **bad)
    with pytest.raises(CifarlabError, match="does not split evenly"):
        cifarlab.train("default", data_dir=shared_cifar_dir, runs_dir=tmp_path,
                       batch_size=51, procs=2)
    with pytest.raises(CifarlabError, match="train.target needs accuracy every epoch"):
        cifarlab.train("default", data_dir=shared_cifar_dir, runs_dir=tmp_path, target=0.5,
                       **{"train.test_eval": "never"})
    with pytest.raises(CifarlabError, match="max_macs 1000"):
        cifarlab.train("fast-50k", data_dir=shared_cifar_dir, runs_dir=tmp_path,
                       **{"constraints.max_macs": 1000})
    assert list(tmp_path.iterdir()) == []


def test_base_recipe_inheritance():
    f = resolve("fast-seed001")
    first = {"base": "fast-seed001", "name": "first", "optim": {"name": "sgd"},
             "train": {"epochs": 4, "low_res": 0, "low_res_epochs": 0},
             "constraints": {"max_params": 0, "min_receptive_field": 0, "require": [],
                             "forbid": []}}
    d = resolve(first)
    assert d["name"] == "first" and d["model"] == f["model"]
    # what the child sets itself (SGD at full size, no rules); the rest is inherited
    d["train"].update({k: f["train"][k] for k in ("epochs", "low_res", "low_res_epochs")})
    d["optim"]["name"] = f["optim"]["name"]
    assert not any(d["constraints"].values()) and f["constraints"]["require"]
    d["constraints"] = f["constraints"]
    assert {k: v for k, v in d.items() if k not in ("name", "description")} == \
        {k: v for k, v in f.items() if k not in ("name", "description")}
    child = resolve({"base": "fast-50k", "name": "mine", "train": {"epochs": 3}})
    assert child["model"] == "family" and child["train"]["epochs"] == 3
    assert child["model_args"] == resolve("fast-50k")["model_args"]
    # another network: the base's model_args were its own and are dropped
    other = resolve({"base": "fast-50k", "model": "seed001"})
    assert other["model_args"] == {} and other["optim"] == resolve("fast-50k")["optim"]
    assert resolve("fast-50k", {"model": "seed001"})["model_args"] == {}
    assert child["train"]["batch_size"] == resolve("fast-50k")["train"]["batch_size"]


def test_model_built_and_traced_once(shared_cifar_dir, tmp_path, monkeypatch):
    import cifarlab.analysis as analysis
    import cifarlab.models.registry as registry

    counts = {"trace": 0, "create": 0}
    real_trace, real_create = analysis.trace, registry.create_model

    def trace(*a, **k):
        counts["trace"] += 1
        return real_trace(*a, **k)

    def create(*a, **k):
        counts["create"] += 1
        return real_create(*a, **k)

    monkeypatch.setattr(analysis, "trace", trace)
    monkeypatch.setattr("cifarlab.training.create_model", create)
    cifarlab.train("fast-50k", data_dir=shared_cifar_dir, runs_dir=tmp_path, epochs=1,
                   batch_size=100, procs=1, progress=False, plots=False, log=lambda s: None)
    assert counts == {"trace": 1, "create": 1}
    # a schedule with progressive-resizing epochs adds one trace at that size (train_macs)
    counts.update(trace=0, create=0)
    cifarlab.train("fast-50k", data_dir=shared_cifar_dir, runs_dir=tmp_path, epochs=2,
                   batch_size=100, procs=1, progress=False, plots=False, log=lambda s: None,
                   **{"data.train_subset": 200, "data.test_subset": 100})
    assert counts == {"trace": 2, "create": 1}


def _run_with_model(shared_cifar_dir, tmp_path):
    return cifarlab.train("fast-seed001", data_dir=shared_cifar_dir, runs_dir=tmp_path, epochs=1,
                          batch_size=100, procs=1, progress=False, plots=False,
                          log=lambda s: None)["run_dir"]


def test_checkpoint_of_a_changed_network_refused_in_one_line(shared_cifar_dir, tmp_path):
    from cifarlab.rundir import load_checkpoint, save_checkpoint

    run = _run_with_model(shared_cifar_dir, tmp_path)
    st = load_checkpoint(tmp_path / "fast-seed001" / "last.pt")
    assert st["meta"]["model"] == "air-seed001" and st["meta"]["params"] == 188_888
    # the same name with other weights: what an old seed001-dilated checkpoint looks like
    st["meta"]["model"] = "seed001-dilated"
    st["meta"]["params"] = 92_682
    save_checkpoint(tmp_path / "old.pt", st)
    with pytest.raises(CifarlabError, match="92,682 parameters; 'seed001-dilated' has 188,394"):
        cifarlab.evaluate(tmp_path / "old.pt", data_dir=shared_cifar_dir)
    # no parameter count (a checkpoint from before it was recorded): the weights decide
    del st["meta"]["params"]
    save_checkpoint(tmp_path / "older.pt", st)
    with pytest.raises(CifarlabError, match="weights do not fit today's 'seed001-dilated'"):
        cifarlab.predict(tmp_path / "older.pt", [])
    st["meta"]["model"] = "gone-net"
    save_checkpoint(tmp_path / "gone.pt", st)
    with pytest.raises(CifarlabError, match="unknown model 'gone-net'"):
        cifarlab.evaluate(tmp_path / "gone.pt", data_dir=shared_cifar_dir)
    r = subprocess.run([sys.executable, "-m", "cifarlab.cli", "eval", str(tmp_path / "old.pt"),
                        "--data-dir", str(shared_cifar_dir)], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert run


def test_no_arguments_prints_getting_started(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "cifarlab recipes" in out and "cifarlab train" in out and "cifarlab report" in out


def test_redirected_progress_is_one_line_per_epoch(shared_cifar_dir, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "cifarlab.cli", "train", "--recipe", "fast-50k", "--data-dir",
         str(shared_cifar_dir), "--runs-dir", str(tmp_path), "--epochs", "3",
         "--batch-size", "20", "--procs", "1", "--no-plots"],
        capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stdout + r.stderr  # no progress-bar frames in a log
    # a line at most every 30 s within an epoch (a slow machine), else one line per epoch
    lines = [x for x in r.stdout.splitlines() if ": step " not in x]
    assert sum(line.startswith("epoch ") for line in lines) == 3
    assert len(lines) == 8  # the run line, three epochs, three next steps, the final line
    assert lines[-4].startswith("next: cifarlab report")
    assert "final test accuracy" in lines[-1] and "3 epochs in" in lines[-1]


def test_trace_leaves_the_training_random_stream_alone():
    from cifarlab.analysis import describe
    from cifarlab.models import create_model

    torch.manual_seed(0)
    before = torch.get_rng_state()
    describe(create_model("fast-50k"))
    torch.manual_seed(0)
    create_model("fast-50k")
    after_build = torch.get_rng_state()
    torch.manual_seed(0)
    m = create_model("fast-50k")
    describe(m)
    assert torch.equal(torch.get_rng_state(), after_build)
    torch.manual_seed(0)
    describe(m)  # tracing alone draws nothing from the global stream
    assert torch.equal(torch.get_rng_state(), before)


def test_progress_off_a_terminal_logs_at_most_every_interval():
    from cifarlab.engine import Progress

    loss, correct = torch.tensor(4.0), torch.tensor(2.0)
    lines: list[str] = []
    p = Progress(True, 5, "epoch 1/2", lines.append, every=0.0)  # pytest: not a terminal
    assert p.bar is None
    for step in range(5):
        p.update(step, loss, correct, 4)
    assert lines[0] == "epoch 1/2: step 1/5  loss 1.0000 acc 0.5000" and len(lines) == 5
    lines.clear()
    p = Progress(True, 5, "epoch 1/2", lines.append, every=3600.0)
    for step in range(5):
        p.update(step, loss, correct, 4)
    assert lines == []  # a short epoch: nothing but the loop's own epoch line
