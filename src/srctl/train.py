"""Stage `train`: ESPCN on random patches of the resident BSDS300 training images, logged to MLflow.

Every step draws `batch_size` random LR patches (and their HR blocks) from the whole training set, kept
as uint8 tensors on the device, with a random flip/rotation: no DataLoader, no fixed crops.

Under `torchrun` (or `train.processes: N`, which makes the stage start torchrun itself) the same loop runs
as PyTorch DDP: each rank draws its own batch_size/N patches, DDP all-reduces the gradients, and rank 0
alone logs to MLflow and writes the model.
"""

from __future__ import annotations

import contextlib
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
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

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


def rank_streams(seed: int, rank: int, device: torch.device) -> tuple[torch.Generator, random.Random]:
    """The random streams of patches and of their flips/rotations: distinct for every DDP rank, and for
    rank 0 the same as a single process's (one process reproduces its results as before)."""
    s = seed + 1_000_003 * rank
    return torch.Generator(device).manual_seed(s), random.Random(s)


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


def _fingerprint(params: P.Params, dataset_sha256: str, world: int) -> str:
    """What a checkpoint must match to be resumed: every param that shapes the result, the data, and the
    number of processes (each has its own random stream)."""
    flat = {k: v for k, v in params.flat().items() if k.startswith(("train.", "seed", "scale"))}
    flat.pop("train.resume")
    return hashlib.sha256(json.dumps([flat, dataset_sha256, world], sort_keys=True).encode()).hexdigest()


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


def _rank_device() -> torch.device:
    """This process's device: under DDP with GPUs, the GPU of its local rank."""
    device = pick_device()
    if device.type == "cuda" and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= torch.cuda.device_count():
            raise SrctlError(f"{os.environ.get('LOCAL_WORLD_SIZE')} processes on this machine, "
                             f"{torch.cuda.device_count()} GPU(s): one process per GPU")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)  # NCCL's collectives use the current device
    return device


