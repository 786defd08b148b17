"""A small BatchNorm CNN for the image classification tasks, in plain torch (no torchvision, no
downloads): model definition from a JSON-able config, training with a fixed seed through the loop
the torch tasks share (jobs/tasks/trainloop.py: device, mixed precision, checkpoints and resume,
data-parallel processes), light random affine augmentation on the device, validation-based early
stopping (best weights kept), and save/load of `weights.pt` (state_dict) next to model.json.

torch is imported inside functions only: the task modules import this module, and the services
must never load torch (docs/architecture.md §2).

    arch = default_arch(side, channels, outputs, pool="avg")     # JSON-able, stored in model.json
    model = build(arch)
    result = fit(model, x_train, y_train, x_val, y_val, loss="ce"|"bce", score=fn, cfg=FitConfig(...))
    logits = predict_logits(model, x)                              # numpy float32 [N, outputs]
    save(model_dir, model) / load(model_dir, arch)

Images are numpy uint8 arrays [N, H, W] (grayscale) or [N, H, W, 3]; scaling to [0, 1] and the
channel layout are handled here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from lbtrain import storage

WEIGHTS_FILE = "weights.pt"


@dataclass
class FitConfig:
    epochs: int = 15
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 4  # epochs without validation improvement before stopping
    seed: int = 0
    augment: bool = True
    rotate: float = 10.0  # degrees, ±
    shift: float = 0.08  # fraction of the side, ±
    scale: tuple[float, float] = (0.9, 1.1)
    max_seconds: float = 240.0  # epochs are cut to fit this (the train job's budget is 5 minutes)
    threads: int = 0  # 0: cpu count // 2, between 1 and 4 (see `threads`)
    device: str = ""  # "" : CUDA when present, else the CPU (jobs/tasks/torch_device.py)
    precision: str = ""  # "": bf16/fp16 on a GPU, fp32 on the CPU
    processes: int = 0  # data-parallel processes; 0: one per GPU, 1 on the CPU
    loader_workers: int = -1  # DataLoader workers; -1: 4 on a GPU, 0 (in process) on the CPU


def threads(n: int = 0) -> int:
    """Set torch's intra-op threads. Default half the cores (1..4): on this shared 2-core machine one
    thread trained 3x faster than two (OpenMP threads spin against the other jobs)."""
    import torch

    n = n or max(1, min((os.cpu_count() or 1) // 2, 4))
    torch.set_num_threads(max(1, n))
    return max(1, n)


def default_arch(side: int, channels: int, outputs: int, *, pool: str = "avg", dropout: float = 0.2) -> dict[str, Any]:
    """Blocks of [3×3 conv → BatchNorm → ReLU]×k then 2×2 max-pool, until ~8 px, then a global pool
    ("avg" for single objects, "max" for "is it anywhere") and a linear layer. Widths stay small
    at high resolution: measured on this 2-core machine (1 thread, with augmentation), ~700 img/s
    train throughput at 28 px and ~370 img/s at 64 px."""
    if side <= 32:
        widths, convs = [32, 64, 128], [1, 2, 1]
    elif side <= 64:
        widths, convs = [16, 32, 64, 96, 128], [1, 1, 1, 1, 1]
    else:
        widths, convs = [16, 24, 32, 64, 96, 128], [1, 1, 1, 1, 1, 1]
    return {
        "side": int(side),
        "channels": int(channels),
        "outputs": int(outputs),
        "widths": widths,
        "convs": convs,
        "pool": pool,
        "dropout": dropout,
    }


def build(arch: Mapping[str, Any], seed: int = 0) -> Any:
    """The model for `arch`, its initial weights drawn from `seed` (same seed, same model)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            c_in = int(arch["channels"])
            n_blocks = len(arch["widths"])
            for b, (width, k) in enumerate(zip(arch["widths"], arch["convs"], strict=True)):
                for _ in range(k):
                    layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
                    c_in = width
                if b < n_blocks - 1:
                    layers.append(nn.MaxPool2d(2))
            self.features = nn.Sequential(*layers)
            self.pool = arch.get("pool", "avg")
            self.dropout = nn.Dropout(float(arch.get("dropout", 0.0)))
            self.head = nn.Linear(c_in, int(arch["outputs"]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.features(x)
            h = torch.amax(h, dim=(2, 3)) if self.pool == "max" else torch.mean(h, dim=(2, 3))
            return self.head(self.dropout(h))

    return SmallCNN()


def to_tensor(images: Any) -> Any:
    """uint8 [N, H, W] or [N, H, W, C] numpy → float tensor [N, C, H, W] in [0, 1]."""
    import numpy as np
    import torch

    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[:, None, :, :]
    else:
        arr = arr.transpose(0, 3, 1, 2)
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # a read-only memmap of the decoded-image cache
        arr = arr.copy()
    return torch.from_numpy(arr).float().div_(255.0)


def augment(x: Any, gen: Any, cfg: FitConfig) -> Any:
    """Random rotation/scale/shift per image (one affine grid_sample for the batch)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(cfg.rotate)
    lo, hi = cfg.scale
    s = lo + torch.rand(n, generator=gen) * (hi - lo)
    t = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * cfg.shift)  # grid units: side = 2
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    theta = theta.to(x.device)  # drawn on the CPU generator: the same augmentation on any device
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def recalibrate_bn(model: Any, x: Any, limit: int = 1024, batch_size: int = 256) -> None:
    """Recompute BatchNorm running statistics from up to `limit` un-augmented training images with
    the current weights. The running averages otherwise lag the fast-changing weights of a short
    one-cycle run, and eval mode then collapses to one class on small datasets."""
    import torch
    from torch import nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or len(x) < 2:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for i in range(0, min(len(x), limit), batch_size):
            xb = x[i : min(i + batch_size, limit)]
            if len(xb) > 1:
                model(xb)
    for m, momentum in zip(bns, saved, strict=True):
        m.momentum = momentum
    model.eval()


def predict_logits(model: Any, images: Any, batch_size: int = 256) -> Any:
    """numpy uint8 images → numpy float32 logits [N, outputs] (eval mode, no grad)."""
    import numpy as np
    import torch

    model.eval()
    out = []
    dev = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(model(to_tensor(images[i : i + batch_size]).to(dev)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.head.out_features), dtype=np.float32)


def lr_at(peak: float, step: int, total: int, warmup: float = 0.2) -> float:
    """Linear warm-up to `peak` over the first 20% of steps, then cosine annealing to ~0."""
    frac = step / max(1, total)
    if frac < warmup:
        return peak * (0.04 + 0.96 * frac / warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (frac - warmup) / (1.0 - warmup))))


def _fingerprint(model: Any, x: Any, y: Any, cfg: FitConfig, loss: str) -> str:
    """What a checkpoint must match to be resumed: the layer shapes, the data and the params that
    change the result (not threads, processes or the time budget)."""
    import hashlib
    import json

    import numpy as np

    h = hashlib.sha256()
    h.update(json.dumps([[k, list(v.shape)] for k, v in model.state_dict().items()]).encode())
    h.update(json.dumps({k: v for k, v in asdict(cfg).items() if k not in ("threads", "processes", "max_seconds",
                                                                          "loader_workers")}, default=str).encode())
    h.update(f"{loss}{tuple(np.shape(x))}".encode())
    h.update(np.ascontiguousarray(np.asarray(y)).tobytes())
    h.update(np.ascontiguousarray(x[: min(len(x), 64)]).tobytes())
    return h.hexdigest()


def fit(
    model: Any,
    x_train: Any,
    y_train: Any,
    x_val: Any,
    y_val: Any,
    *,
    loss: str,
    score: Callable[[Any, Any], float],
    cfg: FitConfig,
    progress: Callable[..., None],
    metric: str = "score",
    arch: Mapping[str, Any] | None = None,
    device: Any = None,
) -> dict[str, Any]:
    """Train with AdamW and a warm-up + cosine LR through the shared loop (jobs/tasks/trainloop.py):
    after each epoch score the validation split with `score(logits, y_val)` (higher is better) and
    keep the best weights; stop early after `patience` epochs without improvement; cut the epochs
    (and the LR schedule with them) to fit `max_seconds`, so a slow machine still ends on an
    annealed model. `loss` is "ce" (y: int class indices) or "bce" (y: float 0/1 matrix).
    `x_train` may be a memmapped cache (trainloop.open_cache). Checkpoints and resume come from
    the job's trainloop session; with `cfg.processes` > 1 (or several GPUs) training runs
    data-parallel in that many processes, which needs `arch` (and a picklable `score`)."""
    from jobs.tasks import torch_device

    device = device or torch_device.select({"device": cfg.device or None, "precision": cfg.precision or None})
    used_threads = threads(cfg.threads)
    world = cfg.processes or (device.count if device.cuda else 1)
    if world > 1 and arch is None:
        raise ValueError("data-parallel training needs the model's arch")
    if world > 1:
        result = _fit_parallel(model, arch or {}, x_train, y_train, x_val, y_val, loss=loss, score=score, cfg=cfg,
                               progress=progress, metric=metric, device=device, world=world)
    else:
        result = _fit_here(model, x_train, y_train, x_val, y_val, loss=loss, score=score, cfg=cfg,
                           progress=progress, metric=metric, device=device)
        model.to("cpu")
    model.eval()
    return {**result, "threads": used_threads, **device.describe(),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}}


def _fit_here(model: Any, x_train: Any, y_train: Any, x_val: Any, y_val: Any, *, loss: str,
              score: Callable[[Any, Any], float], cfg: FitConfig, progress: Callable[..., None], metric: str,
              device: Any, rank: int = 0, world: int = 1, fingerprint: str = "") -> dict[str, Any]:
    """One process's share of the training (all of it when world == 1)."""
    import numpy as np
    import torch
    from torch import nn

    from jobs.tasks import torch_device, trainloop

    fingerprint = fingerprint or _fingerprint(model, x_train, y_train, cfg, loss)
    y = np.asarray(y_train, dtype=np.int64 if loss == "ce" else np.float32)
    data = x_train if isinstance(x_train, trainloop.ArrayData) else trainloop.ArrayData(x_train, y)
    model = torch_device.prepare_model(model, device, rank)
    criterion = nn.CrossEntropyLoss() if loss == "ce" else nn.BCEWithLogitsLoss()
    has_val = x_val is not None and len(x_val) > 0

    def transform(xb: Any, gen: Any) -> Any:
        return augment(xb, gen, cfg) if cfg.augment else xb

    def step_loss(net: Any, xb: Any, yb: Any, gen: Any) -> Any:
        return criterion(net(xb).float(), yb)

    def after_epoch(m: Any, d: Any, epoch: int) -> None:
        # The same images on every process (a seeded draw), so every replica ends with the same stats.
        idx = torch.randperm(len(d), generator=torch.Generator().manual_seed(cfg.seed + epoch))[:1024]
        xb, _ = d[np.sort(idx.numpy())]
        recalibrate_bn(m, trainloop.images_to_float(torch_device.to_device(xb, device, rank)))

    def validate(m: Any) -> float | None:
        return float(score(predict_logits(m, x_val), y_val)) if has_val else None

    loop_cfg = trainloop.LoopConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
        patience=cfg.patience, seed=cfg.seed, max_seconds=cfg.max_seconds,
        loader_workers=max(0, cfg.loader_workers if cfg.loader_workers >= 0 else (4 if device.cuda else 0)),
        lr_schedule=lambda peak, step, total, used: lr_at(peak, step, total))
    return trainloop.run(model, data, step_loss=step_loss, validate=validate, cfg=loop_cfg, device=device,
                         progress=progress, metric=metric, fingerprint=fingerprint, after_epoch=after_epoch,
                         transform=transform, rank=rank, world=world)


def _fit_parallel(model: Any, arch: Mapping[str, Any], x_train: Any, y_train: Any, x_val: Any, y_val: Any, *,
                  loss: str, score: Callable[[Any, Any], float], cfg: FitConfig, progress: Callable[..., None],
                  metric: str, device: Any, world: int) -> dict[str, Any]:
    """Spawn `world` processes (trainloop.spawn) that train replicas of `model` (same initial
    weights) on disjoint shards of each epoch; rank 0's best weights come back into `model`."""
    import json
    import tempfile

    import numpy as np
    import torch

    from jobs.tasks import trainloop

    with tempfile.TemporaryDirectory(prefix="lbtrain-ddp-") as tmp:
        paths = {}
        for name, arr in (("x_train", x_train), ("x_val", x_val)):
            if arr is None:
                paths[name] = ""
            elif isinstance(arr, np.memmap) and str(arr.filename or "").endswith(".npy"):
                paths[name] = str(arr.filename)
            else:
                paths[name] = f"{tmp}/{name}.npy"
                np.save(paths[name], np.asarray(arr))
        torch.save(model.state_dict(), f"{tmp}/init.pt")
        payload = {"arch": dict(arch), "paths": paths, "y_train": np.asarray(y_train), "y_val": y_val,
                   "loss": loss, "score": score, "cfg": cfg, "metric": metric, "dir": tmp,
                   "fingerprint": _fingerprint(model, x_train, y_train, cfg, loss)}
        trainloop.spawn(world, device, _parallel_worker, payload, progress)
        model.load_state_dict(torch.load(f"{tmp}/final.pt", map_location="cpu", weights_only=True))
        with open(f"{tmp}/result.json") as fh:
            return json.load(fh)


def _parallel_worker(rank: int, world: int, device: Any, payload: dict[str, Any],
                     progress: Callable[..., None]) -> None:
    """One data-parallel process (module level: spawn pickles it by name)."""
    import json

    import numpy as np
    import torch

    from jobs.tasks import trainloop

    cfg: FitConfig = payload["cfg"]
    threads(cfg.threads)
    model = build(payload["arch"])
    model.load_state_dict(torch.load(f"{payload['dir']}/init.pt", map_location="cpu", weights_only=True))
    y = np.asarray(payload["y_train"], dtype=np.int64 if payload["loss"] == "ce" else np.float32)
    data = trainloop.ArrayData(payload["paths"]["x_train"], y)
    x_val = np.load(payload["paths"]["x_val"], mmap_mode="r") if payload["paths"]["x_val"] else None
    result = _fit_here(model, data, y, x_val, payload["y_val"], loss=payload["loss"], score=payload["score"], cfg=cfg,
                       progress=progress, metric=payload["metric"], device=device, rank=rank, world=world,
                       fingerprint=payload["fingerprint"])
    if rank == 0:
        model.to("cpu")
        torch.save(model.state_dict(), f"{payload['dir']}/final.pt")
        with open(f"{payload['dir']}/result.json", "w") as fh:
            json.dump(result, fh)


def save(model_dir: str, model: Any) -> str:
    """Write the state_dict atomically; model.json (written by the task, last) names it."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    uri = storage.join(model_dir, WEIGHTS_FILE)
    storage.write_bytes(uri, buf.getvalue())
    return uri


def load(model_dir: str, arch: Mapping[str, Any], file: str = WEIGHTS_FILE, sha256: str = "") -> Any:
    """Rebuild the model from its arch and load weights (weights_only: no code runs from the file;
    the recorded digest, when given, is checked too)."""
    import torch

    from jobs.tasks.base import verify_digest

    model = build(arch)
    uri = storage.join(model_dir, file)
    with storage.localized(uri) as local:
        verify_digest(local, uri, sha256, required=False)
        state = torch.load(local, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model
