"""On a CUDA GPU: the captured training step against the same step run eagerly, and the time a step
takes in each of the train stage's shapes, in one run.

  1. correctness: steps.GraphStep replayed from its CUDA graph vs the same GraphStep run eagerly
     (same seed, same steps): max weight difference and both losses;
  2. speed: ms per step of the plain step (eager; torch.compile'd) and of the graph, at
     params.yaml's batch and patch size, bf16 autocast where the GPU has it.

Usage (from the repo root, after `dvc repro prepare`): python bench/gpu_check.py [--steps 3000]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from srctl import model as M
from srctl import params as P
from srctl.device import autocast_dtype
from srctl.prepare import load_split
from srctl.steps import GraphStep, sample_patches, step
from srctl.train import compiled, rank_streams

ROOT = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, steps: int, device: torch.device) -> float:
    """ms per step of `fn(steps)`, after an untimed call (compiling, capturing, cuDNN's choices)."""
    fn(steps)
    sync(device)
    start = time.perf_counter()
    fn(steps)
    sync(device)
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000, help="timed steps per shape")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of this script (no graph)")
    args = ap.parse_args()
    params = P.load(ROOT / "params.yaml")
    cfg, s = params.train, params.scale
    device = torch.device(args.device)
    data, _ = load_split(ROOT / "data" / "prepared", "train", device)
    amp = autocast_dtype(device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(
        f"torch {torch.__version__} on {name}; batch {cfg.batch_size} x "
        f"{cfg.patch_size}^2 LR patches, x{s}, autocast {amp}"
    )

    torch.manual_seed(0)
    net = M.ESPCN.named(cfg.arch, s).to(device, memory_format=torch.channels_last)
    twin = copy.deepcopy(net)

    def graph_step(model):
        gen = torch.Generator(device).manual_seed(1)
        return GraphStep(model, data, cfg.batch_size, cfg.patch_size, s, gen, amp, cfg, 100_000)

    eager, captured = graph_step(net), graph_step(twin)
    n = 200
    for _ in range(n):
        eager._step()  # the very step, never captured
    captured_loss = captured.run(n)
    diff = max(
        (a - b).abs().max().item() for a, b in zip(net.parameters(), twin.parameters(), strict=True)
    )
    print(
        f"[1] {n} steps, captured vs eager: max weight difference {diff:.3g}, loss sums "
        f"{captured_loss.item():.6f} vs {eager.loss_sum.item():.6f} "
        f"({'same' if diff < 1e-3 else 'DIFFERENT'})"
    )

    def plain(fwd, opt, sched, gen, aug):
        scaler = torch.amp.GradScaler("cuda", enabled=False)

        def run(k):
            loss = torch.zeros((), device=device)
            for _ in range(k):
                lr_p, hr_p = sample_patches(
                    data["lr"], data["hr"], cfg.batch_size, cfg.patch_size, s, gen, aug
                )
                loss += step(fwd, opt, scaler, amp, lr_p, hr_p)
                sched.step()
            return loss

        return run

    rows = []
    for name, wrap in (("plain, eager", lambda m: m), ("plain, torch.compile", compiled)):
        model = M.ESPCN.named(cfg.arch, s).to(device, memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10**6, eta_min=cfg.lr_final)
        rows.append(
            (
                name,
                timed(
                    plain(wrap(model), opt, sched, *rank_streams(0, 0, device)), args.steps, device
                ),
            )
        )
    graph = graph_step(M.ESPCN.named(cfg.arch, s).to(device, memory_format=torch.channels_last))
    rows.append(("CUDA graph (the stage's default here)", timed(graph.run, args.steps, device)))
    base = rows[0][1]
    for name, ms in rows:
        total = ms * cfg.epochs * cfg.steps_per_epoch / 1e3
        print(
            f"[2] {name}: {ms:.3f} ms/step ({base / ms:.1f}x eager), "
            f"{cfg.epochs * cfg.steps_per_epoch} steps of the default: {total:.1f} s"
        )


if __name__ == "__main__":
    main()
