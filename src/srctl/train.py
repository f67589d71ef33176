"""Stage `train`: ESPCN on random patches of the resident BSDS300 training images, logged to MLflow.

Every step draws `batch_size` random LR patches (and their HR blocks) from the whole training set, kept
as uint8 tensors on the device, with a random flip/rotation: no DataLoader, no fixed crops.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import shutil
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from srctl import model as M
from srctl import params as P
from srctl import registry
from srctl.errors import SrctlError, run_stage
from srctl.evaluate import psnr
from srctl.files import atomic_path, write_json
from srctl.infer import autocast_dtype, pick_device
from srctl.prepare import load_split

CHECKPOINT = "checkpoint.pt"  # beside models/mlflow_run.json; deleted once training has finished


def sample_patches(lr, hr, batch: int, size: int, scale: int, gen: torch.Generator, aug: random.Random):
    """A batch of aligned (LR size x size, HR size*s x size*s) float patches in [0, 1]."""
    n, _, h, w = lr.shape
    dev = lr.device
    i = torch.randint(n, (batch, 1, 1), generator=gen, device=dev)
    y = torch.randint(h - size + 1, (batch, 1, 1), generator=gen, device=dev)
    x = torch.randint(w - size + 1, (batch, 1, 1), generator=gen, device=dev)
    r, R = torch.arange(size, device=dev), torch.arange(size * scale, device=dev)
    lr_p = lr[i, 0, y + r[:, None], x + r]
    hr_p = hr[i, 0, y * scale + R[:, None], x * scale + R]
    k, flip = aug.randrange(4), aug.random() < 0.5  # one of the 8 symmetries of the square per batch
    lr_p, hr_p = torch.rot90(lr_p, k, (1, 2)), torch.rot90(hr_p, k, (1, 2))
    if flip:
        lr_p, hr_p = lr_p.flip(2), hr_p.flip(2)
    to_float = lambda t: t[:, None].float().div_(255).contiguous(memory_format=torch.channels_last)  # noqa: E731
    return to_float(lr_p), to_float(hr_p)


def compiled(net: torch.nn.Module) -> torch.nn.Module:
    """torch.compile'd where Inductor can build kernels (it needs a C++ compiler), else `net` itself.

    On the 2-core CPU: 1.07x the steps per second (bench/train_throughput.py) after ~20 s of compiling,
    so it pays on long runs; on GPUs, where small steps are launch-bound, fusing is meant to pay more."""
    if not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("clang++")):
        print("train: no C++ compiler found, training without torch.compile")
        return net
    return torch.compile(net)


def step(net, opt, scaler, amp: torch.dtype | None, lr_p: torch.Tensor, hr_p: torch.Tensor) -> torch.Tensor:
    """One optimiser step on MSE, under autocast when `amp` is set; returns the loss (not synced)."""
    with torch.autocast(lr_p.device.type, dtype=amp, enabled=amp is not None):
        loss = F.mse_loss(net(lr_p).float(), hr_p)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss.detach()


@torch.no_grad()
def test_psnr(net, lr, hr, scale: int, chunk: int = 16) -> float:
    """Mean PSNR (studio-range Y, border cut) of the network's Y on the prepared test pairs."""
    net.eval()
    scores = []
    for a, b in zip(lr.split(chunk), hr.split(chunk)):
        out = net(a.float().div(255).contiguous(memory_format=torch.channels_last)).clamp(0, 1)
        # studio Y = 16 + 219 * full-range Y: the offset cancels in the difference
        scores.append(psnr(out[:, 0] * 219, b[:, 0].float() / 255 * 219, scale))
    net.train()
    return float(torch.cat(scores).mean())


def _fingerprint(params: P.Params, dataset_sha256: str) -> str:
    """What a checkpoint must match to be resumed: every param that shapes the result, and the data."""
    flat = {k: v for k, v in params.flat().items() if k.startswith(("train.", "seed", "scale"))}
    flat.pop("train.resume")
    return hashlib.sha256(json.dumps([flat, dataset_sha256], sort_keys=True).encode()).hexdigest()


def _load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and numbers only
    except Exception as exc:  # a damaged file is not worth failing the run for: start over
        print(f"train: ignoring unreadable checkpoint {path} ({type(exc).__name__})")
        return None
    if ckpt.get("fingerprint") != fingerprint:
        print(f"train: {path} was made with other params or data; starting over")
        return None
    return ckpt


