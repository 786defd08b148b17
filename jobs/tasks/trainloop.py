"""The torch training loop the image tasks share: an epoch loop over a cached uint8 array streamed
by a DataLoader, mixed precision (jobs/tasks/torch_device.py), atomic checkpoints with resume
across attempts of the train step, and data-parallel training over several processes
(torch.distributed; gloo on the CPU, NCCL on GPUs). docs/architecture.md §4 ("Checkpoints and
resume") and §3 ("Devices").

What a task supplies is small: the model, the arrays, `step_loss(model, x, y, gen)` (forward and
loss for one batch of float images on the device), `validate(model)` (a score, higher is better),
optionally `after_epoch(model, epoch)`, and a `fingerprint` naming what a checkpoint must match
to be resumed (the architecture, the data sizes, the params).

Checkpoints are loaded with `torch.load(weights_only=True)`: they sit in the bucket every job can
write, so they hold tensors and plain values only (RNG states as byte tensors, the history as a
JSON string), never pickled objects.

torch is imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from jobs.tasks import torch_device
from lbtrain import progress as progress_file
from lbtrain import storage

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "last.pt"
CHECKPOINT_FORMAT = 1
CHECKPOINT_SECONDS = 120.0  # a checkpoint at least this often inside long epochs, and after every epoch


# --- the job's session: where checkpoints go and where earlier attempts left theirs ------------


@dataclass(frozen=True)
class Session:
    """What the train stage tells the torch trainers about the job (jobs/train.py sets it): this
    attempt's checkpoint dir, the earlier attempts' (newest first), the stage's max_hours and a
    local directory for the decoded-image cache."""

    checkpoint_dir: str = ""
    resume_dirs: tuple[str, ...] = ()
    attempt: int = 1
    max_hours: float | None = None
    cache_dir: str = ""
    checkpoint_seconds: float = CHECKPOINT_SECONDS
    resume: bool = True  # False: never load a checkpoint (not even this attempt's own)


_session: contextvars.ContextVar[Session | None] = contextvars.ContextVar("lbtrain_train_session", default=None)


def current() -> Session:
    """The job's session; outside a train job (tests, the benchmark) no checkpoints are written."""
    return _session.get() or Session()


@contextlib.contextmanager
def using(session: Session | None) -> Iterator[Session | None]:
    token = _session.set(session)
    try:
        yield session
    finally:
        _session.reset(token)


def session_for_job(artifact_root: str, run_id: str, stage: str, attempt: int, outputs_uri: str,
                    max_hours: float | None = None, resume: bool = True) -> Session:
    """Checkpoints of attempt k live in `run_dir(…, k)/checkpoints/`: a retry (attempt k+1) of a
    preempted job resumes from the newest one of any earlier attempt, or of its own earlier execution.
    `resume=False` (the run param) trains from scratch and only writes checkpoints."""
    earlier = tuple(storage.join(storage.run_dir(artifact_root, run_id, stage, k), CHECKPOINT_DIR)
                    for k in range(attempt - 1, 0, -1)) if resume else ()
    cache = "" if storage.is_gcs(outputs_uri) else storage.join(outputs_uri, "cache")
    return Session(storage.join(outputs_uri, CHECKPOINT_DIR), earlier, attempt, max_hours, cache, resume=resume)


# --- the decoded-image cache ----------------------------------------------------------------------


def cache_path(name: str) -> str:
    """A local file for a cached array: the session's cache dir (the outputs dir when it is local, a
    temp dir the train stage removes when on gs://: memmaps need a local file, and a retry rebuilds it)."""
    base = current().cache_dir or _process_cache_dir()
    os.makedirs(base, exist_ok=True)
    return os.path.join(base, name)


_PROCESS_CACHE: list[str] = []


