"""The `family` network: every block and downsampling kind builds, traces and trains a step;
the shipped hand-written designs are expressed exactly; bad arguments fail in one line."""

from __future__ import annotations

import json

import pytest
import torch

import cifarlab.models.family as fam  # registers "family" (until models/__init__ imports it)
from cifarlab.analysis import check_constraints, describe
from cifarlab.errors import CifarlabError
from cifarlab.layers import for_cpu_training
from cifarlab.models import create_model

HAND = {
    "fast-50k": dict(stem=16, widths=[32, 32, 48, 48], depths=[1, 1, 1, 1],
                     downsample=["none", "maxpool", "none", "maxpool"]),
    "fast-seed001": dict(stem=32, widths=[64, 128, 128], depths=[2, 1, 3],
                         blocks=["plain", "plain", "dwsep"],
                         downsample=["stride", "stride", "none"], dilation=[1, 1, [1, 2, 1]]),
    "seed000-m3": dict(stem=16, widths=[32, 48, 64, 64], depths=[1, 1, 1, 0],
                       downsample=["none", "avgpool", "avgpool", "maxpool"], head_dropout=0.1),
    "seed000-m1": dict(stem=32, widths=[48, 48], depths=[1, 0], downsample=["maxpool", "maxpool"],
                       head="fc", head_dropout=0.1),
}


@pytest.mark.parametrize("name", list(HAND))
def test_expresses_hand_written_designs_exactly(name):
    ref = describe(create_model(name))
    got = describe(create_model("family", **HAND[name]))
    assert got == ref


def test_args_are_plain_json():
    args = HAND["fast-seed001"]
    assert json.loads(json.dumps(args)) == args
    m = create_model("family", **json.loads(json.dumps(args)))
    assert describe(m)["receptive_field"] == 45


@pytest.mark.parametrize("block", fam.BLOCKS)
@pytest.mark.parametrize("down", fam.DOWNSAMPLES)
def test_every_block_and_downsampling_trains_a_step(block, down):
    m = create_model("family", stem=8, widths=[8, 12], depths=[1, 2], blocks=block,
                     downsample=["stride", down] if down != "stride" else "stride",
                     dilation=[1, 2], dropout=0.1, head_dropout=0.1)
    x = torch.randn(4, 3, 32, 32)
    out = m(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    f = describe(m)
    assert f["params"] > 0 and f["macs"] > 0


def test_rules_see_the_blocks():
    dw = create_model("family", stem=8, widths=[16], depths=[1], blocks="dwsep",
                      downsample="none", dilation=2)
    assert check_constraints(dw, require=["depthwise_separable", "dilated", "gap"]) == []
    branch = create_model("family", stem=8, widths=[16], depths=[1], blocks="branch",
                          downsample="none")
    assert check_constraints(branch, require=["dilated"]) == []  # its far branch is dilated
    pooled = create_model("family", stem=8, widths=[16, 16], depths=[1, 1],
                          downsample=["maxpool", "avgpool"])
    assert any("maxpool" in m for m in check_constraints(pooled, forbid=["maxpool"]))
    fc = create_model("family", stem=8, widths=[16], depths=[1], head="fc", downsample="stride")
    assert check_constraints(fc, require=["gap"])  # no GAP: a flatten head


def test_dilation_downsampling_keeps_resolution_and_grows_rf():
    strided = describe(create_model("family", stem=8, widths=[8, 8], depths=[1, 1],
                                    downsample=["stride", "stride"]))
    dilated = describe(create_model("family", stem=8, widths=[8, 8], depths=[1, 1],
                                    downsample=["dilation", "dilation"]))
    assert dilated["receptive_field"] == strided["receptive_field"]
    assert dilated["macs"] > 3 * strided["macs"]  # the maps stay 32x32


@pytest.mark.parametrize("args, words", [
    (dict(depths=[1, 1], widths=[8]), "2 stages"),
    (dict(depths=[1], widths=[8], blocks="conv5"), "blocks[0] 'conv5'"),
    (dict(depths=[1], widths=[8], blocks=["plain"], downsample="pool"), "downsample"),
    (dict(depths=[0], widths=[8], downsample="stride"), "no block"),
    (dict(depths=[2], widths=[[8, 8, 8]]), "3 entries for 2 blocks"),
    (dict(depths=[1], widths=[0]), "widths[0]"),
    (dict(depths=[1], widths=[8], head="mlp"), "head"),
    (dict(depths=[1], widths=[8], dropout=1.0), "dropout"),
    (dict(depths=[1] * 6, widths=[8] * 6, downsample="maxpool"), "downsamples a 1x1 map"),
    (dict(depths=[], widths=[]), "non-empty"),
])
def test_bad_arguments_fail_in_one_line(args, words):
    with pytest.raises(CifarlabError) as e:
        create_model("family", **args)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_describe_design_is_short():
    s = fam.describe_design(HAND["fast-seed001"])
    assert s == "stem 32 | /s 2x plain 64 | /s 1x plain 128 | 3x dwsep 128 d2 | gap"
    assert fam.describe_design({"depths": [1], "widths": [8], "blocks": "nope"}).startswith(
        "invalid design")


@pytest.mark.parametrize("block, widths", [("plain", [24, 32]), ("dwsep", [128, 128])])
def test_dilated_convs_get_right_gradients_under_bf16_channels_last(block, widths):
    """torch 2.13's CPU bf16 dilated convs can give wrong or NaN weight gradients on
    channels_last 32x32 maps (seen: 24 -> 32 channels, dilation 2; a depthwise 128-channel conv,
    dilation 2); the layer swaps the engine trains with (probe, fp32 depthwise) keep them
    right."""
    import torch.nn.functional as F

    args = dict(stem=widths[0], widths=[widths[1]], depths=[1], blocks=block,
                downsample="none", dilation=2)
    torch.manual_seed(0)
    ref = create_model("family", **args)
    fast = create_model("family", **args).to(memory_format=torch.channels_last)
    fast.load_state_dict(ref.state_dict())
    for_cpu_training(fast, bf16_sizes=(32,))
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    F.cross_entropy(ref(x), y).backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x.contiguous(memory_format=torch.channels_last))
    F.cross_entropy(out.float(), y).backward()
    for (name, a), b in zip(ref.named_parameters(), fast.parameters(), strict=True):
        assert torch.isfinite(b.grad).all(), name
        if a.dim() == 4:  # conv weights (bf16 rounding alone: under 10% here)
            err = ((a.grad - b.grad).norm() / a.grad.norm()).item()
            assert err < 0.2, (name, err)
