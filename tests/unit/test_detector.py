"""The CenterNet-style detector: targets decode back to their boxes, and a tiny model learns a
synthetic two-class task well above chance in seconds (a test that can fail)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jobs.tasks import box_metrics, detector  # noqa: E402
from jobs.tasks.bounding_box import to_tensor  # noqa: E402


def test_targets_decode_to_the_same_boxes() -> None:
    boxes = [(8.0, 12.0, 30.0, 40.0), (40.0, 4.0, 60.0, 20.0)]
    t = detector.make_targets(boxes, [1, 0], num_classes=2, input_size=64)
    assert t["hm"].shape == (2, 16, 16) and t["hm"].max() == 1.0 and t["mask"].sum() == 2
    # "perfect" head outputs: logits of the target heatmap, size/offset written at the centres
    hm = torch.logit(torch.from_numpy(t["hm"]).clamp(1e-6, 1 - 1e-6))[None]
    wh = torch.zeros(1, 2, 16, 16)
    off = torch.zeros(1, 2, 16, 16)
    for k in range(2):
        iy, ix = divmod(int(t["ind"][k]), 16)
        wh[0, :, iy, ix] = torch.from_numpy(t["wh"][k])
        off[0, :, iy, ix] = torch.from_numpy(t["off"][k])
    dets = detector.decode((hm, wh, off), top_k=10, min_score=0.5)[0]
    got = sorted((c, *np.round(b, 3)) for c, _, *b in dets)
    assert got == [(0, 40.0, 4.0, 60.0, 20.0), (1, 8.0, 12.0, 30.0, 40.0)]


def test_size_of_the_reference_model() -> None:
    assert 400_000 <= detector.n_params(detector.CenterNet(10, 1, 32)) <= 700_000


def _synthetic(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list, list]:
    """64 px images with one or two shapes: class 0 a filled square, class 1 a hollow square."""
    images = np.zeros((n, 64, 64), dtype=np.uint8)
    boxes, labels = [], []
    for i in range(n):
        bs, ls = [], []
        for slot in range(int(rng.integers(1, 3))):
            side = int(rng.integers(10, 18))
            x = int(rng.integers(0, 28 - side)) + 32 * slot
            y = int(rng.integers(0, 64 - side))
            cls = int(rng.integers(0, 2))
            images[i, y : y + side, x : x + side] = 255
            if cls == 1:
                images[i, y + 3 : y + side - 3, x + 3 : x + side - 3] = 0
            bs.append((float(x), float(y), float(x + side), float(y + side)))
            ls.append(cls)
        boxes.append(bs)
        labels.append(ls)
    return images, boxes, labels


def test_tiny_detector_learns_above_chance() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x, boxes, labels = _synthetic(96, rng)
    xv, bv, lv = _synthetic(24, np.random.default_rng(1))
    model = detector.CenterNet(2, 1, width=16)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3)
    model.train()
    for _step in range(60):
        idx = rng.choice(len(x), 16, replace=False)
        tg = [detector.make_targets(boxes[i], labels[i], 2, 64) for i in idx]
        t = {k: torch.from_numpy(np.stack([g[k] for g in tg])) for k in tg[0]}
        loss, _ = detector.loss(model(to_tensor(x[idx])), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        dets = detector.decode(model(to_tensor(xv)), top_k=20, min_score=0.01)
    names = ["filled", "hollow"]
    pairs = [
        (
            [{"name": names[c], "box": b} for b, c in zip(bs, ls, strict=True)],
            [{"name": names[c], "box": (x1, y1, x2, y2), "score": s} for c, s, x1, y1, x2, y2 in d],
        )
        for bs, ls, d in zip(bv, lv, dets, strict=True)
    ]
    m = box_metrics.detection_metrics(pairs, names)
    assert m["map50"] > 0.8, m  # 0.996 here; an untrained model scores ~0
