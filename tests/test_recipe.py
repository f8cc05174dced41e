import pytest

from cifarlab.analysis import check_constraints
from cifarlab.models import create_model
from cifarlab.recipe import DEFAULTS, RecipeError, list_recipes, parse_override, resolve


def test_default_resolves():
    cfg = resolve("default")
    assert cfg["name"] == "default" and set(cfg) == set(DEFAULTS)
    # the default trains fast-seed001's first network (FastSeed001, which meets seed 001's
    # rules) as that recipe first trained it, shorter: SGD at full size, and no rules, so any
    # --model trains; the fast-seed001 recipe has moved on (Muon, 24 px, air-seed001)
    assert cfg["model"] == "fast-seed001" and resolve("fast-seed001")["model"] == "air-seed001"
    assert not any(cfg["constraints"].values())
    rules = resolve("fast-seed001")["constraints"]
    assert check_constraints(create_model(cfg["model"]), max_params=rules["max_params"],
                             min_receptive_field=rules["min_receptive_field"],
                             require=rules["require"], forbid=rules["forbid"]) == []
    assert {k: cfg["optim"][k] for k in ("name", "lr", "weight_decay", "momentum",
                                         "nesterov")} == {
        "name": "sgd", "lr": 0.2, "weight_decay": 5e-4, "momentum": 0.9, "nesterov": True}
    assert cfg["train"]["epochs"] == 8 and cfg["train"]["low_res"] == 0


def test_every_builtin_recipe_resolves():
    names = [n for n, _ in list_recipes()]
    assert "default" in names
    for n in names:
        resolve(n)


@pytest.mark.parametrize("override, match", [
    ({"optim.lr": -0.1}, r"optim.lr: -0.1 is outside"),
    ({"optim.name": "adamm"}, r"optim.name: 'adamm' is not one of .*did you mean 'adam'"),
    ({"train.batch_size": 0}, r"train.batch_size: 0 is outside"),
    ({"train.epoch": 3}, r"unknown recipe key 'train.epoch'.*did you mean 'epochs'"),
    ({"trian.epochs": 3}, r"unknown recipe key 'trian'.*did you mean 'train'"),
    ({"train.epochs": "ten"}, r"train.epochs: expected an integer"),
    ({"train.epochs": 2.5}, r"train.epochs: expected an integer"),
    ({"train.tta": 1}, r"train.tta: expected true or false"),
    ({"loss.label_smoothing": 1.0}, r"loss.label_smoothing"),
    ({"schedule.name": "cyclic"}, r"schedule.name"),
    ({"train.low_res": 24}, r"train.low_res and train.low_res_epochs go together"),
    ({"train.low_res_epochs": 2}, r"train.low_res and train.low_res_epochs go together"),
    ({"train.low_res": 32, "train.low_res_epochs": 2}, r"train.low_res: 32 is outside"),
])
def test_invalid_values_named(override, match):
    with pytest.raises(RecipeError, match=match):
        resolve("default", override)


def test_overrides_apply_and_ints_become_floats():
    cfg = resolve("default", {"train.epochs": 3, "optim.lr": 1})
    assert cfg["train"]["epochs"] == 3
    assert cfg["optim"]["lr"] == 1.0 and isinstance(cfg["optim"]["lr"], float)


def test_recipe_file(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('model = "seed001"\n[train]\nepochs = 2\n')
    cfg = resolve(p)
    assert cfg["name"] == "mine" and cfg["train"]["epochs"] == 2
    p.write_text("[train\nepochs = 2\n")
    with pytest.raises(RecipeError, match="mine.toml: invalid TOML"):
        resolve(p)


def test_unknown_recipe():
    with pytest.raises(RecipeError, match="unknown recipe 'nope'"):
        resolve("nope")


def test_parse_override():
    assert parse_override("optim.lr=0.01") == ("optim.lr", 0.01)
    assert parse_override("optim.name=adam") == ("optim.name", "adam")
    assert parse_override("train.tta=false") == ("train.tta", False)
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_override("optim.lr")


def test_seed_recipes_build_and_pass_their_constraints():
    from cifarlab.api import build
    from cifarlab.errors import CifarlabError
    from cifarlab.models import create_model

    for name, _ in list_recipes():
        cfg = resolve(name)
        built = build(cfg)  # raises when the model breaks the recipe's [constraints]
        assert type(built.model) is type(create_model(cfg["model"], **cfg["model_args"])), name
        assert built.model_facts["params"] == sum(p.numel() for p in built.model.parameters()), name
        # one parameter fewer allowed, or a receptive field one larger required: refused
        with pytest.raises(CifarlabError, match="max_params"):
            build(resolve(name, {"constraints.max_params": built.model_facts["params"] - 1}))
        rf = built.model_facts["receptive_field"]
        with pytest.raises(CifarlabError, match=f"min_receptive_field {rf + 1}: receptive "
                                              f"field is {rf}"):
            build(resolve(name, {"constraints.min_receptive_field": rf + 1}))


def test_constraint_values_validated():
    with pytest.raises(RecipeError, match="constraints.forbid: unknown rule 'maxpol'.*maxpool"):
        resolve("default", {"constraints.forbid": ["maxpol"]})
    with pytest.raises(RecipeError, match="constraints.require: expected a list"):
        resolve("default", {"constraints.require": [1]})


def test_train_refuses_broken_constraints(shared_cifar_dir, tmp_path):
    import cifarlab
    from cifarlab.errors import CifarlabError

    with pytest.raises(CifarlabError, match=r"forbid strided_conv: Conv2d-5 \(features.4\)"):
        cifarlab.train("seed001-fast", data_dir=shared_cifar_dir, runs_dir=tmp_path,
                       **{"constraints.forbid": ["strided_conv"]})
    with pytest.raises(CifarlabError, match="max_params 50000: model has 92,394"):
        cifarlab.train("seed001-fast", data_dir=shared_cifar_dir, runs_dir=tmp_path,
                       **{"constraints.max_params": 50000})
    assert not list(tmp_path.iterdir())  # refused before a run directory was made


def test_low_res_epochs_leave_the_last_epoch_at_full_size():
    """A schedule shortened with --epochs keeps working: the low-res phase is cut, not refused."""
    from cifarlab.recipe import low_res_epochs

    t = resolve("fast-50k")["train"]
    assert (t["low_res"], t["low_res_epochs"], low_res_epochs(t)) == (24, 1, 1)
    assert [low_res_epochs(resolve("fast-50k", {"train.epochs": e})["train"])
            for e in (1, 2, 3, 4)] == [0, 1, 1, 1]
    assert low_res_epochs(resolve("default")["train"]) == 0
    assert low_res_epochs(resolve("fast-top")["train"]) == 6  # 26 px: its max-pool head's least
