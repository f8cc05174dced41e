"""The user's own network: FILE.py:NAME wherever a model name goes, entry points, nn.Module
instances in the API, and what a run records about the file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import cifarlab
from cifarlab.errors import CifarlabError
from cifarlab.layers import Fp32Conv2d, use_fp32_where_bf16_fails
from cifarlab.models import create_model
from cifarlab.models.registry import REGISTRY, model_source
from cifarlab.recipe import resolve

NET = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, width: int = 16, depth: int = 2):
            super().__init__()
            layers = [nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            for _ in range(depth - 1):
                layers += [nn.Conv2d(width, width, 3, padding=1, stride=2),
                           nn.BatchNorm2d(width), nn.ReLU()]
            self.body = nn.Sequential(*layers)
            self.head = nn.Linear(width, 10)

        def forward(self, x):
            return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(x), 1), 1))


    def small():
        return Net(8, 1)


    def broken():
        return 1 / 0


    def not_a_net():
        return "net"
''')


@pytest.fixture
def netfile(tmp_path: Path) -> Path:
    f = tmp_path / "mynet.py"
    f.write_text(NET)
    return f


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cifarlab.cli", *args], cwd=cwd,
                          capture_output=True, text=True)


def test_file_model_builds_and_records_its_source(netfile: Path):
    m = create_model(f"{netfile}:Net", width=8, depth=3)
    assert sum(p.numel() for p in m.parameters()) == Net_params(8, 3)
    assert type(m).__name__ == "Net"
    src = model_source(f"{netfile}:Net")
    assert src["file"] == str(netfile.resolve()) and len(src["sha256"]) == 64
    assert model_source("fast-50k") is None
    with pytest.raises(CifarlabError, match="has no argument 'widht'"):
        create_model(f"{netfile}:Net", widht=8)
    with pytest.raises(CifarlabError, match=r"defines no 'Nett' \(networks and functions "
                                            r"there: Net, broken, not_a_net, small\)"):
        create_model(f"{netfile}:Nett")
    with pytest.raises(CifarlabError, match="building it failed: ZeroDivisionError"):
        create_model(f"{netfile}:broken")
    with pytest.raises(CifarlabError, match="returned str, not an nn.Module"):
        create_model(f"{netfile}:not_a_net")
    with pytest.raises(CifarlabError, match="no such file"):
        create_model(f"{netfile.parent / 'gone.py'}:Net")
    bad = netfile.parent / "bad.py"
    bad.write_text("def f(:\n")
    with pytest.raises(CifarlabError, match=r"importing .*bad.py failed \(line 1\): SyntaxError"):
        create_model(f"{bad}:f")


def Net_params(width: int, depth: int) -> int:
    conv = 3 * width * 9 + width + 2 * width
    more = (depth - 1) * (width * width * 9 + width + 2 * width)
    return conv + more + width * 10 + 10


def test_cli_check_and_summary_take_a_file(netfile: Path):
    r = cli("check", "mynet.py:Net", "--max-params", "50000", "--require", "gap",
            cwd=netfile.parent)
    assert r.returncode == 0, r.stderr
    assert f"mynet.py:Net: {Net_params(16, 2):,} params" in r.stdout and "OK" in r.stdout
    r = cli("check", "mynet.py:Net", "--arg", "width=200", "--max-params", "50000",
            "--forbid", "strided_conv", cwd=netfile.parent)
    assert r.returncode == 1
    assert "FAIL max_params 50000" in r.stdout and "FAIL forbid strided_conv" in r.stdout
    r = cli("summary", "mynet.py:small", cwd=netfile.parent)
    assert r.returncode == 0 and "body.0" in r.stdout and "Receptive field" in r.stdout
    r = cli("check", "mynet.py:Nope", cwd=netfile.parent)
    assert r.returncode == 2 and r.stderr.startswith("cifarlab: error: model 'mynet.py:Nope'")
    assert "Traceback" not in r.stderr


def test_recipe_file_names_a_user_network_relative_to_itself(netfile: Path, tmp_path: Path):
    recipe = tmp_path / "mine.toml"
    recipe.write_text('base = "fast-seed001"\nmodel = "mynet.py:Net"\n'
                      "[model_args]\nwidth = 8\n[constraints]\nmax_params = 0\n"
                      "min_receptive_field = 0\nrequire = []\nforbid = []\n")
    cfg = resolve(recipe)
    assert cfg["model"] == f"{netfile.resolve()}:Net" and cfg["model_args"] == {"width": 8}
    # the base recipe's rules stay unless the file clears them
    recipe.write_text('base = "fast-seed001"\nmodel = "mynet.py:Net"\n')
    with pytest.raises(CifarlabError, match="breaks recipe 'mine': min_receptive_field 45"):
        cifarlab.train(recipe, data_dir=tmp_path / "nodata", runs_dir=tmp_path / "runs")


def test_api_check_and_summary_take_an_instance():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=2, dilation=2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    r = cifarlab.check(net, max_params=50_000, require=["gap", "dilated"], forbid=["maxpool"])
    assert r["ok"] and r["broken"] == [] and r["params"] == 3 * 8 * 9 + 8 + 90
    r = cifarlab.check(net, max_params=100, min_receptive_field=9)
    assert not r["ok"] and any("max_params 100" in b for b in r["broken"])
    assert any("min_receptive_field 9: receptive field is 5" in b for b in r["broken"])
    assert "Receptive field per layer" in cifarlab.summary(net)
    with pytest.raises(CifarlabError, match="model arguments go with a model name"):
        cifarlab.check(net, model_args={"width": 3})
    with pytest.raises(CifarlabError, match=r"returns \(1, 8, 32, 32\) for one image"):
        cifarlab.check(nn.Conv2d(3, 8, 3, padding=1))
    with pytest.raises(CifarlabError, match="fails on a 1x3x32x32 input: RuntimeError"):
        cifarlab.check(nn.Linear(5, 10))


def test_train_a_file_network_then_eval_needs_the_file(netfile: Path, shared_cifar_dir,
                                                         tmp_path: Path):
    r = cli("train", "--model", "mynet.py:Net", "--set", "model_args.width=8", "--epochs", "1",
            "--data-dir", str(shared_cifar_dir), "--runs-dir", "runs", "--no-plots",
            "--name", "mine", cwd=netfile.parent)
    assert r.returncode == 0, r.stderr
    run = netfile.parent / "runs" / "mine"
    import json
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["recipe"]["model"] == f"{netfile.resolve()}:Net"
    assert cfg["model_source"] == model_source(f"{netfile}:Net")
    ev = cli("eval", str(run), "--data-dir", str(shared_cifar_dir), cwd=tmp_path)
    assert ev.returncode == 0 and ev.stderr == "" and "test accuracy" in ev.stdout
    netfile.write_text(NET + "\n# edited\n")
    ev = cli("eval", str(run), "--data-dir", str(shared_cifar_dir), cwd=tmp_path)
    assert ev.returncode == 0
    assert ev.stderr.count("\n") == 1 and "has changed since this run trained it" in ev.stderr
    netfile.unlink()
    for cmd in (("eval", str(run), "--data-dir", str(shared_cifar_dir)),
                ("predict", str(run), str(netfile)), ("export", str(run))):
        r = cli(*cmd, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (cmd, r.stderr)
        assert "trained with the network in" in r.stderr and "which is missing" in r.stderr


class Tiny(nn.Module):
    def __init__(self, w: int = 8):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, 10))

    def forward(self, x):
        return self.f(x)


def test_train_an_instance(shared_cifar_dir, tmp_path: Path):
    net = Tiny(12)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    m = cifarlab.train(model=net, recipe="default", data_dir=shared_cifar_dir, epochs=1,
                       runs_dir=tmp_path, plots=False, progress=False, log=lambda s: None)
    assert m["model"] == f"{Path(__file__).resolve()}:Tiny"
    assert m["params"] == 12 * 27 + 12 * 3 + 130
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # not changed
    # built with arguments cifarlab cannot know: loading needs the network passed in
    with pytest.raises(CifarlabError, match="trained a model instance"):
        cifarlab.load_model(m["run_dir"])
    mine = Tiny(12)
    model, meta = cifarlab.load_model(m["run_dir"], model=mine)
    assert model is mine and meta["model_source"]["instance"] is True
    assert not torch.equal(mine.f[0].weight, before["f.0.weight"])
    ev = cifarlab.evaluate(m["run_dir"], data_dir=shared_cifar_dir, model=Tiny(12))
    assert ev["acc"] == pytest.approx(m["test_acc"], abs=1e-6)


def test_entry_point_networks(tmp_path: Path, monkeypatch):
    pkg = tmp_path / "site"
    (pkg / "extnets").mkdir(parents=True)
    (pkg / "extnets" / "__init__.py").write_text(
        "from torch import nn\n\ndef tiny():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), "
        "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))\n")
    info = pkg / "extnets-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: extnets\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cifarlab.models]\next-tiny = extnets:tiny\n")
    monkeypatch.syspath_prepend(str(pkg))
    try:
        m = create_model("ext-tiny")
        assert sum(p.numel() for p in m.parameters()) == 3 * 4 * 9 + 4 + 50
        assert "package extnets" in REGISTRY["ext-tiny"].provenance
        from cifarlab.api import model_table
        assert any(r["name"] == "ext-tiny" for r in model_table())
    finally:
        REGISTRY.pop("ext-tiny", None)
    with pytest.raises(CifarlabError, match="unknown model 'no-such-net'"):
        create_model("no-such-net")


def test_convs_with_a_wrong_bf16_gradient_run_in_fp32():
    """Whatever this CPU gets wrong, a swapped conv's bf16-autocast gradient equals fp32's,
    and a conv left alone agrees with fp32 to bf16 precision."""
    net = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1),
                        nn.Conv2d(24, 24, 3, padding=2, dilation=2),
                        nn.Conv2d(24, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(32, 10))
    fixed = use_fp32_where_bf16_fails(net, (32,))
    assert set(fixed) <= {"0", "1", "2"}
    assert all(isinstance(net[int(i)], Fp32Conv2d) for i in fixed)
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    net = net.to(memory_format=torch.channels_last)
    grads = []
    for bf16 in (True, False):
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = net(x)
        y.float().square().mean().backward()
        grads.append([p.grad.float().clone() for p in net.parameters()])
    for g16, g32 in zip(*grads, strict=True):
        assert float((g16 - g32).abs().max() / g32.abs().max()) < 0.1
