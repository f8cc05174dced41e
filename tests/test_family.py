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
    "air-seed001": dict(stem="whiten", style="air", widths=[48, 96, 128, 128],
                        depths=[2, 2, 1, 1], blocks=["plain", "plain", "dwsep", "dwsep"],
                        downsample=["avgpool", "avgpool", "avgpool", "none"],
                        dilation=[1, 1, 2, 1]),
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


@pytest.mark.parametrize("style", fam.STYLES)
@pytest.mark.parametrize("block", fam.BLOCKS)
@pytest.mark.parametrize("down", fam.DOWNSAMPLES)
def test_every_block_and_downsampling_trains_a_step(block, down, style):
    m = create_model("family", stem=8, widths=[8, 12], depths=[1, 2], blocks=block,
                     downsample=["stride", down] if down != "stride" else "stride",
                     dilation=[1, 2], dropout=0.1, head_dropout=0.1, style=style)
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
    (dict(depths=[1], widths=[8], stem="whitey"), "stem must be an integer in [0, 2048] or "
                                                  "'whiten', got 'whitey'"),
    (dict(depths=[1], widths=[8], style="modern"), "style 'modern' is not one of classic, air"),
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
    assert fam.describe_design(HAND["air-seed001"]) == (
        "air | stem whiten | /a 2x plain 48 | /a 2x plain 96 | /a 1x dwsep 128 d2 | "
        "1x dwsep 128 | gap")


def _kinds(m) -> list[str]:
    return [type(x).__name__ for x in m.features]


def test_air_style_pools_before_batchnorm_and_trains_only_bn_biases():
    """Style air: a plain / dwsep / pointwise stage's pool comes after its first conv (before
    that conv's BatchNorm), a residual or branch stage's before the block; one BatchNorm per
    depthwise-separable conv; BatchNorm scales frozen; 3x3 convs start as identities; the
    linear layer has no bias and the output is divided by 9."""
    args = dict(stem=8, widths=[8, 16, 16], depths=[1, 1, 1],
                blocks=["plain", "dwsep", "residual"], downsample="avgpool", style="air")
    m = create_model("family", **args)
    assert _kinds(m) == [
        "Conv2d", "BatchNorm2d", "ReLU",  # stem
        "Conv2d", "AvgPool2d", "BatchNorm2d", "ReLU",  # plain
        "Conv2d", "Conv2d", "AvgPool2d", "BatchNorm2d", "ReLU",  # dwsep: dw, pw, pool
        "AvgPool2d", "Residual"]
    classic = create_model("family", **{**args, "style": "classic"})
    assert _kinds(classic)[3:7] == ["AvgPool2d", "Conv2d", "BatchNorm2d", "ReLU"]
    bns = [x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    assert bns and all(not b.weight.requires_grad and b.bias.requires_grad for b in bns)
    first = m.features[3].weight  # 8 -> 8 plain 3x3: an identity at the start
    assert torch.equal(first, torch.nn.init.dirac_(torch.empty_like(first)))
    assert m.head[-1].bias is None and classic.head[-1].bias is not None
    x = torch.randn(2, 3, 32, 32)
    m.eval()
    assert torch.allclose(m(x), m.head(m.features(x)) / 9)
    # fewer parameters in air: one BatchNorm fewer per dwsep, no linear bias
    assert describe(m)["params"] < describe(classic)["params"]


@pytest.mark.parametrize("head", fam.HEADS)
def test_whitening_stem_sees_31_px_and_is_set_from_data(head):
    m = create_model("family", stem="whiten", widths=[16, 16], depths=[1, 1],
                     downsample=["avgpool", "stride"], head=head)
    assert fam.plan(stem="whiten", widths=[16, 16], depths=[1, 1],
                    downsample=["avgpool", "stride"])["resolution"] == 8  # 31 -> 15 -> 8
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert not m.whiten.weight.requires_grad and m.whiten.bias.requires_grad
    m.init_from_data(torch.randn(64, 3, 32, 32))
    assert m.whiten.weight.abs().sum() > 0
    w = m.whiten.weight.flatten(1)  # the 12 filters and their negatives
    assert torch.allclose(w[:12], -w[12:])
    plain = create_model("family", stem=8, widths=[8], depths=[1])
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    plain.init_from_data(torch.randn(8, 3, 32, 32))  # nothing to set
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())


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
