"""Stage `train`: ESPCN on random patches of the resident BSDS300 training images, logged to MLflow.

Every step draws `batch_size` random LR patches (and their HR blocks) from the whole training set,
kept as uint8 tensors on the device, with a random flip/rotation: no DataLoader, no fixed crops.
On one CUDA GPU the whole step is a CUDA graph, replayed (steps.GraphStep).

Under `torchrun` (or `train.processes: N`, which makes the stage start torchrun itself) the same
loop runs as PyTorch DDP: each rank draws its own batch_size/N patches, DDP all-reduces the
gradients, and rank 0 alone logs to MLflow and writes the model."""

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
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from srctl import model as M
from srctl import params as P
from srctl import registry
from srctl.device import autocast_dtype, pick_device
from srctl.errors import SrctlError, run_main
from srctl.files import atomic_path, write_json
from srctl.metrics import psnr
from srctl.prepare import load_split
from srctl.steps import GraphStep, sample_patches, step

CHECKPOINT = "checkpoint.pt"  # beside models/mlflow_run.json; deleted once training has finished


def rank_streams(
    seed: int, rank: int, device: torch.device
) -> tuple[torch.Generator, random.Random]:
    """The random streams of patches and of their flips/rotations: distinct for every DDP rank, and
    for rank 0 the same as a single process's (one process reproduces its results as before)."""
    s = seed + 1_000_003 * rank
    return torch.Generator(device).manual_seed(s), random.Random(s)


def compiled(net: torch.nn.Module) -> torch.nn.Module:
    """torch.compile'd where Inductor can build kernels (it needs a C++ compiler), else `net`
    itself.

    On the 2-core CPU: 1.07x the steps per second (bench/train_throughput.py) after ~20 s of
    compiling, so it pays on long runs; on GPUs, where small steps are launch-bound, fusing is meant
    to pay more."""
    if not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("clang++")):
        print("train: no C++ compiler found, training without torch.compile")
        return net
    return torch.compile(net)


@torch.no_grad()
def test_psnr(net, lr, hr, scale: int, chunk: int = 16) -> float:
    """Mean PSNR (studio-range Y, border cut) of the network's Y on the prepared test pairs."""
    net.eval()
    scores = []
    for a, b in zip(lr.split(chunk), hr.split(chunk), strict=True):
        out = net(a.float().div(255).contiguous(memory_format=torch.channels_last)).clamp(0, 1)
        # studio Y = 16 + 219 * full-range Y: the offset cancels in the difference
        scores.append(psnr(out[:, 0] * 219, b[:, 0].float() / 255 * 219, scale))
    net.train()
    return float(torch.cat(scores).mean())


def _fingerprint(params: P.Params, dataset_sha256: str, world: int, how: list[str]) -> str:
    """What a checkpoint must match to be resumed: every param that shapes the result, the data, the
    number of processes (each has its own random stream), and `how` it trains: the device kind,
    the step and the precision (a GPU's random state or graph step does not load on a CPU)."""
    flat = {k: v for k, v in params.flat().items() if k.startswith(("train.", "seed", "scale"))}
    flat.pop("train.resume")
    return hashlib.sha256(
        json.dumps([flat, dataset_sha256, world, how], sort_keys=True).encode()
    ).hexdigest()


def _world() -> tuple[int, int]:
    """(rank, world size): (0, 1) outside a torch.distributed process group."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _rank_device() -> torch.device:
    """This process's device: under DDP with GPUs, the GPU of its local rank."""
    device = pick_device()
    if device.type == "cuda" and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= torch.cuda.device_count():
            raise SrctlError(
                f"{os.environ.get('LOCAL_WORLD_SIZE')} processes on this machine, "
                f"{torch.cuda.device_count()} GPU(s): one process per GPU"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)  # NCCL's collectives use the current device
    return device


@dataclass
class State:
    """What training changes and a checkpoint keeps: the objects, where they are, the curve."""

    net: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    gen: torch.Generator  # this rank's patch positions
    aug: random.Random  # this rank's flips/rotations
    epoch: int = 0
    seconds: float = 0.0  # training wall time before this process, for a resumed run
    history: list[dict] = field(default_factory=list)
    run_id: str | None = None


