"""Training throughput: srctl's loop against the pytorch/examples `super_resolution` style loop, one
run.

LR pixels per second through forward + backward + Adam step, for the same network (the seed's
ESPCN, x3):
  - srctl: the train stage's own code (random patches cut on the device from the resident uint8
    tensors, channels_last, bf16 autocast where the hardware has it, torch.compile), at
    params.yaml's batch and patch size; then the same without torch.compile, and without autocast;
  - example: batch 4 from a DataLoader over PIL crops (Y of a 255x255 centre crop per image, LR by
    torchvision's resize), NCHW fp32, as pytorch/examples does it.
Prints each figure and the ratio to the example.
Usage (from the repo root, after `make repro`):
    python bench/train_throughput.py [--seconds 20] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from srctl import model as M
from srctl import params as P
from srctl.device import autocast_dtype, pick_device
from srctl.prepare import load_split
from srctl.steps import sample_patches, step
from srctl.train import compiled

ROOT = Path(__file__).resolve().parents[1]
BSDS = ROOT.parent / "shared" / "datasets" / "BSDS300"


def timed(run_step, seconds: float) -> tuple[int, float]:
    """Steps done in about `seconds` (after 5 warm-up steps), and the time they took."""
    for _ in range(5):
        run_step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run_step()
        n += 1
    return n, time.perf_counter() - start


def srctl_loop(
    params: P.Params, device: torch.device, amp: torch.dtype | None, compile: bool, seconds: float
) -> float:
    cfg, s = params.train, 3
    data, _ = load_split(ROOT / "data" / "prepared", "train", device)
    net = M.ESPCN.named(cfg.arch, s).to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    fwd = compiled(net) if compile else net
    gen, aug = torch.Generator(device).manual_seed(0), random.Random(0)

    def one():
        lr_p, hr_p = sample_patches(
            data["lr"], data["hr"], cfg.batch_size, cfg.patch_size, s, gen, aug
        )
        float(step(fwd, opt, scaler, amp, lr_p, hr_p))  # sync, as the loss is read every step here

    for _ in range(20):  # compiling happens here, not in the measured time
        one()
    n, secs = timed(one, seconds)
    return n * cfg.batch_size * cfg.patch_size**2 / secs


class CentreCrops(Dataset):
    """pytorch/examples super_resolution/data.py in spirit: one fixed centre crop, Y only."""

    def __init__(self, paths: list[Path], crop: int = 255, scale: int = 3):
        self.paths = paths
        self.hr = T.Compose([T.CenterCrop(crop), T.ToTensor()])
        self.lr = T.Compose([T.CenterCrop(crop), T.Resize(crop // scale), T.ToTensor()])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        y = Image.open(self.paths[i]).convert("YCbCr").split()[0]
        return self.lr(y), self.hr(y)


def example_loop(device: torch.device, seconds: float, workers: int) -> float:
    paths = sorted((BSDS / "images" / "train").glob("*.jpg"))
    loader = DataLoader(
        CentreCrops(paths),
        batch_size=4,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    net = M.ESPCN(3).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    batches = iter(())

    def one():
        nonlocal batches
        try:
            lr, hr = next(batches)
        except StopIteration:
            batches = iter(loader)
            lr, hr = next(batches)
        lr, hr = lr.to(device), hr.to(device)
        opt.zero_grad()
        loss = F.mse_loss(net(lr), hr)
        loss.backward()
        opt.step()
        float(loss.detach())

    n, secs = timed(one, seconds)
    return n * 4 * 85 * 85 / secs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0, help="measuring time per loop")
    ap.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="example's DataLoader workers (its default: 4)",
    )
    ap.add_argument("--device", default=None, help="cpu, cuda, ... [default: what training picks]")
    args = ap.parse_args()
    params = P.load(ROOT / "params.yaml")
    device = pick_device(args.device)
    amp = autocast_dtype(device)
    print(
        f"torch {torch.__version__} on {device}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs; "
        f"srctl batch {params.train.batch_size} x {params.train.patch_size}^2, autocast {amp}"
    )
    example = example_loop(device, args.seconds, args.workers)
    print(
        f"example loop (batch 4 x 85^2, DataLoader {args.workers} workers, NCHW fp32): "
        f"{example / 1e6:.2f} M LR px/s"
    )
    rows = [
        (f"srctl (channels_last, {amp or 'fp32'}, torch.compile: the default)", amp, True),
        (f"srctl without torch.compile (channels_last, {amp or 'fp32'})", amp, False),
        ("srctl without torch.compile, fp32 (channels_last)", None, False),
    ]
    for name, dtype, compile in rows[: 3 if amp else 2]:
        ours = srctl_loop(params, device, dtype, compile, args.seconds)
        print(
            f"{name}: {ours / 1e6:.2f} M LR px/s, {ours / example:.1f}x the example (target >= 4x)"
        )


if __name__ == "__main__":
    main()
