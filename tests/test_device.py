"""Device choice (--device): CPU behaviour everywhere, CUDA checks where a GPU exists."""

import json
from pathlib import Path

import pytest
import torch

import cifarlab
from cifarlab.device import resolve_device
from cifarlab.errors import CifarlabError
from cifarlab.rundir import load_checkpoint

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
QUIET = dict(progress=False, log=lambda s: None, plots=False)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "gpu0", "", "cuda:x"):
        with pytest.raises(CifarlabError, match="expected auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    with pytest.raises(CifarlabError, match=r"cuda:99': this machine has \d+ CUDA GPU"
                       if torch.cuda.is_available() else "no CUDA GPU is available"):
        resolve_device("cuda:99")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_one_line_error(shared_cifar_dir, tmp_path):
    from test_cli import cli

    r = cli("train", "--data-dir", str(shared_cifar_dir), "--runs-dir", str(tmp_path),
            "--epochs", "1", "--device", "cuda")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "device 'cuda': no CUDA GPU is available" in r.stderr
    assert not (tmp_path / "default").exists()  # refused before a run directory is made


def test_cpu_run_records_device(shared_cifar_dir, tmp_path):
    m = cifarlab.train("default", data_dir=shared_cifar_dir, runs_dir=tmp_path, epochs=1,
                       batch_size=100, device="cpu", **QUIET)
    cfg = json.loads((Path(m["run_dir"]) / "config.json").read_text())
    assert cfg["environment"]["device"] == "cpu"
    assert "device" not in cfg["recipe"]["train"]  # a machine fact, not part of the recipe


@cuda
def test_cuda_trains_and_resumes_on_cpu(shared_cifar_dir, tmp_path):
    """A run stopped on the GPU continues on the CPU from its checkpoint."""
    kw = dict(data_dir=shared_cifar_dir, runs_dir=tmp_path, **QUIET)
    m = cifarlab.train("default", epochs=2, batch_size=50, max_seconds=0.001, device="cuda",
                       **{"train.ema": 0.5, "train.lookahead": 0.9}, **kw)
    assert m["epochs"] == 1 and m["stopped_by"] == "time"
    run = Path(m["run_dir"])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["environment"]["device"] == torch.cuda.get_device_name()
    st = load_checkpoint(run / "last.pt")  # loaded onto the CPU
    assert st["rng"]["cuda"] is not None
    assert all(v.device.type == "cpu" for v in st["model"].values())
    m = cifarlab.train(resume=run, device="cpu", **{k: v for k, v in kw.items()
                                                     if k != "runs_dir"})
    assert m["epochs"] == 2 and 0 <= m["test_acc"] <= 1
    rows = (run / "history.csv").read_text().splitlines()
    assert len(rows) == 3  # header, the GPU epoch, the CPU epoch


@cuda
def test_cuda_ignores_processes(shared_cifar_dir, tmp_path):
    logs = []
    m = cifarlab.train("fast-50k", data_dir=shared_cifar_dir, runs_dir=tmp_path, procs=2,
                       epochs=1, batch_size=100, device="cuda", progress=False,
                       log=logs.append, plots=False)
    assert m["epochs"] == 1
    assert any("one process on cuda" in s for s in logs)
