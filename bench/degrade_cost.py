"""What `train.degradation: real` costs: the prepare stage's time, and the training step's.

Builds the 200 BSDS300 training images' LR data both ways with prepare's own code (clean: the
bicubic downscale; real: params.yaml's `degrade.variants` randomly degraded copies of each), then
times the train stage's step (patches cut from the resident tensors, forward, backward, Adam) on
each, alternating clean and real rounds in one process so that both see the same machine state.
Prints the seconds per step of each and their ratio (issue 13's target: real <= 1.3x clean), with
the CPU's name.

Usage (from the repo root): python bench/degrade_cost.py [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from srctl import model as M
from srctl import params as P
from srctl.device import autocast_dtype, pick_device
from srctl.prepare import landscape_crops, pairs
from srctl.steps import sample_patches, step

ROOT = Path(__file__).resolve().parents[1]
BSDS = ROOT.parent / "shared" / "datasets" / "BSDS300"


def steps_per_second(net, opt, data, params, gen, amp, seconds: float) -> float:
    from train_throughput import timed  # bench/, beside this script

    cfg, scaler = params.train, torch.amp.GradScaler(enabled=False)

    def one():
        lr_p, hr_p = sample_patches(
            data["lr"], data["hr"], cfg.batch_size, cfg.patch_size, params.scale, gen
        )
        step(net, opt, scaler, amp, lr_p, hr_p)

    n, took = timed(one, seconds)
    return n / took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from time_to_quality import cpu  # the CPU's name and ISA, as every bench prints it

    params = P.load(ROOT / "params.yaml")
    paths = sorted((BSDS / "images" / "train").glob("*.jpg"))
    data, took = {}, {}
    for kind in ("clean", "real"):
        p = dataclasses.replace(params, train=dataclasses.replace(params.train, degradation=kind))
        start = time.perf_counter()
        data[kind] = pairs(landscape_crops(paths, p.scale), "train", p)
        took[kind] = time.perf_counter() - start
        print(f"prepare {kind}: {took[kind]:.1f} s, LR {tuple(data[kind]['lr'].shape)}")

    device = pick_device()
    amp = autocast_dtype(device) if params.train.precision == "auto" else None
    rates = {"clean": [], "real": []}
    for r in range(args.rounds):
        for kind in ("clean", "real"):
            torch.manual_seed(0)
            net = M.ESPCN.named(params.train.arch, params.scale).to(
                device, memory_format=torch.channels_last
            )
            opt = torch.optim.Adam(net.parameters(), lr=params.train.lr)
            gen = torch.Generator(device).manual_seed(r)
            on_device = {k: v.to(device) for k, v in data[kind].items()}
            rates[kind].append(
                steps_per_second(net, opt, on_device, params, gen, amp, args.seconds)
            )
            print(f"round {r + 1} {kind}: {1000 / rates[kind][-1]:.1f} ms/step")
    clean, real = (1000 / max(rates[k]) for k in ("clean", "real"))  # best round of each
    precision = str(amp or torch.float32).removeprefix("torch.")
    print(
        f"\n{cpu()}, {device.type} {precision}, eager, batch {params.train.batch_size} of "
        f"{params.train.patch_size}x{params.train.patch_size}, arch {params.train.arch}:\n"
        f"step clean {clean:.1f} ms, real {real:.1f} ms: {real / clean:.2f}x "
        f"(target <= 1.3x); prepare (200 train images) clean {took['clean']:.1f} s, "
        f"real {took['real']:.1f} s ({params.degrade.variants} copies each)"
    )


if __name__ == "__main__":
    main()