def _restore(state: State, path: Path, fingerprint: str, rank: int, world: int) -> None:
    """Continue from the checkpoint at `path` if it was made by this very recipe; else start afresh.

    Rank 0 reads the file (other machines may not see it) and hands it to every rank."""
    ckpt = _read_checkpoint(path, fingerprint) if rank == 0 else None
    if world > 1:
        shared = [ckpt]
        dist.broadcast_object_list(shared, src=0)
        ckpt = shared[0]
    if not ckpt:
        return
    state.net.load_state_dict(ckpt["model"])
    state.opt.load_state_dict(ckpt["opt"])
    state.sched.load_state_dict(ckpt["sched"])
    state.scaler.load_state_dict(ckpt["scaler"])
    state.gen.set_state(ckpt["rng"][rank][0])
    state.aug.setstate(ckpt["rng"][rank][1])
    state.history, state.epoch, state.seconds, state.run_id = (
        ckpt["history"],
        ckpt["epoch"],
        ckpt["seconds"],
        ckpt["run_id"],
    )
    if rank == 0:
        print(f"train: resuming after epoch {state.epoch} from {path}")


def _read_checkpoint(path: Path, fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        # plain tensors and numbers only
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file is not worth failing the run for: start over
        print(f"train: ignoring unreadable checkpoint {path} ({type(exc).__name__})")
        return None
    if ckpt.get("fingerprint") != fingerprint:
        print(f"train: {path} was made with other params or data; starting over")
        return None
    return ckpt


def _save_checkpoint(state: State, path: Path, fingerprint: str, rng: list) -> None:
    """Everything `_restore` needs, atomically; `rng` holds every rank's random streams."""
    with atomic_path(path) as tmp:
        torch.save(
            {
                "fingerprint": fingerprint,
                "run_id": state.run_id,
                "epoch": state.epoch,
                "history": state.history,
                "seconds": state.seconds,
                "model": state.net.state_dict(),
                "opt": state.opt.state_dict(),
                "sched": state.sched.state_dict(),
                "scaler": state.scaler.state_dict(),
                "rng": rng,
            },
            tmp,
        )


def _gather_streams(state: State, world: int) -> list:
    """Every rank's random streams, for rank 0's checkpoint."""
    rng = [(state.gen.get_state(), state.aug.getstate())]
    if world > 1:
        rng = [None] * world
        dist.all_gather_object(rng, (state.gen.get_state(), state.aug.getstate()))
    return rng


def _mean_loss(loss_sum: torch.Tensor, steps: int, world: int, epoch: int) -> float:
    """The epoch's mean training loss over all ranks (every rank stops on a NaN)."""
    if world > 1:
        dist.all_reduce(loss_sum)
        loss_sum /= world
    loss = float(loss_sum) / steps
    if not math.isfinite(loss):
        raise SrctlError(f"epoch {epoch}: training loss is {loss}; lower train.lr")
    return loss


def _load_data(
    prepared_dir: Path, params: P.Params, device: torch.device
) -> tuple[dict, dict, dict]:
    """The resident train and test tensors, and the data's metadata, checked against the params."""
    data, meta = load_split(prepared_dir, "train", device)
    test, _ = load_split(prepared_dir, "test", device)
    if meta.get("scale") != str(params.scale):
        raise SrctlError(
            f"{prepared_dir}: prepared for x{meta.get('scale')}, params say x{params.scale}; "
            "rerun prepare"
        )
    made = meta.get("degradation", "clean")  # data prepared before `real` existed is clean
    if made != params.train.degradation:
        raise SrctlError(
            f"{prepared_dir}: prepared for train.degradation {made}, params say "
            f"{params.train.degradation}; rerun prepare"
        )
    if min(data["lr"].shape[-2:]) < params.train.patch_size:
        raise SrctlError(
            f"train.patch_size {params.train.patch_size} is larger than the training images"
        )
    return data, test, meta


def _init_weights(net: torch.nn.Module, params: P.Params) -> str | None:
    """train.init: start from the weights of the logged model it names (fine-tuning); returns the
    id of the run that trained them. Rank 0 alone loads them: DDP broadcasts them to the others."""
    ref = params.train.init
    if not ref:
        return None
    folder, run_id = registry.init_model(ref)
    start = M.load(folder)
    if start.config() != net.config():
        arch = next(
            (a for a in M.ARCHS if M.ESPCN.named(a, start.scale).config() == start.config()), "?"
        )
        raise SrctlError(
            f"train.init {ref}: an x{start.scale} {arch} model, params train an x{params.scale} "
            f"{params.train.arch} one"
        )
    net.load_state_dict(start.state_dict())
    return run_id


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _write_outputs(
    state: State, facts: dict, model_dir: Path, metrics_dir: Path, run_file: Path, run
) -> dict:
    """The trained model, its curve and summary, into the files DVC tracks and into the MLflow run;
    returns the summary (`facts` about the run, and the final scores)."""
    last = state.history[-1]
    summary = {
        "train_seconds": last["seconds"],
        "final_train_loss": last["train_loss"],
        "final_test_psnr": last["test_psnr"],
        **facts,
    }
    M.save(state.net, model_dir)
    with atomic_path(metrics_dir / "train_log.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(state.history[0]))
        writer.writeheader()
        writer.writerows(state.history)
    run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    model_uri = run.log_model(model_dir)
    info = run.info()
    write_json(metrics_dir / "train.json", summary)
    write_json(
        run_file,
        {"run_id": info.run_id, "experiment_id": info.experiment_id, "model_uri": model_uri},
    )
    return summary


def _build(params: P.Params, data: dict, batch: int, rank: int, world: int) -> tuple[State, object]:
    """A fresh run's network, optimiser, schedule and random streams, and the autocast dtype.

    One process on a CUDA GPU (bf16 or fp32) gets the CUDA-graph step, whose GraphStep is both
    optimiser holder and schedule; everything else the plain Adam + CosineAnnealingLR."""
    cfg, device = params.train, data["lr"].device
    torch.manual_seed(params.seed)  # the same initial weights on every rank
    net = M.ESPCN.named(cfg.arch, params.scale).to(device, memory_format=torch.channels_last)
    amp = autocast_dtype(device) if cfg.precision == "auto" else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    gen, aug = rank_streams(params.seed, rank, device)
    total = cfg.epochs * cfg.steps_per_epoch
    graph = device.type == "cuda" and world == 1 and amp is not torch.float16
    if graph and cfg.cuda_graph == "auto":
        sched = GraphStep(net, data, batch, cfg.patch_size, params.scale, gen, amp, cfg, total)
        return State(net, sched.opt, sched, scaler, gen, aug), amp
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=cfg.lr_final)
    return State(net, opt, sched, scaler, gen, aug), amp


def _wrapped(state: State, world: int, how: str) -> tuple[torch.nn.Module, bool]:
    """What the plain step calls, and whether it is compiled: DDP around the network on several
    ranks (made after a checkpoint is loaded: it broadcasts rank 0's weights), torch.compile'd for
    `auto`. The CUDA-graph step calls the network itself."""
    ddp = net = state.net
    if isinstance(state.sched, GraphStep):
        return net, False
    if world > 1:
        device = next(net.parameters()).device
        ddp = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    fwd = compiled(ddp) if how == "auto" else ddp
    return fwd, fwd is not ddp


def _epoch(state: State, fwd, data: dict, batch: int, params: P.Params, amp) -> torch.Tensor:
    """One epoch of steps; the summed loss stays on the device (no host sync inside an epoch)."""
    cfg = params.train
    if isinstance(state.sched, GraphStep):
        return state.sched.run(cfg.steps_per_epoch)
    loss_sum = torch.zeros((), device=data["lr"].device)
    for _ in range(cfg.steps_per_epoch):
        lr_p, hr_p = sample_patches(
            data["lr"], data["hr"], batch, cfg.patch_size, params.scale, state.gen, state.aug
        )
        loss_sum += step(fwd, state.opt, state.scaler, amp, lr_p, hr_p)
        state.sched.step()
    return loss_sum


def _report(
    state: State, run, epochs: int, loss: float, psnr: float, started: float, took: float
) -> None:
    """Add the epoch to the curve, the MLflow run and the terminal (with the time left)."""
    epoch = state.epoch + 1
    row = {
        "epoch": epoch,
        "train_loss": loss,
        "test_psnr": psnr,
        "lr": state.sched.get_last_lr()[0],
    }
    row["seconds"] = time.perf_counter() - started
    state.history.append(row)
    state.epoch, state.seconds = epoch, row["seconds"]
    run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
    # the latest epoch predicts the rest best (compiling is over by then)
    left = _duration(took * (epochs - epoch))
    print(
        f"epoch {epoch}/{epochs}: loss {loss:.6f}, test PSNR {psnr:.2f} dB, "
        f"{took:.1f} s/epoch, {left} left",
        flush=True,
    )


def train(
    params: P.Params, prepared_dir: Path, model_dir: Path, metrics_dir: Path, run_file: Path
) -> dict:
    """Train, checkpointing every epoch beside `run_file`; resume from a matching checkpoint.

    In a torch.distributed process group (see main), rank r trains its share of the batch on its own
    random stream; rank 0 alone logs, checkpoints and writes the model, and returns the summary (the
    other ranks return steps and seconds only)."""
    cfg, rank, world = params.train, *_world()
    if cfg.batch_size % world:
        raise SrctlError(f"train.batch_size {cfg.batch_size} does not split over {world} processes")
    batch = cfg.batch_size // world  # the global batch: the same recipe on 1 or N processes
    device = _rank_device()
    data, test, meta = _load_data(prepared_dir, params, device)
    state, amp = _build(params, data, batch, rank, world)
    parent = _init_weights(state.net, params) if rank == 0 else None
    checkpoint = run_file.parent / CHECKPOINT
    data_sha256 = meta["dataset_sha256"] + meta.get("extra_sha256", "")  # with your own pictures
    how = [device.type, type(state.sched).__name__, str(amp)]
    fingerprint = _fingerprint(params, data_sha256, world, how)
    if cfg.resume:
        _restore(state, checkpoint, fingerprint, rank, world)
    fwd, is_compiled = _wrapped(state, world, cfg.compile)
    precision = str(amp or torch.float32).removeprefix("torch.")
    if rank == 0:  # the first epoch's line can take minutes: say what runs meanwhile
        steps = f"{cfg.epochs - state.epoch} epochs of {cfg.steps_per_epoch:,} steps"
        how = f"batch {cfg.batch_size}, {device.type}, {precision}"
        first = ", compiling in the first epoch" if is_compiled else ""
        print(f"train: {steps} ({how}{first})", flush=True)

    started = time.perf_counter() - state.seconds
    tracking = contextlib.nullcontext()
    if rank == 0:  # MLflow starts the run in its own thread while the first epoch trains
        extra = (meta["extra_train"], meta["extra_sha256"]) if "extra_sha256" in meta else None
        tracking = registry.BackgroundRun(
            params, meta["dataset_sha256"], state.run_id, parent, extra
        )
    with tracking as run:
        for _ in range(state.epoch, cfg.epochs):
            epoch_started = time.perf_counter()
            loss_sum = _epoch(state, fwd, data, batch, params, amp)
            rng = _gather_streams(state, world)
            loss = _mean_loss(loss_sum, cfg.steps_per_epoch, world, state.epoch + 1)
            if rank == 0:
                psnr = test_psnr(state.net, test["lr"], test["hr"], params.scale)
                took = time.perf_counter() - epoch_started
                _report(state, run, cfg.epochs, loss, psnr, started, took)
                state.run_id = run.info().run_id  # for the checkpoint: a resumed run continues it
                _save_checkpoint(state, checkpoint, fingerprint, rng)
        total = cfg.epochs * cfg.steps_per_epoch
        if rank:
            return {"steps": total, "train_seconds": time.perf_counter() - started}
        graphed = isinstance(state.sched, GraphStep)
        facts = {"device": device.type, "precision": precision, "compiled": is_compiled}
        facts |= {"cuda_graph": graphed}
        facts |= {"steps": total, "processes": world}
        summary = _write_outputs(state, facts, model_dir, metrics_dir, run_file, run)
    checkpoint.unlink(missing_ok=True)  # done: the model and the MLflow run hold everything now
    return summary


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends the run like Ctrl-C: KILLED in MLflow, checkpoint kept


def launch(processes: int) -> None:
    """`train.processes: N` in the DVC stage: run N ranks of this stage on this machine, exactly as
    `torchrun --standalone --nproc_per_node=N -m srctl.train` does (torchrun's own code, in-process,
    so that a failure ends in one line, not in torchrun's report)."""
    import logging

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if not torch.cuda.is_available():
        # CPU ranks share the cores rather than each taking all of them
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    # the ranks print their errors
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        torchrun.run(
            torchrun.parse_args(
                ["--standalone", f"--nproc_per_node={processes}", "-m", "srctl.train"]
            )
        )
    except ChildFailedError as exc:
        raise SrctlError(
            f"{len(exc.failures)} of {processes} training processes failed (their errors are above)"
        ) from exc
    except SignalException as exc:  # torchrun has stopped the ranks; end like Ctrl-C
        raise KeyboardInterrupt from exc


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    params, where = P.load(), P.paths()
    if "LOCAL_RANK" not in os.environ and params.train.processes > 1:
        return launch(params.train.processes)
    if "LOCAL_RANK" in os.environ:  # started by torchrun: one rank of a DDP job
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        summary = train(params, where.prepared, where.model, where.metrics, where.run_file)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if "final_test_psnr" in summary:  # rank 0
        print(
            f"train: {summary['steps']} steps on {summary['processes']} x {summary['device']} in "
            f"{summary['train_seconds']:.0f} s, test PSNR {summary['final_test_psnr']:.2f} dB"
        )


if __name__ == "__main__":
    run_main(main)