def train(params: P.Params, prepared_dir: Path, model_dir: Path, metrics_dir: Path, run_file: Path) -> dict:
    """Train, checkpointing every epoch to `run_file`'s folder; resume from a matching checkpoint.

    In a torch.distributed process group (see main), rank r trains its share of the batch on its own
    random stream; rank 0 alone logs, checkpoints and writes the model, and returns the summary (the other
    ranks return steps and seconds only)."""
    cfg, s = params.train, params.scale
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if cfg.batch_size % world:
        raise SrctlError(f"train.batch_size {cfg.batch_size} does not split over {world} processes")
    batch = cfg.batch_size // world  # the global batch stays train.batch_size: the same recipe on N processes
    device = _rank_device()
    torch.manual_seed(params.seed)  # the same initial weights everywhere (DDP broadcasts rank 0's anyway)
    gen, aug = rank_streams(params.seed, rank, device)

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
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)

    checkpoint = run_file.parent / CHECKPOINT
    fingerprint = _fingerprint(params, meta["dataset_sha256"], world)
    ckpt = _load_checkpoint(checkpoint, fingerprint) if cfg.resume and rank == 0 else None
    if world > 1:  # rank 0's file (other machines may not see it), to every rank
        shared = [ckpt]
        dist.broadcast_object_list(shared, src=0)
        ckpt = shared[0]
    history, done, spent = [], 0, 0.0
    if ckpt:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        sched.load_state_dict(ckpt["sched"])
        scaler.load_state_dict(ckpt["scaler"])
        gen.set_state(ckpt["rng"][rank][0])
        aug.setstate(ckpt["rng"][rank][1])
        history, done, spent = ckpt["history"], ckpt["epoch"], ckpt["seconds"]
        if rank == 0:
            print(f"train: resuming after epoch {done}/{cfg.epochs} from {checkpoint}")
    # DDP after loading: it broadcasts rank 0's weights; `net` (the same weights) is what gets saved
    ddp = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else net
    fwd = compiled(ddp) if cfg.compile == "auto" else ddp

    started = time.perf_counter() - spent
    tracking = registry.training_run(params, meta["dataset_sha256"], ckpt and ckpt["run_id"]) if rank == 0 else contextlib.nullcontext()
    with tracking as run:
        for epoch in range(done + 1, cfg.epochs + 1):
            loss_sum = torch.zeros((), device=device)
            for _ in range(cfg.steps_per_epoch):
                lr_p, hr_p = sample_patches(data["lr"], data["hr"], batch, cfg.patch_size, s, gen, aug)
                loss_sum += step(fwd, opt, scaler, amp, lr_p, hr_p)
                sched.step()
            rng = [(gen.get_state(), aug.getstate())]
            if world > 1:  # every rank sees the mean loss (and stops on a NaN); rank 0 keeps every stream
                dist.all_reduce(loss_sum)
                loss_sum /= world
                rng = [None] * world
                dist.all_gather_object(rng, (gen.get_state(), aug.getstate()))
            loss = float(loss_sum) / cfg.steps_per_epoch
            if not math.isfinite(loss):
                raise SrctlError(f"epoch {epoch}: training loss is {loss}; lower train.lr")
            if rank:
                continue
            row = {
                "epoch": epoch,
                "train_loss": loss,
                "test_psnr": test_psnr(net, test["lr"], test["hr"], s),
                "lr": sched.get_last_lr()[0],
                "seconds": time.perf_counter() - started,
            }
            history.append(row)
            registry.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            print(f"epoch {epoch}/{cfg.epochs}: loss {row['train_loss']:.6f}, test PSNR {row['test_psnr']:.2f} dB")
            with atomic_path(checkpoint) as tmp:
                torch.save(
                    {
                        "fingerprint": fingerprint, "run_id": run.info.run_id, "epoch": epoch, "history": history,
                        "seconds": row["seconds"], "model": net.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "scaler": scaler.state_dict(), "rng": rng,
                    },
                    tmp,
                )
        if rank:
            return {"steps": total, "train_seconds": time.perf_counter() - started}

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
            "compiled": fwd is not ddp,
            "steps": total,
            "processes": world,
        }
        registry.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        model_uri = registry.log_model(model_dir)
        write_json(metrics_dir / "train.json", summary)
        write_json(run_file, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "model_uri": model_uri})
    checkpoint.unlink(missing_ok=True)  # done: the model and the MLflow run hold everything now
    return summary


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends the run like Ctrl-C: KILLED in MLflow, checkpoint kept


def launch(processes: int) -> None:
    """`train.processes: N` in the DVC stage: run N ranks of this stage on this machine, exactly as
    `torchrun --standalone --nproc_per_node=N -m srctl.train` does (torchrun's own code, in-process, so
    that a failure ends in one line, not in torchrun's report)."""
    import logging

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if not torch.cuda.is_available():  # CPU ranks share the cores rather than each taking all of them
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the ranks print their errors
    try:
        torchrun.run(torchrun.parse_args(["--standalone", f"--nproc_per_node={processes}", "-m", "srctl.train"]))
    except ChildFailedError as exc:
        raise SrctlError(f"{len(exc.failures)} of {processes} training processes failed (their errors are above)") from exc
    except SignalException as exc:  # torchrun has stopped the ranks; end like Ctrl-C
        raise KeyboardInterrupt from exc


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    params, root = P.load(), P.project_root()
    if "LOCAL_RANK" not in os.environ and params.train.processes > 1:
        return launch(params.train.processes)
    if "LOCAL_RANK" in os.environ:  # started by torchrun: one rank of a DDP job
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        summary = train(
            params, root / "data" / "prepared", root / "models" / "espcn", root / "metrics", root / registry.RUN_FILE
        )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if "final_test_psnr" in summary:  # rank 0
        print(
            f"train: {summary['steps']} steps on {summary['processes']} x {summary['device']} in "
            f"{summary['train_seconds']:.0f} s, test PSNR {summary['final_test_psnr']:.2f} dB"
        )


if __name__ == "__main__":
    run_stage(main)
