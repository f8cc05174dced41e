"""benchmarks.robustness: rows, the option trained in the same invocation, resume."""

import json

from benchmarks import robustness as bench_robustness


def test_rows_options_and_resume(tmp_path, cifar_dir, monkeypatch):
    trained = []
    real_train = bench_robustness.cifarlab.train

    def tiny_train(recipe, **kw):  # the recipe as given, shrunk to seconds
        trained.append((recipe, kw.get("augment.augmix", 0)))
        return real_train(recipe, **{**kw, "epochs": 1, "batch_size": 50,
                                     "train.processes": 1})

    monkeypatch.setattr(bench_robustness.cifarlab, "train", tiny_train)
    monkeypatch.setattr(bench_robustness, "generation_seconds",
                        lambda images: {"images": 75 * len(images), "seconds": 1.0,
                                        "images_per_second": 75.0 * len(images)})
    out = tmp_path / "robustness.json"
    args = ["fast-50k", "default", "--with-option", "fast-50k", "--images", "20",
            "--data-dir", str(cifar_dir), "--runs-dir", str(tmp_path / "runs"),
            "--out", str(out)]
    bench_robustness.main(args)
    r = json.loads(out.read_text())
    assert [(x["recipe"], x["option"]) for x in r["rows"]] == [
        ("fast-50k", "none"), ("fast-50k", "augmix"), ("default", "none")]
    assert trained == [("fast-50k", 0), ("fast-50k", 3), ("default", 0)]
    row = r["rows"][0]
    for key in ("clean_acc", "mca", "by_severity", "by_corruption", "worst_corruption",
                "train_seconds", "commit", "date", "machine", "command"):
        assert key in row, key
    assert len(row["by_severity"]) == 5 and len(row["by_corruption"]) == 15
    assert row["images"] == 20 and r["images"] == 20 and r["generation"]["images"] == 7500
    # resumed: finished rows are kept, nothing is trained again
    bench_robustness.main([*args, "--resume"])
    assert len(trained) == 3 and len(json.loads(out.read_text())["rows"]) == 3
    # a row whose recipe resolves differently now is measured again, the old one superseded;
    # so are the rows of a recipe named with --retrain
    real_sha = bench_robustness.recipe_sha
    monkeypatch.setattr(bench_robustness, "recipe_sha", lambda recipe, over: real_sha(
        recipe, over) + ("-edited" if recipe == "default" else ""))
    bench_robustness.main([*args, "--resume"])
    assert trained[3:] == [("default", 0)]
    r = json.loads(out.read_text())
    assert [(x["recipe"], x["option"]) for x in r["superseded_rows"]] == [("default", "none")]
    assert [(x["recipe"], x["option"]) for x in r["rows"]] == [
        ("fast-50k", "none"), ("fast-50k", "augmix"), ("default", "none")]
    assert r["rows"][-1]["recipe_sha"].endswith("-edited")
    bench_robustness.main([*args, "--resume", "--retrain", "fast-50k"])
    assert trained[4:] == [("fast-50k", 0), ("fast-50k", 3)]
    r = json.loads(out.read_text())
    assert len(r["superseded_rows"]) == 3 and len(r["rows"]) == 3
    # a row of a recipe that no longer exists is superseded, and that is written although
    # nothing is trained
    r["rows"].append({**r["rows"][0], "recipe": "gone", "recipe_sha": "abc"})
    out.write_text(json.dumps(r))
    bench_robustness.main([*args, "--resume"])
    r = json.loads(out.read_text())
    assert len(trained) == 6 and r["superseded_rows"][-1]["recipe"] == "gone"
    assert [x["recipe"] for x in r["rows"]] == ["default", "fast-50k", "fast-50k"]
