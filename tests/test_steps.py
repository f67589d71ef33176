"""The training step in its two shapes: the plain one and the CUDA-graph-ready one (run eagerly
here on the CPU; bench/gpu_check.py runs the captured graph against it on a GPU)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from srctl import model as M
from srctl import params as P
from srctl.prepare import load_split
from srctl.steps import GraphStep, cosine, sample_patches, step


def test_device_drawn_symmetries_keep_patches_over_their_hr_blocks(prepared_dir):
    data, _ = load_split(prepared_dir, "train")
    gen = torch.Generator().manual_seed(3)
    a, b = sample_patches(data["lr"], data["hr"], 64, 7, 3, gen)  # no host stream: per-patch turns
    assert a.shape == (64, 1, 7, 7) and b.shape == (64, 1, 21, 21)
    # each LR pixel is (nearly) the mean of its 3x3 HR block, whichever way the patch was turned
    assert (F.avg_pool2d(b, 3) - a).abs().mean() < 0.02
    # and the patches were turned: the same draw without turning differs from it
    i = torch.Generator().manual_seed(3)
    plain, _ = sample_patches(data["lr"], data["hr"], 64, 7, 3, i, aug=_NoTurn())
    assert not torch.equal(a, plain)
    turned_like = [
        any(torch.equal(a[k, 0], t) for t in _symmetries(plain[k, 0])) for k in range(64)
    ]
    assert all(turned_like)


@pytest.mark.parametrize("host_turns", [False, True])
def test_patches_come_from_every_degraded_copy_of_an_image(host_turns):
    """train.degradation: real gives each image V LR copies: a patch is cut from one of them, at
    random, over the clean HR block (variant v is filled with v here)."""
    lr = torch.arange(4, dtype=torch.uint8)[None, :, None, None].expand(2, 4, 20, 20).contiguous()
    hr = torch.zeros(2, 1, 60, 60, dtype=torch.uint8)
    gen, aug = torch.Generator().manual_seed(0), _NoTurn() if host_turns else None
    a, b = sample_patches(lr, hr, 64, 5, 3, gen, aug)
    values = (a * 255).round().flatten(1)
    assert (values == values[:, :1]).all()  # one copy per patch
    assert set(values[:, 0].tolist()) == {0.0, 1.0, 2.0, 3.0} and b.shape == (64, 1, 15, 15)


class _NoTurn:
    """A host stream that always picks the identity (rotation 0, no flip)."""

    def randrange(self, n):
        return 0

    def random(self):
        return 1.0


def _symmetries(p):
    rots = [torch.rot90(p, k) for k in range(4)]
    return rots + [r.flip(1) for r in rots]


def test_the_graph_ready_step_computes_what_the_plain_step_computes(prepared_dir):
    """Same seed, same patches: fused capturable Adam with a device learning rate and the cosine
    computed on the device give the weights of torch's Adam + CosineAnnealingLR."""
    data, _ = load_split(prepared_dir, "train")
    cfg = P.Train(lr=2e-3, lr_final=1e-5)
    torch.manual_seed(0)
    plain_net = M.ESPCN(3)
    graph_net = copy.deepcopy(plain_net)
    total = 12

    opt = torch.optim.Adam(plain_net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=cfg.lr_final)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    gen = torch.Generator().manual_seed(7)
    plain_loss = torch.zeros(())
    for _ in range(total):
        lr_p, hr_p = sample_patches(data["lr"], data["hr"], 8, 17, 3, gen)
        plain_loss += step(plain_net, opt, scaler, None, lr_p, hr_p)
        sched.step()

    graph = GraphStep(graph_net, data, 8, 17, 3, torch.Generator().manual_seed(7), None, cfg, total)
    graph_loss = graph.run(5) + graph.run(total - 5)  # across an epoch boundary

    assert torch.allclose(graph_loss, plain_loss, rtol=1e-5)
    for (name, a), b in zip(
        plain_net.state_dict().items(), graph_net.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name
    assert graph.get_last_lr()[0] == pytest.approx(sched.get_last_lr()[0], rel=1e-6)


def test_a_graph_step_resumes_from_its_checkpoint_state(prepared_dir):
    data, _ = load_split(prepared_dir, "train")
    cfg = P.Train()
    a = GraphStep(M.ESPCN(3), data, 8, 17, 3, torch.Generator().manual_seed(1), None, cfg, 100)
    a.run(10)
    b = GraphStep(M.ESPCN(3), data, 8, 17, 3, torch.Generator().manual_seed(1), None, cfg, 100)
    b.opt.load_state_dict(a.opt.state_dict())
    b.load_state_dict(a.state_dict())
    assert b.opt.param_groups[0]["lr"] is b.lr  # the schedule still writes the optimiser's rate
    assert (
        b.get_last_lr()
        == a.get_last_lr()
        == [float(cosine(cfg.lr, cfg.lr_final, torch.tensor(10.0), 100))]
    )
