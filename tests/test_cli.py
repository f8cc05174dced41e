"""User errors: one line on stderr, non-zero exit, no traceback, nothing started."""

import subprocess
import sys

import pytest


def cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "cifarlab.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env)


def one_line_error(r, *needles):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("args, needles", [
    (["--lr", "-1"], ["optim.lr"]),
    (["--optimizer", "adamm"], ["optim.name", "adam"]),
    (["--batch-size", "0"], ["train.batch_size"]),
    (["--set", "train.epoch=3"], ["train.epoch", "epochs"]),
    (["--recipe", "nope"], ["unknown recipe 'nope'"]),
    (["--set", "model=nonet"], ["unknown model 'nonet'"]),
    (["--set", "model_args.widht=3"], ["model_args.widht"]),
    (["--set", "augment.flip_mode=sometimes"], ["augment.flip_mode", "alternate"]),
    (["--set", "train.eval_every=-1"], ["train.eval_every"]),
])
def test_bad_train_options(args, needles, shared_cifar_dir, tmp_path):
    r = cli("train", "--data-dir", str(shared_cifar_dir), "--runs-dir", str(tmp_path), *args)
    one_line_error(r, *needles)
    if "model" not in " ".join(args):
        assert not list(tmp_path.iterdir())  # rejected before any run dir was created


def test_missing_data(tmp_path):
    r = cli("data", "stats", "--data-dir", str(tmp_path / "nowhere"))
    one_line_error(r, "CIFAR-10 not found", "nowhere", "--download")


def test_data_stats(shared_cifar_dir):
    r = cli("data", "stats", "--data-dir", str(shared_cifar_dir))
    assert r.returncode == 0
    assert "mean " in r.stdout and "std " in r.stdout
    assert "Class 0 (airplane" in r.stdout


def test_eval_missing(tmp_path):
    one_line_error(cli("eval", str(tmp_path / "none")), "no such run directory")


def test_resume_not_a_run(tmp_path):
    one_line_error(cli("train", "--resume", str(tmp_path)), "not a run directory")


def test_recipes_and_models_list():
    r = cli("recipes")
    assert r.returncode == 0 and "default" in r.stdout
    r = cli("models")
    assert r.returncode == 0 and "seed001" in r.stdout and "92,394" in r.stdout


def test_output_closed_early_is_not_an_error():
    # `cifarlab models | head -1`: the reader leaves before the listing ends
    p = subprocess.Popen([sys.executable, "-m", "cifarlab.cli", "models"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=0)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait() == 0 and "Traceback" not in err and "Broken pipe" not in err


def test_cli_train_and_eval(shared_cifar_dir, tmp_path):
    r = cli("train", "--data-dir", str(shared_cifar_dir), "--runs-dir", str(tmp_path),
            "--epochs", "1", "--batch-size", "100", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "final test accuracy" in r.stdout
    assert "epoch   1/1" in r.stdout
    r = cli("eval", str(tmp_path / "default"), "--data-dir", str(shared_cifar_dir))
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout and "confusion matrix" in r.stdout
    assert "truck" in r.stdout
    r = cli("train", "--data-dir", str(shared_cifar_dir), "--runs-dir", str(tmp_path),
            "--name", "quiet", "--epochs", "1", "--batch-size", "100", "--no-progress",
            "--no-plots")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "quiet" / "best.pt").is_file()
    assert not (tmp_path / "quiet" / "plots").exists()


def test_runs_dir_is_a_file(shared_cifar_dir, tmp_path):
    f = tmp_path / "runs"
    f.write_text("x")
    r = cli("train", "--data-dir", str(shared_cifar_dir), "--runs-dir", str(f), "--epochs", "1")
    one_line_error(r, "cannot create runs directory")
    assert f.read_text() == "x"


def test_summary_seed001():
    r = cli("summary", "seed001")
    assert r.returncode == 0, r.stderr
    assert "Total params: 92,394" in r.stdout and "MACs" in r.stdout
    rf_rows = [ln for ln in r.stdout.splitlines() if ln.startswith("Conv2d-")]
    assert [int(ln.split()[-2]) for ln in rf_rows] == [3, 5, 5, 9, 13, 13, 21, 29, 29, 37, 45, 61]


def test_check_pass_and_fail():
    ok = cli("check", "seed001", "--recipe", "seed001")
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = cli("check", "seed001", "--max-params", "50000", "--forbid", "strided_conv")
    assert bad.returncode == 1
    assert "FAIL max_params 50000" in bad.stdout
    assert "FAIL forbid strided_conv: Conv2d-5 (features.4)" in bad.stdout
    one_line_error(cli("check", "seed001", "--forbid", "maxpol"), "unknown constraint rule")
    one_line_error(cli("summary", "nonet"), "unknown model 'nonet'")


def test_check_and_summary_of_a_recipes_network():
    """Without MODEL, --recipe names the network: its model with its model_args."""
    ok = cli("check", "--recipe", "fast-50k")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("fast-50k: 49,178 params") and "OK" in ok.stdout
    assert "receptive field 62" in ok.stdout
    bad = cli("check", "--recipe", "fast-50k", "--arg", "stem=64")  # --arg on top
    assert bad.returncode == 1 and "FAIL max_params 49999" in bad.stdout
    s = cli("summary", "--recipe", "fast-50k")
    assert s.returncode == 0 and "Total params: 49,178" in s.stdout
    one_line_error(cli("check"), "name a model, or a recipe")
    one_line_error(cli("summary", "--recipe", "no-such-recipe"), "no-such-recipe")


def test_a_model_named_like_a_recipe_that_trains_another_network_says_so():
    """The fast-50k model is the issue-5 network; the fast-50k recipe trains a family design:
    a bare name is the model, with a note on stderr naming the recipe's network."""
    r = cli("summary", "fast-50k")
    assert r.returncode == 0 and "Total params: 49,658" in r.stdout
    assert r.stderr.strip() == ("note: 'fast-50k' is the built-in model of that name; the "
                                "fast-50k recipe trains 'family' (cifarlab summary --recipe "
                                "fast-50k)")
    c = cli("check", "fast-seed001")
    assert c.returncode == 0 and "'air-seed001' (cifarlab check --recipe fast-seed001)" in c.stderr
    for quiet in (cli("check", "fast-top"), cli("summary", "fast-50k", "--arg", "width=8"),
                  cli("check", "seed001")):  # the same network, arguments given, no recipe
        assert quiet.returncode == 0 and "note:" not in quiet.stderr
