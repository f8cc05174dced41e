"""Every registered network: shapes, exact parameter counts, the seeds' budgets."""

from __future__ import annotations

import pytest
import torch

from cifarlab.analysis import (
    check_constraints,
    count_params,
    layer_table,
    macs,
    receptive_field,
    receptive_field_table,
)
from cifarlab.errors import CifarlabError
from cifarlab.models import REGISTRY, create_model
from cifarlab.models.dynamic import NthBlock


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(cin: int, cout: int, k: int) -> int:  # with bias
    return cin * cout * k * k + cout


def fc(i: int, o: int) -> int:
    return i * o + o


EXPECTED = {
    "seed001": 92_394,
    "seed003-net1": conv(3, 6, 5) + conv(6, 16, 5) + fc(400, 120) + fc(120, 84) + fc(84, 10),
    "seed003-net3": conv(3, 6, 5) + conv(6, 16, 5) + fc(400, 200) + fc(200, 100) + fc(100, 50)
    + fc(50, 10),
    "seed003-net6": conv(3, 32, 5) + conv(32, 64, 5) + fc(1600, 800) + fc(800, 400)
    + fc(400, 200) + fc(200, 100) + fc(100, 50) + fc(50, 10),
    "seed003-net7": conv(3, 64, 5) + conv(64, 128, 5) + fc(3200, 1600) + fc(1600, 800)
    + fc(800, 400) + fc(400, 200) + fc(200, 100) + fc(100, 50) + fc(50, 10),
    "seed003-net8": conv(3, 64, 5) + conv(64, 128, 5) + conv(128, 256, 5) + fc(2304, 1600)
    + fc(1600, 800) + fc(800, 400) + fc(400, 200) + fc(200, 100) + fc(100, 50) + fc(50, 10),
}


def test_registry_has_every_seed_model():
    expected = {"seed000-m1", "seed000-m2", "seed000-m3", "seed001", "seed001-dilated",
                "seed002", "seed003-net1", "seed003-net3", "seed003-net6", "seed003-net7",
                "seed003-net8", "seed004"}
    assert expected <= set(REGISTRY)
    for name in expected:
        assert REGISTRY[name].provenance


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_model_maps_images_to_ten_logits(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_model_takes_num_classes(name):
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exact_parameter_counts(name):
    assert n_params(create_model(name)) == EXPECTED[name]


def test_tutorial_net1_is_the_classic_62006():
    """The PyTorch 60-minute blitz's Net has 62,006 parameters (456 + 2,416 + 48,120 + 10,164
    + 850, as torchsummary prints them); cifarlab's analysis of the registered model agrees."""
    model = create_model("seed003-net1")
    assert count_params(model) == (62_006, 62_006)
    per_layer = [r["params"] for r in layer_table(model) if r["params"]]
    assert per_layer == [456, 2_416, 48_120, 10_164, 850]
    assert macs(model) == 651_720  # conv 352,800 + 240,000, fc 48,000 + 10,080 + 840


def test_speed_models_pass_their_rules():
    small = create_model("fast-50k")
    assert n_params(small) == 49_658
    assert check_constraints(small, max_params=49_999) == []
    rules = create_model("fast-seed001")  # seed 001's rules, as the fast-seed001 recipe says
    assert n_params(rules) == 185_898
    assert check_constraints(rules, max_params=199_999, min_receptive_field=45,
                             require=("depthwise_separable", "dilated", "gap"),
                             forbid=("maxpool",)) == []
    assert n_params(create_model("fast-seed001", width=40)) > 200_000  # width is the knob



def test_air_seed001_passes_seed001_rules_with_pooling_before_batchnorm():
    model = create_model("air-seed001")
    w1, w2, w3 = 48, 96, 128
    convs = 9 * (24 * w1 + w1 * w1 + w1 * w2 + w2 * w2) + 9 * w2 + w2 * w3 + 9 * w3 + w3 * w3
    whiten, bns = 3 * 24 * 4 + 24, 2 * (2 * w1 + 2 * w2 + 2 * w3)  # BN: weight + bias
    assert n_params(model) == convs + whiten + bns + w3 * 10 == 188_888
    assert check_constraints(model, max_params=199_999, min_receptive_field=45,
                             require=("depthwise_separable", "dilated", "gap"),
                             forbid=("maxpool",)) == []
    assert receptive_field(model) == 59
    layers = list(model.features)
    for i, m in enumerate(layers):  # every average pool is followed by its BatchNorm
        if isinstance(m, torch.nn.AvgPool2d):
            assert isinstance(layers[i + 1], torch.nn.BatchNorm2d)
    with torch.no_grad():  # progressive resizing's 24 px images go through
        assert model.eval()(torch.randn(2, 3, 24, 24)).shape == (2, 10)
    assert isinstance(create_model("air-seed001", act="gelu").features[1], torch.nn.GELU)
    with pytest.raises(ValueError, match="relu or gelu"):
        create_model("air-seed001", act="tanh")

@pytest.mark.parametrize("name", ["seed000-m1", "seed000-m2", "seed000-m3"])
def test_seed000_models_are_under_50k(name):
    assert n_params(create_model(name)) < 50_000


def test_seed000_m2_returns_log_probabilities():
    model = create_model("seed000-m2").eval()
    with torch.no_grad():
        y = model(torch.randn(3, 3, 32, 32))
    assert torch.allclose(y.exp().sum(1), torch.ones(3), atol=1e-5)
    assert (y <= 0).all()


def test_seed001_dilated_meets_the_bonus_rules():
    model = create_model("seed001-dilated")
    assert n_params(model) < 200_000
    assert receptive_field(model) > 44
    assert check_constraints(model, max_params=199_999, min_receptive_field=45,
                             require=("dilated", "depthwise_separable", "gap"),
                             forbid=("maxpool", "avgpool", "strided_conv")) == []
    drops = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and set(drops) == {0.1}
    # seed 001 evaluated densely: strides become dilations (1, 2, 4), valid convs shrink the maps
    assert n_params(model) == 188_394
    convs = [r for r in receptive_field_table(model) if r["kind"] == "conv"]
    assert [r["rf"] for r in convs] == [3, 5, 5, 9, 13, 21, 21, 29, 29, 37, 45, 45, 53]
    assert [r["dilation"] for r in convs] == [1, 1, 1, 2, 2, 4, 1, 4, 1, 4, 4, 1, 4]
    assert [r["output_size"][0] for r in convs] == [30, 28, 28, 24, 20] + [12] * 8


def test_dropout_argument_reaches_the_layers():
    for name in ("seed001-dilated", "seed003-net6", "seed002", "seed004", "seed000-m3"):
        model = create_model(name, dropout=0.37)
        drops = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
        assert drops == {0.37}, name


def test_unknown_argument_is_a_user_error():
    with pytest.raises(CifarlabError, match="no argument 'width_mult'"):
        create_model("seed003-net1", width_mult=2)


def test_seed002_head_is_512_128_10():
    model = create_model("seed002")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 128), (128, 10)]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 18 and all(c.kernel_size == (3, 3) for c in convs)
    assert convs[-1].out_channels == 512