def train(params: P.Params, prepared_dir: Path, model_dir: Path, metrics_dir: Path, run_file: Path) -> dict:
    """Train, checkpointing every epoch to `run_file`'s folder; resume from a matching checkpoint."""
    cfg, s = params.train, params.scale
    device = pick_device()
    torch.manual_seed(params.seed)
    gen = torch.Generator(device).manual_seed(params.seed)
    aug = random.Random(params.seed)

    data, meta = load_split(prepared_dir, "train", device)
    test, _ = load_split(prepared_dir, "test", device)
    if meta.get("scale") != str(s):
        raise SrctlError(f"{prepared_dir}: prepared for x{meta.get('scale')}, params say x{s}; rerun prepare")
    if min(data["lr"].shape[-2:]) < cfg.patch_size:
        raise SrctlError(f"train.patch_size {cfg.patch_size} is larger than the training images")

    net = M.ESPCN.named(cfg.arch, s).to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    total = cfg.epochs * cfg.steps_per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=cfg.lr_final)
    amp = autocast_dtype(device) if cfg.precision == "auto" else None
    fwd = compiled(net) if cfg.compile == "auto" else net  # the same weights: `net` is what gets saved
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)

    checkpoint = run_file.parent / CHECKPOINT
    fingerprint = _fingerprint(params, meta["dataset_sha256"])
    ckpt = _load_checkpoint(checkpoint, fingerprint) if cfg.resume else None
    history, done, spent = [], 0, 0.0
    if ckpt:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        sched.load_state_dict(ckpt["sched"])
        scaler.load_state_dict(ckpt["scaler"])
        gen.set_state(ckpt["gen"])
        aug.setstate(ckpt["aug"])
        history, done, spent = ckpt["history"], ckpt["epoch"], ckpt["seconds"]
        print(f"train: resuming after epoch {done}/{cfg.epochs} from {checkpoint}")

    started = time.perf_counter() - spent
    with registry.training_run(params, meta["dataset_sha256"], ckpt and ckpt["run_id"]) as run:
        for epoch in range(done + 1, cfg.epochs + 1):
            loss_sum = torch.zeros((), device=device)
            for _ in range(cfg.steps_per_epoch):
                lr_p, hr_p = sample_patches(data["lr"], data["hr"], cfg.batch_size, cfg.patch_size, s, gen, aug)
                loss_sum += step(fwd, opt, scaler, amp, lr_p, hr_p)
                sched.step()
            row = {
                "epoch": epoch,
                "train_loss": float(loss_sum) / cfg.steps_per_epoch,
                "test_psnr": test_psnr(net, test["lr"], test["hr"], s),
                "lr": sched.get_last_lr()[0],
                "seconds": time.perf_counter() - started,
            }
            if not math.isfinite(row["train_loss"]):
                raise SrctlError(f"epoch {epoch}: training loss is {row['train_loss']}; lower train.lr")
            history.append(row)
            registry.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            print(f"epoch {epoch}/{cfg.epochs}: loss {row['train_loss']:.6f}, test PSNR {row['test_psnr']:.2f} dB")
            with atomic_path(checkpoint) as tmp:
                torch.save(
                    {
                        "fingerprint": fingerprint, "run_id": run.info.run_id, "epoch": epoch, "history": history,
                        "seconds": row["seconds"], "model": net.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "scaler": scaler.state_dict(), "gen": gen.get_state(),
                        "aug": aug.getstate(),
                    },
                    tmp,
                )

        M.save(net, model_dir)
        with atomic_path(metrics_dir / "train_log.csv") as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
        summary = {
            "train_seconds": history[-1]["seconds"],
            "final_train_loss": history[-1]["train_loss"],
            "final_test_psnr": history[-1]["test_psnr"],
            "device": device.type,
            "precision": str(amp or torch.float32).removeprefix("torch."),
            "compiled": fwd is not net,
            "steps": total,
        }
        registry.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        model_uri = registry.log_model(model_dir)
        write_json(metrics_dir / "train.json", summary)
        write_json(run_file, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "model_uri": model_uri})
    checkpoint.unlink(missing_ok=True)  # done: the model and the MLflow run hold everything now
    return summary


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends the run like Ctrl-C: KILLED in MLflow, checkpoint kept


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    params, root = P.load(), P.project_root()
    summary = train(
        params, root / "data" / "prepared", root / "models" / "espcn", root / "metrics", root / registry.RUN_FILE
    )
    print(
        f"train: {summary['steps']} steps on {summary['device']} in {summary['train_seconds']:.0f} s, "
        f"test PSNR {summary['final_test_psnr']:.2f} dB"
    )


if __name__ == "__main__":
    run_stage(main)
