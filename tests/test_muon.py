"""The Muon optimizer (cifarlab.optim): Newton-Schulz, the param split, SGD parity, resuming."""

import io

import pytest
import torch
from torch import nn

from cifarlab.models import create_model
from cifarlab.optim import Muon, muon_param_groups, muon_scale, newton_schulz

# After five quintic steps from a matrix of Frobenius norm 1 every singular value that started
# above ~1% of the norm ends in about [0.68, 1.2] (bf16 rounding widens it a little).
BAND = (0.6, 1.25)


@pytest.mark.parametrize("shape", [(64, 216), (256, 576), (300, 40), (3, 64, 72)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_newton_schulz_is_nearly_orthogonal(shape, dtype):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    o = newton_schulz(g, steps=5, dtype=dtype)
    assert o.shape == g.shape and o.dtype == dtype
    s = torch.linalg.svdvals(o.float())
    assert s.min() > BAND[0] and s.max() < BAND[1], (s.min(), s.max())
    # the same singular vectors as g: o ≈ U·S'·Vᵀ, so Uᵀ·o·V is (nearly) diagonal
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    core = u.mT @ o.float() @ vh.mT
    off = core - torch.diag_embed(torch.diagonal(core, dim1=-2, dim2=-1))
    assert off.norm() < 0.05 * core.norm()


def test_newton_schulz_scale_free_and_zero():
    g = torch.randn(32, 48, generator=torch.Generator().manual_seed(1))
    a = newton_schulz(g, dtype=torch.float32)
    assert torch.allclose(a, newton_schulz(g * 1e4, dtype=torch.float32), atol=1e-5)
    assert torch.count_nonzero(newton_schulz(torch.zeros(8, 9))) == 0  # no NaN from 0/0
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.zeros(5))


def fast_top():
    torch.manual_seed(0)
    return create_model("fast-top")


def test_param_split_on_fast_top():
    model = fast_top()
    groups = muon_param_groups(model, lr=0.1, muon_lr=0.02, momentum=0.85, weight_decay=5e-4)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"muon", "sgd"}
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for p in by_name["muon"]["params"]]
    sgd = [names[id(p)] for p in by_name["sgd"]["params"]]
    # every trainable 3x3 conv; not the frozen whitening filters
    assert len(muon) == 6 and all(n.endswith(".weight") for n in muon)
    assert "whiten.weight" not in muon + sgd and "features.0.weight" not in muon + sgd
    assert "head.2.weight" in sgd and "whiten.bias" in sgd  # the linear head, biases: SGD
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(muon + sgd) == sorted(trainable)  # each trainable parameter exactly once
    assert by_name["muon"]["use_muon"] and not by_name["sgd"]["use_muon"]
    assert by_name["muon"]["lr"] == 0.02 and by_name["sgd"]["lr"] == 0.1
    assert by_name["muon"]["weight_decay"] == 0.0 and by_name["sgd"]["weight_decay"] == 5e-4

    groups = muon_param_groups(model, lr=0.1, muon_lr=0.02, momentum=0.85, weight_decay=5e-4,
                               muon_momentum=0.6, norm_bias_lr_scale=64.0, normalize=True)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"muon", "sgd", "norm_bias"}
    assert by_name["muon"]["momentum"] == 0.6 and by_name["muon"]["normalize"]
    assert by_name["sgd"]["momentum"] == 0.85 and not by_name["sgd"]["normalize"]
    nb = by_name["norm_bias"]
    assert nb["lr"] == pytest.approx(6.4) and nb["weight_decay"] == pytest.approx(5e-4 / 64)
    assert len(nb["params"]) == 6  # the BatchNorm biases (their scales are frozen)
    Muon(groups)  # a valid optimizer


def test_sgd_groups_match_torch_sgd():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))
    b = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))
    b.load_state_dict(a.state_dict())
    ours = Muon(a.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3,
                use_muon=False)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=1e-3, foreach=False)
    x, y = torch.randn(16, 7), torch.randint(0, 3, (16,))
    for _ in range(5):
        for net, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_muon_update_is_orthogonalised():
    conv = nn.Conv2d(16, 32, 3, bias=False).to(memory_format=torch.channels_last)
    w0 = conv.weight.detach().clone()
    conv.weight.grad = torch.randn_like(conv.weight)
    lr = 0.05
    Muon([conv.weight], lr=lr, momentum=0.0).step()
    delta = (conv.weight.detach() - w0) / -lr
    assert delta.shape == (32, 16, 3, 3)
    expected = newton_schulz(conv.weight.grad.reshape(32, -1)).float().view(32, 16, 3, 3)
    assert torch.allclose(delta, expected, atol=1e-4)
    s = torch.linalg.svdvals(delta.reshape(32, -1))
    assert s.min() > BAND[0] and s.max() < BAND[1]
    # a tall matrix (more rows than columns) is scaled up: RMS as if square
    lin = nn.Linear(4, 64, bias=False)
    w0 = lin.weight.detach().clone()
    lin.weight.grad = torch.randn_like(lin.weight)
    Muon([lin.weight], lr=lr, momentum=0.0).step()
    s = torch.linalg.svdvals((lin.weight.detach() - w0) / -lr)
    assert muon_scale(64, 4) == 4.0
    assert s.min() > 4 * BAND[0] and s.max() < 4 * BAND[1]


