"""Architecture analysis: layer table, params, MACs, receptive field, constraint checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.analysis import (
    check_constraints,
    count_params,
    format_rf_table,
    format_summary,
    layer_table,
    macs,
    receptive_field,
    receptive_field_table,
)
from cifarlab.errors import CifarlabError
from cifarlab.models import REGISTRY, create_model


@pytest.fixture(scope="module")
def seed001():
    return create_model("seed001")


@pytest.fixture(scope="module")
def net1():
    return create_model("seed003-net1")


class TwoBranch(nn.Module):
    """x -> (3x3 conv | 3x3 conv with dilation 3) summed -> 3x3 conv -> GAP -> FC."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=3, dilation=3)
        self.c = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        y = self.a(x) + self.b(x)
        return self.fc(self.c(y).mean((2, 3)))


def dw_net(between: list[nn.Module], k_after: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                         *between, nn.Conv2d(8, 10, k_after, padding=k_after // 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


# --- receptive field ----------------------------------------------------------------------

def test_seed001_conv_rf_sequence_matches_the_seed_table(seed001):
    rows = receptive_field_table(seed001)
    convs = [r for r in rows if r["kind"] == "conv"]
    assert [r["rf"] for r in convs] == [3, 5, 5, 9, 13, 13, 21, 29, 29, 37, 45, 61]
    assert [r["jump"] for r in convs][-1] == 4
    dw = convs[4]
    assert (dw["groups"], dw["stride"], dw["input_size"], dw["output_size"]) == \
        (32, 2, (16, 16), (8, 8))
    last = convs[-1]
    assert (last["dilation"], last["output_size"]) == (2, (6, 6))
    assert rows[-2]["type"] == "AdaptiveAvgPool2d" and rows[-1]["type"] == "Linear"
    assert receptive_field(seed001) == 61


def test_tutorial_net_rf_by_hand(net1):
    # conv5 -> 5, pool2 -> 6 (jump 2), conv5 -> 6 + 4*2 = 14, pool2 -> 16 (jump 4)
    rows = receptive_field_table(net1)
    assert [(r["type"], r["rf"], r["jump"]) for r in rows[:4]] == [
        ("Conv2d", 5, 1), ("MaxPool2d", 6, 2), ("Conv2d", 14, 2), ("MaxPool2d", 16, 4)]
    assert receptive_field(net1) == 16


def test_parallel_branches_take_the_max_not_the_chain():
    # branch a: RF 3; branch b: k_eff = 3*(3-1)+1 = 7 -> RF 7; sum -> 7; conv c -> 9.
    # (Chaining b after a would wrongly give 3 + 6 = 9 before c and 11 after it.)
    rows = receptive_field_table(TwoBranch())
    assert [r["rf"] for r in rows if r["kind"] == "conv"] == [3, 7, 9]
    assert receptive_field(TwoBranch()) == 9


def test_seed004_branchy_blocks_rf_by_hand():
    # Per block: three parallel 3x3 branches (+2*jump, the max over the branches), then a
    # 2x2 max pool (+1*jump, jump doubles): 3,4 | 8,10 | 18,22 | 38,46 | 78,94.
    model = create_model("seed004")
    rows = receptive_field_table(model)
    convs = [r["rf"] for r in rows if r["kind"] == "conv"]
    assert convs == [3] * 3 + [8] * 3 + [18] * 3 + [38] * 3 + [78] * 3
    assert [r["rf"] for r in rows if r["kind"] == "maxpool"] == [4, 10, 22, 46, 94]
    assert receptive_field(model) == 94


def test_global_pool_and_fc_keep_the_rf(seed001):
    rows = receptive_field_table(seed001)
    assert rows[-1]["rf"] == rows[-2]["rf"] == 61


# --- layer table, params, MACs ------------------------------------------------------------

def test_layer_table_is_torchsummary_like(seed001):
    rows = layer_table(seed001)
    assert rows[0] == {"name": "Conv2d-1", "module": "features.0", "type": "Conv2d",
                       "output_shape": (32, 32, 32), "params": 864, "macs": 32 * 32 * 32 * 27}
    assert [r["name"] for r in rows[:4]] == ["Conv2d-1", "BatchNorm2d-2", "ReLU-3", "Dropout-4"]
    assert rows[4]["output_shape"] == (64, 16, 16)
    assert rows[-2]["name"] == "AdaptiveAvgPool2d-46" and rows[-2]["output_shape"] == (32, 1, 1)
    assert rows[-1]["name"] == "Linear-47" and rows[-1]["output_shape"] == (10,)
    assert sum(r["params"] for r in rows) == 92_394


def test_reused_module_gets_a_row_per_call_and_params_once(net1):
    rows = layer_table(net1)
    pools = [r for r in rows if r["type"] == "MaxPool2d"]
    assert [r["name"] for r in pools] == ["MaxPool2d-3", "MaxPool2d-6"]
    assert {r["module"] for r in pools} == {"pool"}
    assert sum(r["params"] for r in rows) == 62_006


def test_count_params_total_and_trainable(seed001):
    assert count_params(seed001) == (92_394, 92_394)
    model = create_model("seed003-net1")
    model.fc3.requires_grad_(False)
    assert count_params(model) == (62_006, 62_006 - 850)


def test_macs_by_hand(net1, seed001):
    conv1 = 28 * 28 * 6 * (3 * 5 * 5)
    conv2 = 10 * 10 * 16 * (6 * 5 * 5)
    fcs = 400 * 120 + 120 * 84 + 84 * 10
    assert macs(net1) == conv1 + conv2 + fcs == 651_720
    assert macs(seed001) > 0
    # the depthwise conv counts 9 MACs per output element (groups), the dilated one 9 * 64
    rows = {r["name"]: r for r in layer_table(seed001)}
    assert rows["Conv2d-17"]["macs"] == 32 * 8 * 8 * 9
    assert rows["Conv2d-42"]["macs"] == 32 * 6 * 6 * 9 * 64


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_analysis_works_for_every_registered_model(name):
    model = create_model(name)
    model.train()
    rows = layer_table(model)
    assert rows and all(r["name"].endswith(f"-{i}") for i, r in enumerate(rows, 1))
    assert sum(r["params"] for r in rows) == count_params(model)[0]
    assert macs(model) > 0
    assert receptive_field(model) >= 3
    assert model.training  # the trace restores the mode


def test_functional_ops_in_forward_are_traced():
    class Fn(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.c(x)), 2)
            return self.fc(x.mean((2, 3)))

    model = Fn()
    rows = receptive_field_table(model)
    assert [(r["name"], r["rf"]) for r in rows] == [
        ("Conv2d-1", 3), ("F.max_pool2d-1", 4), ("F.mean-2", 4), ("Linear-2", 4)]
    assert check_constraints(model, require=("gap", "maxpool")) == []
    assert check_constraints(model, forbid=("maxpool",)) == [
        "forbid maxpool: F.max_pool2d-1 is a max pool"]


# --- text output --------------------------------------------------------------------------

def test_format_summary(seed001):
    text = format_summary(seed001)
    for part in ("Layer (type)", "Output Shape", "Param #", "Conv2d-1", "[-1, 32, 32, 32]",
                 "Total params: 92,394", "Trainable params: 92,394",
                 "Non-trainable params: 0", "Params size (MB): 0.35", "MACs:"):
        assert part in text, part


def test_format_rf_table(seed001):
    text = format_rf_table(seed001)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["Layer", "Module"] and "RF" in lines[0]
    assert len(lines) == 2 + len(receptive_field_table(seed001))
    assert "Conv2d-42" in text and text.splitlines()[-3].split()[-2] == "61"


# --- constraints ----------------------------------------------------------------------------

def test_max_params(seed001):
    assert check_constraints(seed001, max_params=92_394) == []
    (msg,) = check_constraints(seed001, max_params=50_000)
    assert msg.startswith("max_params 50000: model has 92,394")


def test_min_receptive_field(seed001, net1):
    assert check_constraints(seed001, min_receptive_field=61) == []
    assert check_constraints(seed001, min_receptive_field=62) == [
        "min_receptive_field 62: receptive field is 61"]
    assert check_constraints(net1, min_receptive_field=44) == [
        "min_receptive_field 44: receptive field is 16"]


def test_depthwise_separable(seed001, net1):
    assert check_constraints(seed001, require=("depthwise_separable",)) == []
    assert check_constraints(seed001, forbid=("depthwise_separable",)) == [
        "forbid depthwise_separable: Conv2d-17 (features.16) + Conv2d-18 (features.17) "
        "is a depthwise-separable conv"]
    assert check_constraints(net1, require=("depthwise_separable",)) == [
        "require depthwise_separable: no depthwise conv (groups == in_channels > 1) "
        "followed by a 1x1 conv"]
    # BN / ReLU between depthwise and pointwise is fine ...
    ok = dw_net([nn.BatchNorm2d(8), nn.ReLU()])
    assert check_constraints(ok, require=("depthwise_separable",)) == []
    # ... but a 3x3 after the depthwise conv is not a pointwise conv
    bad = dw_net([nn.BatchNorm2d(8)], k_after=3)
    assert check_constraints(bad, require=("depthwise_separable",)) == [
        "require depthwise_separable: Conv2d-2 (1) is depthwise but not followed by a 1x1 conv"]


def test_dilated(seed001, net1):
    assert check_constraints(seed001, require=["dilated"]) == []
    assert check_constraints(seed001, forbid=["dilated"]) == [
        "forbid dilated: Conv2d-42 (features.41) has dilation 2"]
    assert check_constraints(net1, require=["dilated"]) == [
        "require dilated: no conv with dilation > 1"]


def test_gap(seed001, net1):
    assert check_constraints(seed001, require=["gap"]) == []
    assert check_constraints(seed001, forbid=["gap"]) == [
        "forbid gap: AdaptiveAvgPool2d-46 (gap) is a global average pool"]
    assert check_constraints(net1, require=["gap"]) == ["require gap: no global average pooling"]
    # an AvgPool2d as large as its input is a GAP, not an ordinary average pool
    model = nn.Sequential(nn.Conv2d(3, 10, 3, stride=4, padding=1), nn.AvgPool2d(8),
                          nn.Flatten())
    assert check_constraints(model, require=["gap"], forbid=["avgpool"]) == []


def test_maxpool(seed001, net1):
    assert check_constraints(net1, require=["maxpool"]) == []
    assert check_constraints(net1, forbid=["maxpool"]) == [
        "forbid maxpool: MaxPool2d-3 (pool) is a max pool"]
    assert check_constraints(seed001, require=["maxpool"]) == [
        "require maxpool: no max pooling layer"]
    assert check_constraints(seed001, forbid=["maxpool"]) == []


def test_avgpool(seed001):
    m2 = create_model("seed000-m2")
    assert check_constraints(m2, require=["avgpool"]) == []
    assert check_constraints(m2, forbid=["avgpool"]) == [
        "forbid avgpool: AvgPool2d-7 (features.6) is an average pool",
        "forbid avgpool: AvgPool2d-11 (features.10) is an average pool"]
    assert check_constraints(seed001, require=["avgpool"]) == [
        "require avgpool: no (non-global) average pooling layer"]
    assert check_constraints(seed001, forbid=["avgpool"]) == []  # its GAP is not an avgpool


def test_strided_conv(seed001):
    assert check_constraints(seed001, require=["strided_conv"]) == []
    assert check_constraints(seed001, forbid=["strided_conv"]) == [
        "forbid strided_conv: Conv2d-5 (features.4) has stride 2",
        "forbid strided_conv: Conv2d-17 (features.16) has stride 2"]
    dilated = create_model("seed001-dilated")
    assert check_constraints(dilated, require=["strided_conv"]) == [
        "require strided_conv: no conv with stride > 1"]


def test_unknown_rule_raises(seed001):
    with pytest.raises(CifarlabError, match="'dilation'"):
        check_constraints(seed001, require=["dilation"])
    with pytest.raises(CifarlabError, match="'pooling'"):
        check_constraints(seed001, forbid=("pooling",))


def test_single_rule_string_is_accepted(seed001):
    assert check_constraints(seed001, require="gap") == []


def test_trace_needs_no_grad_state_change(seed001):
    before = {k: v.clone() for k, v in seed001.state_dict().items()}
    receptive_field(seed001)
    after = seed001.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
