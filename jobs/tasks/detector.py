"""A small CenterNet-style detector in plain torch (no torchvision: its ops do not load with this
torch): a 4-level conv encoder with a top-down path back to stride 4, and three heads — a class
heatmap of object centres (penalty-reduced focal loss on Gaussian targets), box size and sub-pixel
centre offset (L1 at the centres). ~0.5 M parameters, most of them at stride 16 where they cost
little compute, so it trains on two CPU cores in minutes (docs/architecture.md §12: Faster R-CNN
from scratch did not converge on CPU in that time).

Coordinates inside this module are in *input* pixels (the image resized to `input_size`²);
the task converts to and from the original image's pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch convention
from torch import nn

STRIDE = 4


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class CenterNet(nn.Module):
    """Encoder at strides 2/4/8/16, top-down fusion to stride 4, heatmap/size/offset heads."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32):
        super().__init__()
        w = width
        self.num_classes = num_classes
        self.s2 = _conv(in_channels, w // 2, 2)
        self.s4 = nn.Sequential(_conv(w // 2, w, 2), _conv(w, w))
        self.s8 = nn.Sequential(_conv(w, 2 * w, 2), _conv(2 * w, 2 * w))
        self.s16 = nn.Sequential(_conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w), _conv(4 * w, 4 * w))
        self.lat16 = nn.Conv2d(4 * w, 2 * w, 1)
        self.fuse8 = _conv(2 * w, 2 * w)
        self.lat8 = nn.Conv2d(2 * w, w, 1)
        self.fuse4 = _conv(w, w)

        def head(cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(w, cout, 1))

        self.heatmap = head(num_classes)
        self.size = head(2)
        self.offset = head(2)
        nn.init.constant_(self.heatmap[-1].bias, -2.19)  # CenterNet prior: sigmoid ≈ 0.1 at start

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f4 = self.s4(self.s2(x))
        f8 = self.s8(f4)
        f16 = self.s16(f8)
        p8 = self.fuse8(f8 + F.interpolate(self.lat16(f16), size=f8.shape[-2:], mode="nearest"))
        p4 = self.fuse4(f4 + F.interpolate(self.lat8(p8), size=f4.shape[-2:], mode="nearest"))
        return self.heatmap(p4), self.size(p4), self.offset(p4)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- targets and loss -------------------------------------------------------------------------


def _radius(h: float, w: float, min_overlap: float = 0.7) -> float:
    """CenterNet's Gaussian radius: the largest centre shift that keeps IoU ≥ min_overlap."""
    a1, b1 = 1.0, h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return max(0.0, min(r1, r2, r3))


def make_targets(
    boxes: Sequence[Sequence[float]], labels: Sequence[int], num_classes: int, input_size: int, max_objects: int = 64
) -> dict[str, np.ndarray]:
    """Boxes (x1, y1, x2, y2, input pixels) → heatmap (K×H×W), and per object: index, size, offset, mask."""
    out = input_size // STRIDE
    hm = np.zeros((num_classes, out, out), dtype=np.float32)
    ind = np.zeros(max_objects, dtype=np.int64)
    wh = np.zeros((max_objects, 2), dtype=np.float32)
    off = np.zeros((max_objects, 2), dtype=np.float32)
    mask = np.zeros(max_objects, dtype=np.float32)
    ys, xs = np.ogrid[:out, :out]
    for k, ((x1, y1, x2, y2), c) in enumerate(zip(boxes[:max_objects], labels[:max_objects], strict=True)):
        w, h = (x2 - x1) / STRIDE, (y2 - y1) / STRIDE
        if w <= 0 or h <= 0:
            continue
        cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
        ix, iy = min(int(cx), out - 1), min(int(cy), out - 1)
        sigma = (2 * max(0, int(_radius(h, w))) + 1) / 6
        g = np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma * sigma)).astype(np.float32)
        np.maximum(hm[c], g, out=hm[c])
        ind[k] = iy * out + ix
        wh[k] = (w, h)
        off[k] = (cx - ix, cy - iy)
        mask[k] = 1.0
    return {"hm": hm, "ind": ind, "wh": wh, "off": off, "mask": mask}


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss (α=2, β=4), normalised by object count."""
    pred = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1.0 - pos
    pos_loss = torch.log(pred) * (1 - pred) ** 2 * pos
    neg_loss = torch.log(1 - pred) * pred**2 * (1 - target) ** 4 * neg
    n = pos.sum()
    return -(pos_loss.sum() + neg_loss.sum()) / torch.clamp(n, min=1.0)


def _gather(feat: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """B×C×H×W features at flat indices B×N → B×N×C."""
    b, c = feat.shape[:2]
    flat = feat.view(b, c, -1).permute(0, 2, 1)
    return flat.gather(1, ind.unsqueeze(-1).expand(-1, -1, c))


def loss(
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], t: dict[str, torch.Tensor], size_weight: float = 0.1
) -> tuple[torch.Tensor, dict[str, float]]:
    hm, wh, off = outputs
    l_hm = focal_loss(hm, t["hm"])
    m = t["mask"].unsqueeze(-1)
    n = m.sum().clamp(min=1.0)
    l_wh = (F.l1_loss(_gather(wh, t["ind"]) * m, t["wh"] * m, reduction="sum")) / n
    l_off = (F.l1_loss(_gather(off, t["ind"]) * m, t["off"] * m, reduction="sum")) / n
    total = l_hm + size_weight * l_wh + l_off
    return total, {"hm": l_hm.item(), "wh": l_wh.item(), "off": l_off.item()}


# --- decoding ---------------------------------------------------------------------------------


@torch.no_grad()
def decode(
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], top_k: int = 100, min_score: float = 0.01
) -> list[list[tuple[int, float, float, float, float, float]]]:
    """Heads → per image [(class, score, x1, y1, x2, y2)] in input pixels; 3×3 max-pool as NMS."""
    hm, wh, off = outputs
    heat = torch.sigmoid(hm)
    keep = (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).float()
    heat = heat * keep
    b, k, h, w = heat.shape
    scores, idx = heat.view(b, -1).topk(min(top_k, k * h * w))
    scores_np, idx_np = scores.numpy(), idx.numpy()
    cls, pix = idx_np // (h * w), idx_np % (h * w)
    ys, xs = pix // w, pix % w
    wh_np = wh.reshape(b, 2, -1).numpy()
    off_np = off.reshape(b, 2, -1).numpy()
    results = []
    for i in range(b):
        keep_i = scores_np[i] >= min_score
        p = pix[i][keep_i]
        cx = (xs[i][keep_i] + off_np[i, 0, p]) * STRIDE
        cy = (ys[i][keep_i] + off_np[i, 1, p]) * STRIDE
        bw = np.maximum(wh_np[i, 0, p], 0.0) * STRIDE
        bh = np.maximum(wh_np[i, 1, p], 0.0) * STRIDE
        dets = [
            (int(c), float(s), float(x - bw_ / 2), float(y - bh_ / 2), float(x + bw_ / 2), float(y + bh_ / 2))
            for c, s, x, y, bw_, bh_ in zip(cls[i][keep_i], scores_np[i][keep_i], cx, cy, bw, bh, strict=True)
        ]
        results.append(dets)
    return results