def _process_cache_dir() -> str:
    """Outside a train job (tests, benchmarks): one temp dir per process, removed when it exits."""
    if not _PROCESS_CACHE:
        import atexit
        import shutil

        _PROCESS_CACHE.append(tempfile.mkdtemp(prefix="lbtrain-cache-"))
        atexit.register(shutil.rmtree, _PROCESS_CACHE[0], True)
    return _PROCESS_CACHE[0]


def open_cache(path: str, shape: tuple[int, ...]) -> Any:
    """A new uint8 .npy memmap to decode images into (np.load(mmap_mode="r") reopens it)."""
    import numpy as np

    tmp = f"{path}.partial"
    return np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape), tmp


def finish_cache(array: Any, tmp: str, path: str) -> Any:
    """Flush and publish the cache file (rename: a half-written cache is never reused)."""
    import numpy as np

    array.flush()
    del array
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


class ArrayData:
    """uint8 images [N, H, W(, C)] (an array or a .npy path, memory-mapped) and targets, indexed a
    batch at a time: one fancy-indexed read per batch instead of N item reads and a collate."""

    def __init__(self, x: Any, y: Any):
        import numpy as np

        self.path = x if isinstance(x, str) else None
        self._x = None if self.path else x
        self.y = np.asarray(y)
        self.n = len(self.y)

    @property
    def x(self) -> Any:
        import numpy as np

        if self._x is None:  # opened lazily: each DataLoader worker maps the file itself
            self._x = np.load(self.path, mmap_mode="r")
        return self._x

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: Any) -> tuple[Any, Any]:
        import numpy as np
        import torch

        idx = np.asarray(idx)
        order = np.argsort(idx, kind="stable")  # sequential reads from the memmap
        xb = np.empty((len(idx), *self.x.shape[1:]), dtype=np.uint8)
        xb[order] = self.x[idx[order]]
        return torch.from_numpy(xb), torch.from_numpy(np.ascontiguousarray(self.y[idx]))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.path:
            state["_x"] = None
        return state


def images_to_float(xb: Any) -> Any:
    """uint8 [N, H, W] or [N, H, W, C] tensor → float [N, C, H, W] in [0, 1] (on xb's device)."""
    xb = xb.unsqueeze(1) if xb.dim() == 3 else xb.permute(0, 3, 1, 2)
    return xb.float().div_(255.0)


# --- checkpoints --------------------------------------------------------------------------------