def test_muon_weight_decay_and_normalize():
    w = nn.Parameter(torch.randn(8, 4, 3, 3))
    w.grad = torch.zeros_like(w)  # a zero gradient gives a zero update: only the decay acts
    w0 = w.detach().clone()
    Muon([w], lr=0.5, momentum=0.0, weight_decay=0.1).step()
    assert torch.allclose(w.detach(), w0 * (1 - 0.5 * 0.1))
    Muon([w], lr=0.5, momentum=0.0, normalize=True).step()
    assert w.detach().norm().item() == pytest.approx(8 ** 0.5, rel=1e-5)


def test_invalid_groups_refused():
    with pytest.raises(ValueError, match="ndim >= 2"):
        Muon([nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="ns_dtype"):
        Muon([nn.Parameter(torch.zeros(3, 3))], ns_dtype="fp16")
    with pytest.raises(ValueError, match="momentum"):
        Muon([nn.Parameter(torch.zeros(3, 3))], momentum=1.0)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.body(x))


def tiny_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    x += y.view(-1, 1, 1, 1).float() * 0.3  # learnable
    return x, y


def make(seed=0, lr=0.05, muon_lr=0.05, **kw):
    torch.manual_seed(seed)
    model = Tiny()
    opt = Muon(muon_param_groups(model, lr=lr, muon_lr=muon_lr, momentum=0.9,
                                 weight_decay=5e-4, **kw))
    return model, opt


def train_steps(model, opt, n, sched=None, data=None):
    x, y = data or tiny_problem()
    losses = []
    for _ in range(n):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kw", [{}, {"normalize": True, "ns_steps": 3, "ns_dtype": "fp32"}])
def test_loss_goes_down(kw):
    model, opt = make(**kw)
    losses = train_steps(model, opt, 40)
    assert losses[-1] < 0.5 * losses[0], losses[::8]


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # as the engine's checkpoints are read


def one_cycle(opt, total=30):
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total, pct_start=0.25,
        cycle_momentum=True)


def test_state_dict_resume_is_bit_identical():
    model, opt = make(norm_bias_lr_scale=4.0)
    sched = one_cycle(opt)
    train_steps(model, opt, 7, sched)
    ckpt = roundtrip({"model": model.state_dict(), "opt": opt.state_dict(),
                      "sched": sched.state_dict()})
    assert [g["use_muon"] for g in ckpt["opt"]["param_groups"]] == [False, False, True]
    straight = train_steps(model, opt, 8, sched)

    model2, opt2 = make(seed=123, norm_bias_lr_scale=4.0)  # other initial weights
    sched2 = one_cycle(opt2)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    resumed = train_steps(model2, opt2, 8, sched2)
    assert resumed == straight
    for p, q in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(p, q)


def test_one_cycle_sets_lr_and_cycles_momentum():
    model, opt = make(lr=0.05, muon_lr=0.02)
    sched = one_cycle(opt, total=20)
    lrs, moms = [], []
    for _ in range(19):
        train_steps(model, opt, 1, sched)
        lrs.append([g["lr"] for g in opt.param_groups])
        moms.append([g["momentum"] for g in opt.param_groups])
    assert all(len(m) == 2 for m in moms)
    peak = max(range(19), key=lambda i: lrs[i][1])
    assert lrs[peak] == pytest.approx([0.05, 0.02], rel=0.05)  # each group's own max_lr
    assert min(m[0] for m in moms) == pytest.approx(0.85, abs=0.01)  # momentum falls ...
    assert moms[-1][0] > 0.94  # ... and rises again as the lr anneals
    assert all(m[0] == m[1] for m in moms)  # both groups are cycled


def test_engine_trains_with_muon(shared_cifar_dir, tmp_path):
    """A short real training through the engine (`optim.name = "muon"`), resumed once."""
    import cifarlab
    from cifarlab.rundir import load_checkpoint

    m = cifarlab.train("fast-50k", data_dir=shared_cifar_dir, runs_dir=tmp_path, progress=False,
                       plots=False, log=lambda s: None,
                       **{"optim.name": "muon", "epochs": 3, "batch_size": 50, "procs": 1})
    assert m["epochs"] == 3 and m["test_acc"] > 0.3  # 10 colour-coded classes: chance is 0.1
    ckpt = load_checkpoint(tmp_path / "fast-50k" / "last.pt")
    assert [g["use_muon"] for g in ckpt["optimizer"]["param_groups"]] == [False, True]