def test_seed004_block_mixes_three_branches_with_gap_weights():
    torch.manual_seed(0)
    block = NthBlock(4, 6).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        a = torch.relu(block.fc(x.mean((2, 3))))
        want = sum(a[:, i].view(-1, 1, 1, 1) * torch.relu(block.convs[i](x)) for i in range(3))
        got = block(x)
    assert got.shape == (2, 6, 8, 8)
    assert torch.allclose(got, want, atol=1e-6)
    model = create_model("seed004")
    assert sum(isinstance(m, NthBlock) for m in model.modules()) == 5


def test_fast_top_whitening_from_data():
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.5, 0.3], [0.0, 0.0, 0.2]])
    images = torch.einsum("ij,njhw->nihw", mix, torch.randn(200, 3, 32, 32))  # correlated
    model = create_model("fast-top")
    assert not model.whiten.weight.requires_grad and model.whiten.bias.requires_grad
    assert not create_model("fast-top", train_whiten_bias=False).whiten.bias.requires_grad
    model.init_from_data(images)
    out = torch.nn.functional.conv2d(images, model.whiten.weight[:12])  # the 12 positive filters
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    cov = flat @ flat.T / flat.shape[1]
    assert torch.allclose(cov, torch.eye(12), atol=0.05)  # whitened: identity covariance
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])


def test_fast_top_airbench_details():
    model = create_model("fast-top")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 6 and all(not b.weight.requires_grad and b.bias.requires_grad
                                 for b in bns)  # only the BatchNorm bias trains
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)][1:]
    x = torch.randn(1, 24, 5, 5)
    first = convs[0]  # 24 -> 64: its first 24 filters pass the input through
    assert torch.allclose(torch.nn.functional.conv2d(x, first.weight[:24], padding=1), x)


def test_fast_top_average_pools_train_as_strided_convs():
    """pool="avg": the same parameters, average pools where airbench max-pools, and each
    group's first conv and its pool become one stride-2 conv for CPU training."""
    from cifarlab.layers import PooledConv2d, fuse_conv_avgpool

    maxed, avg = create_model("fast-top"), create_model("fast-top", pool="avg")
    assert sum(p.numel() for p in avg.parameters()) == sum(
        p.numel() for p in maxed.parameters())
    pools = [type(m).__name__ for m in avg.features if "Pool" in type(m).__name__]
    assert pools == ["AvgPool2d"] * 3
    avg.eval()
    x = torch.randn(2, 3, 32, 32)
    want = avg(x)
    assert len(fuse_conv_avgpool(avg)) == 3
    assert sum(isinstance(m, PooledConv2d) for m in avg.modules()) == 3
    assert torch.allclose(avg(x), want, atol=1e-5)
    with pytest.raises(ValueError, match="pool must be max or avg"):
        create_model("fast-top", pool="min")