def _state_to_cpu(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def save_checkpoint(directory: str, payload: dict[str, Any]) -> str:
    """Atomically: a temp file renamed over last.pt (one upload on gs://)."""
    import torch

    uri = storage.join(directory, CHECKPOINT_FILE)
    with storage.staged(uri) as tmp:
        torch.save(payload, tmp)
    return uri


def newest_checkpoint(session: Session, fingerprint: str,
                      progress: Callable[..., None] | None = None) -> dict[str, Any] | None:
    """The most advanced checkpoint (epoch, batches) of this attempt or an earlier one that matches
    `fingerprint`; weights_only loading, so a tampered file cannot run code."""
    import torch

    best: dict[str, Any] | None = None
    if not session.resume:
        return None
    dirs = ([session.checkpoint_dir] if session.checkpoint_dir else []) + list(session.resume_dirs)
    for directory in dirs:
        uri = storage.join(directory, CHECKPOINT_FILE)
        try:
            if not storage.exists(uri):
                continue
            with storage.localized(uri) as local:
                ckpt = torch.load(local, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a bad checkpoint means training from scratch, not failing
            if progress:
                progress(f"ignoring checkpoint {uri}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            continue
        if ckpt.get("fingerprint") != fingerprint:
            if progress:
                progress(f"ignoring checkpoint {uri}: it was written for other data or params")
            continue
        ckpt["uri"] = uri
        if best is None or (ckpt["epoch"], ckpt["batches_done"]) > (best["epoch"], best["batches_done"]):
            best = ckpt
    return best


# --- the loop -------------------------------------------------------------------------------------


@dataclass
class LoopConfig:
    epochs: int = 15
    batch_size: int = 64  # the global batch: each of `world` processes takes batch_size // world
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 4
    seed: int = 0
    max_seconds: float = 240.0
    loader_workers: int = 0
    # (peak, step, total steps, fraction of the time budget used) → lr; constant when None
    lr_schedule: Callable[[float, int, int, float], float] | None = None
    stop_mid_epoch: bool = False  # stop at the first batch past max_seconds (else epochs are cut between epochs)
    ties_to_later: bool = False  # an equal validation score replaces the best weights


def _broadcast(values: list[float], world: int) -> list[float]:
    """Rank 0's decision (planned epochs, stop) to every process, so none waits on another forever."""
    if world <= 1:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.broadcast(t, 0)
    return t.tolist()


def _all_sum(values: list[float], world: int) -> list[float]:
    if world <= 1:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def run(
    model: Any,
    data: ArrayData,
    *,
    step_loss: Callable[[Any, Any, Any, Any], Any],
    validate: Callable[[Any], float | None],
    cfg: LoopConfig,
    device: torch_device.Device,
    progress: Callable[..., None],
    metric: str,
    fingerprint: str,
    after_epoch: Callable[[Any, Any, int], None] | None = None,
    transform: Callable[[Any, Any], Any] | None = None,
    rank: int = 0,
    world: int = 1,
    session: Session | None = None,
) -> dict[str, Any]:
    """Train `model` in place (best validation weights restored at the end) and return the history.

    Epochs are cut to fit `max_seconds` (counted across resumed attempts) and stopped early after
    `patience` epochs without a better validation score; both decisions are rank 0's. A checkpoint is
    written after every epoch and every `checkpoint_seconds` inside one; a matching checkpoint of this
    or an earlier attempt is resumed from (mid-epoch when the process count is unchanged)."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    session = session or current()
    lead = rank == 0
    say = progress if lead else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed + rank)
    dev = torch_device.torch_device(device, rank)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if device.cuda else None)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch_device.grad_scaler(device)
    per_rank = max(2, cfg.batch_size // world)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=False)
    steps = max(1, math.ceil(len(sampler) / per_rank))
    schedule = cfg.lr_schedule or (lambda peak, step, total, used: peak)
    gen = torch.Generator()

    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, Any]] | None = None
    planned, stopped, step_no, epoch, skip, elapsed_before = cfg.epochs, "epochs", 0, 0, 0, 0.0
    loss_sum, seen = 0.0, 0
    resumed_from: dict[str, Any] | None = None
    ckpt = newest_checkpoint(session, fingerprint, say)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        epoch, step_no, planned = int(ckpt["epoch"]), int(ckpt["step_no"]), int(ckpt["planned"])
        stopped, elapsed_before = str(ckpt["stopped"]), float(ckpt["elapsed"])
        history = json.loads(ckpt["history"])
        if ckpt.get("best_model") is not None:
            best = (float(ckpt["best_score"]), int(ckpt["best_epoch"]), ckpt["best_model"])
        if int(ckpt.get("world", 1)) == world and int(ckpt["batches_done"]):
            skip, loss_sum, seen = int(ckpt["batches_done"]), float(ckpt["loss_sum"]), int(ckpt["seen"])
            step_no = int(ckpt["step_no"])
        else:  # the epoch in progress restarts (its batches were split for another process count)
            step_no = epoch * steps
        torch.set_rng_state(ckpt["rng_torch"])
        resumed_from = {"attempt": int(ckpt["attempt"]), "epoch": epoch, "batches": skip,
                        "checkpoint": ckpt["uri"]}
        say(f"resumed from the checkpoint of attempt {ckpt['attempt']} after epoch {epoch}"
            + (f" and {skip} batches of epoch {epoch + 1}" if skip else "") + f" ({ckpt['uri']})",
            resumed_from=resumed_from)
    started = time.monotonic()
    last_ckpt = started

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - started

    def checkpoint(batches_done: int) -> None:
        nonlocal last_ckpt
        last_ckpt = time.monotonic()
        if not lead or not session.checkpoint_dir:
            return
        payload = {
            "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "attempt": session.attempt, "world": world,
            "epoch": epoch if batches_done == 0 else epoch - 1, "batches_done": batches_done,
            "step_no": step_no, "planned": planned, "stopped": stopped, "elapsed": elapsed(),
            "loss_sum": loss_sum, "seen": seen, "history": json.dumps(history),
            "model": _state_to_cpu(model.state_dict()), "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "rng_torch": torch.get_rng_state(),
            "best_score": best[0] if best else 0.0, "best_epoch": best[1] if best else 0,
            "best_model": best[2] if best else None,
        }
        save_checkpoint(session.checkpoint_dir, payload)

    say(f"training {planned} epochs on {device.kind} ({device.name}, {device.precision}"
        + (f", {world} processes" if world > 1 else "") + ")",
        iteration={"unit": "epoch", "done": epoch, "total": planned, "loss": None, "metric": metric,
                   "value": None, "note": f"resumed from attempt {resumed_from['attempt']}" if resumed_from else ""})
    while epoch < planned:
        epoch += 1
        model.train()
        sampler.set_epoch(epoch)
        indices = list(sampler)
        batches = [indices[i * per_rank : (i + 1) * per_rank] for i in range(steps)]
        batches = [b for b in batches[skip:] if len(b) >= 2]  # BatchNorm needs more than one example
        gen.manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + rank * 104_729 + skip)
        loader = DataLoader(data, sampler=batches, batch_size=None, num_workers=cfg.loader_workers,
                            pin_memory=device.cuda, persistent_workers=False)
        if skip == 0:
            loss_sum, seen = 0.0, 0
        out_of_time = False
        for i, (xb, yb) in enumerate(loader, start=skip + 1):
            if cfg.stop_mid_epoch and elapsed() > cfg.max_seconds:
                out_of_time = True
                break
            xb = images_to_float(torch_device.to_device(xb, device, rank))
            if device.cuda:
                xb = xb.contiguous(memory_format=torch.channels_last)
            if isinstance(yb, dict):
                yb = {k: torch_device.to_device(v, device, rank) for k, v in yb.items()}
            else:
                yb = torch_device.to_device(yb, device, rank)
            if transform is not None:  # augmentation, in fp32 outside autocast
                xb = transform(xb, gen)
            for group in opt.param_groups:
                group["lr"] = schedule(cfg.lr, step_no, planned * steps, elapsed() / max(cfg.max_seconds, 1e-9))
            step_no += 1
            opt.zero_grad(set_to_none=True)
            with torch_device.autocast(device):
                batch_loss = step_loss(net, xb, yb, gen)
            scaler.scale(batch_loss).backward()
            scaler.step(opt)
            scaler.update()
            loss_sum += float(batch_loss.detach()) * len(xb)
            seen += len(xb)
            if time.monotonic() - last_ckpt >= session.checkpoint_seconds and i < steps:
                checkpoint(i)
        skip = 0
        out_of_time = bool(_broadcast([float(out_of_time)], world)[0])
        total_loss, total_seen = _all_sum([loss_sum, float(seen)], world)
        if out_of_time and total_seen == 0:  # the budget ran out before this epoch began
            epoch -= 1
            planned, stopped = epoch, "time_budget"
            say(f"stopped before epoch {epoch + 1}: the {cfg.max_seconds:.0f}s training budget is used",
                iteration={"unit": "epoch", "done": epoch, "total": epoch, "loss": None, "metric": metric,
                           "value": None, "note": f"stopped: the {cfg.max_seconds:.0f}s training budget is used"})
            break
        entry: dict[str, Any] = {"epoch": epoch, "loss": round(total_loss / max(1.0, total_seen), 5)}
        if after_epoch is not None:
            after_epoch(model, data, epoch)
        score = validate(model)
        if score is not None:
            entry["validation_score"] = round(float(score), 5)
            if best is None or entry["validation_score"] > best[0] or (
                    cfg.ties_to_later and entry["validation_score"] == best[0]):
                best = (entry["validation_score"], epoch, _state_to_cpu(model.state_dict()))
        entry["seconds"] = round(elapsed(), 1)
        history.append(entry)
        early = best is not None and epoch - best[1] >= cfg.patience and epoch < planned
        if out_of_time:
            new_planned, code = epoch, 2.0
        elif early:
            new_planned, code = epoch, 1.0
        else:
            spent = elapsed()
            per_epoch = max((time.monotonic() - started) / max(1, len(history) - (ckpt["epoch"] if ckpt else 0)),
                            1e-6)
            fits = epoch + int(max(0.0, cfg.max_seconds - spent) // per_epoch)
            new_planned, code = (max(epoch, fits), 2.0) if fits < planned else (planned, 0.0)
        new_planned_f, code = _broadcast([float(new_planned), code], world)
        planned = int(new_planned_f)
        stopped = {1.0: "early_stopping", 2.0: "time_budget"}.get(code, stopped)
        note = {"early_stopping": f"stopped early: no better validation {metric} in {cfg.patience} epochs",
                "time_budget": f"epochs cut to fit the {cfg.max_seconds:.0f}s budget"}.get(stopped, "")
        if resumed_from and not note:
            note = f"resumed from attempt {resumed_from['attempt']} after epoch {resumed_from['epoch']}"
        checkpoint(0)
        progress_file.report(
            say, f"epoch {epoch}/{planned}: " + " ".join(f"{k}={v}" for k, v in entry.items() if k != "epoch"),
            unit="epoch", done=epoch, total=planned, loss=entry["loss"], metric=metric,
            value=entry.get("validation_score"), note=note, extra=entry)
        if code == 1.0 or out_of_time:
            break
    if best is not None:
        model.load_state_dict(best[2])
    model.eval()
    return {
        "epochs_run": len(history),
        "best_epoch": best[1] if best else len(history),
        "best_validation_score": best[0] if best else None,
        "stopped_by": stopped,
        "history": history,
        "fit_seconds": round(elapsed(), 2),
        "resumed_from": {k: v for k, v in resumed_from.items() if k != "checkpoint"} if resumed_from else None,
        "processes": world,
    }


# --- data-parallel: one process per device, launched inside the job ------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, device: torch_device.Device, target: Callable[..., Any],
            payload: Any, queue: Any, session: Session) -> None:
    import torch
    import torch.distributed as dist

    if device.cuda:
        torch.cuda.set_device(rank % max(1, device.count))
    dist.init_process_group("nccl" if device.cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)
    try:
        def relay(message: str, **fields: Any) -> None:
            queue.put((message, fields))

        with using(session):
            target(rank, world, device, payload, relay)
    finally:
        dist.destroy_process_group()


def spawn(world: int, device: torch_device.Device, target: Callable[..., Any], payload: Any,
          progress: Callable[..., None]) -> None:
    """Run `target(rank, world, device, payload, progress)` in `world` fresh processes joined by
    torch.distributed; rank 0's progress is relayed to this process's `progress` (progress.json)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = mp.start_processes(_worker, args=(world, _free_port(), device, target, payload, queue, current()),
                               nprocs=world, join=False, start_method="spawn")

    def drain() -> None:
        while not queue.empty():
            message, fields = queue.get()
            progress(message, **fields)

    while not procs.join(timeout=0.5):
        drain()
    drain()


def with_loader_workers(cfg: LoopConfig, workers: int) -> LoopConfig:
    return replace(cfg, loader_workers=workers)
