"""Training steps: patches cut on the device, forward, backward, optimiser.

Two shapes of the same step. `step` is the plain one (any device, DDP, torch.compile): the
optimiser and the schedule are ordinary PyTorch objects driven from Python. `GraphStep` is the
step with no host work in it, for one process on a CUDA GPU, where the small ESPCN step is all
kernel launches: the patches and their symmetries are drawn on the device, Adam is fused and
capturable with its learning rate in a device tensor, the cosine schedule is computed on the
device, the loss is summed on the device; 25 steps captured once as a CUDA graph, then replayed.
"""

from __future__ import annotations

import math
import random
import warnings

import torch
import torch.nn.functional as F


def _symmetric_grid(sym: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices [B, side, side] that turn each patch by its symmetry of the square:
    sym[0] transposes, sym[1] flips rows, sym[2] flips columns (8 symmetries in all). The same
    bits on the LR grid and the HR grid keep every LR pixel over its HR block."""
    r = torch.arange(side, device=sym.device)
    rows, cols = r[:, None].expand(side, side), r[None, :].expand(side, side)
    rows, cols = torch.where(sym[0], cols, rows), torch.where(sym[0], rows, cols)
    return torch.where(sym[1], side - 1 - rows, rows), torch.where(sym[2], side - 1 - cols, cols)


def sample_patches(
    lr,
    hr,
    batch: int,
    size: int,
    scale: int,
    gen: torch.Generator,
    aug: random.Random | None = None,
):
    """A batch of aligned (LR size x size, HR size*s x size*s) float patches in [0, 1], from
    uint8 `lr` [N, V, h, w] (V degraded copies of each image) and `hr` [N, 1, h*s, w*s].

    With `aug`, one flip/rotation for the whole batch, chosen on the host (the plain step's
    stream); without, one per patch, drawn on the device from `gen` (no host work: capturable)."""
    n, variants, h, w = lr.shape
    dev = lr.device
    i = torch.randint(n, (batch, 1, 1), generator=gen, device=dev)
    y = torch.randint(h - size + 1, (batch, 1, 1), generator=gen, device=dev)
    x = torch.randint(w - size + 1, (batch, 1, 1), generator=gen, device=dev)
    # which degraded copy of the image (train.degradation: real); clean data has one, draws none
    v = torch.randint(variants, (batch, 1, 1), generator=gen, device=dev) if variants > 1 else 0
    if aug is None:
        sym = torch.randint(2, (3, batch, 1, 1), generator=gen, device=dev).bool()
        (rl, cl), (rh, ch) = _symmetric_grid(sym, size), _symmetric_grid(sym, size * scale)
        lr_p, hr_p = lr[i, v, y + rl, x + cl], hr[i, 0, y * scale + rh, x * scale + ch]
    else:
        r, R = torch.arange(size, device=dev), torch.arange(size * scale, device=dev)
        lr_p = lr[i, v, y + r[:, None], x + r]
        hr_p = hr[i, 0, y * scale + R[:, None], x * scale + R]
        k, flip = aug.randrange(4), aug.random() < 0.5  # one of the 8 symmetries of the square
        lr_p, hr_p = torch.rot90(lr_p, k, (1, 2)), torch.rot90(hr_p, k, (1, 2))
        if flip:
            lr_p, hr_p = lr_p.flip(2), hr_p.flip(2)

    def to_float(t):
        return t[:, None].float().div_(255).contiguous(memory_format=torch.channels_last)

    return to_float(lr_p), to_float(hr_p)


def step(
    net, opt, scaler, amp: torch.dtype | None, lr_p: torch.Tensor, hr_p: torch.Tensor
) -> torch.Tensor:
    """One optimiser step on MSE, under autocast when `amp` is set; the loss (not synced)."""
    with torch.autocast(lr_p.device.type, dtype=amp, enabled=amp is not None):
        loss = F.mse_loss(net(lr_p).float(), hr_p)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss.detach()


def cosine(lr: float, lr_final: float, t, total: int):
    """The learning rate after `t` of `total` steps: CosineAnnealingLR's, in closed form."""
    return lr_final + 0.5 * (lr - lr_final) * (1 + torch.cos(math.pi * t / total))


class GraphStep:
    """The training step as device work only (see the module's docstring). It also stands in for
    the learning-rate scheduler (state_dict, load_state_dict, get_last_lr), so that checkpoints
    keep its step count.

    `run(n)` takes n steps: on a GPU the first call warms up on a side stream (real steps), records
    UNROLL steps as one CUDA graph and replays it (a remainder of fewer steps runs eagerly); on a
    CPU (tests) it runs the same step eagerly."""

    WARMUP = 3  # eager steps before capture: cuDNN/cuBLAS pick their kernels, Adam makes its state
    # steps per graph: with one a step, Python (and the GIL, which the MLflow thread holds while the
    # first epoch trains) stands between every two steps; the buffers of a step are reused by the
    # next within the graph, so 25 cost the memory of one
    UNROLL = 25

    def __init__(self, net, data: dict, batch: int, size: int, scale: int, gen, amp, cfg, total):
        dev = data["lr"].device
        self.net, self.data, self.gen, self.amp = net, data, gen, amp
        self.shape = (batch, size, scale)
        self.lr0, self.lr_final, self.total = cfg.lr, cfg.lr_final, total
        self.lr = torch.tensor(cfg.lr, device=dev)
        self.opt = torch.optim.Adam(net.parameters(), lr=self.lr, fused=True, capturable=True)
        self.opt.param_groups[0]["lr"] = self.lr  # the very tensor the schedule writes
        self.t = torch.zeros((), device=dev)  # steps taken: the schedule's clock
        self.loss_sum = torch.zeros((), device=dev)
        self.graph = None

    def _step(self) -> None:
        batch, size, scale = self.shape
        lr_p, hr_p = sample_patches(self.data["lr"], self.data["hr"], batch, size, scale, self.gen)
        self.lr.copy_(cosine(self.lr0, self.lr_final, self.t, self.total))
        # the autocast cache would hold casts made during capture: off
        amp = self.amp
        with torch.autocast(
            lr_p.device.type, dtype=amp, enabled=amp is not None, cache_enabled=False
        ):
            loss = F.mse_loss(self.net(lr_p).float(), hr_p)
        self.opt.zero_grad(set_to_none=False)  # gradients stay where the graph reads them
        loss.backward()
        self.opt.step()
        self.loss_sum += loss.detach()
        self.t += 1

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with warnings.catch_warnings():  # needed before torch 2.14, a no-op that warns since
            warnings.simplefilter("ignore")
            self.graph.register_generator_state(self.gen)
        with torch.cuda.graph(self.graph):
            for _ in range(self.UNROLL):
                self._step()

    def run(self, steps: int) -> torch.Tensor:
        """Take `steps` steps; the sum of their losses, on the device."""
        self.loss_sum.zero_()
        if self.graph is None and self.lr.is_cuda and steps >= self.WARMUP + self.UNROLL:
            self._capture()  # the warm-up steps are real ones; the capture itself computes nothing
            steps -= self.WARMUP
        replays, rest = divmod(steps, self.UNROLL) if self.graph else (0, steps)
        for _ in range(replays):
            self.graph.replay()
        for _ in range(rest):
            self._step()
        return self.loss_sum.clone()

    # the scheduler's side of a checkpoint
    def state_dict(self) -> dict:
        return {"t": self.t.clone()}

    def load_state_dict(self, state: dict) -> None:
        """After the optimiser's own load_state_dict, which replaces its learning rate."""
        self.t.copy_(state["t"])
        self.opt.param_groups[0]["lr"] = self.lr

    def get_last_lr(self) -> list[float]:
        return [float(cosine(self.lr0, self.lr_final, self.t, self.total))]
