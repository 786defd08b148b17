"""A small BatchNorm CNN for the image classification tasks, in plain torch (no torchvision, no
downloads): model definition from a JSON-able config, a training loop with a fixed seed, light
random affine augmentation, validation-based early stopping (best weights kept), and save/load of
`weights.pt` (state_dict) next to model.json.

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

import copy
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from lbtrain import progress as progress_file
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
    return torch.from_numpy(np.ascontiguousarray(arr)).float().div_(255.0)


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
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(model(to_tensor(images[i : i + batch_size])).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.head.out_features), dtype=np.float32)


def lr_at(peak: float, step: int, total: int, warmup: float = 0.2) -> float:
    """Linear warm-up to `peak` over the first 20% of steps, then cosine annealing to ~0."""
    frac = step / max(1, total)
    if frac < warmup:
        return peak * (0.04 + 0.96 * frac / warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (frac - warmup) / (1.0 - warmup))))


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
) -> dict[str, Any]:
    """Train with AdamW and a warm-up + cosine LR; after each epoch score the validation split with
    `score(logits, y_val)` (higher is better) and keep the best weights; stop early after
    `patience` epochs without improvement. `loss` is "ce" (y: int class indices) or "bce" (y: float
    0/1 matrix). Time budget: after each epoch the number of epochs is cut to what fits in
    `max_seconds` and the LR schedule is shortened with it, so a slow (shared) machine still ends
    on an annealed model rather than mid-schedule; on a machine where the budget does not bind, a
    run is deterministic for a given seed. Each epoch is reported (lbtrain.progress: loss, validation
    `metric`, ETA) against the planned epochs as they stand after it. Returns the history and the
    best epoch."""
    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    used_threads = threads(cfg.threads)
    x_all = to_tensor(x_train)
    y_all = torch.as_tensor(np.asarray(y_train), dtype=torch.long if loss == "ce" else torch.float32)
    criterion = nn.CrossEntropyLoss() if loss == "ce" else nn.BCEWithLogitsLoss()
    steps = max(1, math.ceil(len(x_all) / cfg.batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    has_val = x_val is not None and len(x_val) > 0
    best: tuple[float, int, dict[str, Any]] | None = None
    history: list[dict[str, Any]] = []
    started = time.monotonic()
    stopped = "epochs"
    planned = cfg.epochs
    step_no = 0
    epoch = 0
    progress_file.report(progress, f"training {planned} epochs", unit="epoch", done=0, total=planned, metric=metric)
    while epoch < planned:
        epoch += 1
        model.train()
        order = torch.randperm(len(x_all), generator=gen)
        total = 0.0
        for i in range(steps):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one example
                continue
            xb = x_all[idx]
            if cfg.augment:
                xb = augment(xb, gen, cfg)
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg.lr, step_no, planned * steps)
            step_no += 1
            opt.zero_grad(set_to_none=True)
            batch_loss = criterion(model(xb), y_all[idx])
            batch_loss.backward()
            opt.step()
            total += float(batch_loss.detach()) * len(idx)
        entry: dict[str, Any] = {"epoch": epoch, "loss": round(total / len(x_all), 5)}
        recalibrate_bn(model, x_all[order[:1024]])
        if has_val:
            entry["validation_score"] = round(float(score(predict_logits(model, x_val), y_val)), 5)
            if best is None or entry["validation_score"] > best[0]:
                best = (entry["validation_score"], epoch, copy.deepcopy(model.state_dict()))
        entry["seconds"] = round(time.monotonic() - started, 1)
        history.append(entry)
        early = best is not None and epoch - best[1] >= cfg.patience and epoch < planned
        if early:
            stopped, planned = "early_stopping", epoch
        else:
            elapsed = time.monotonic() - started
            fits = epoch + int(max(0.0, cfg.max_seconds - elapsed) // max(elapsed / epoch, 1e-6))
            if fits < planned:
                planned = max(epoch, fits)
                stopped = "time_budget"
        note = {"early_stopping": f"stopped early: no better validation {metric} in {cfg.patience} epochs",
                "time_budget": f"epochs cut to fit the {cfg.max_seconds:.0f}s budget"}.get(stopped, "")
        progress_file.report(
            progress, f"epoch {epoch}/{planned}: " + " ".join(f"{k}={v}" for k, v in entry.items() if k != "epoch"),
            unit="epoch", done=epoch, total=planned, loss=entry["loss"], metric=metric,
            value=entry.get("validation_score"), note=note, extra=entry)
        if early:
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
        "threads": used_threads,
        "fit_seconds": round(time.monotonic() - started, 2),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }


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
