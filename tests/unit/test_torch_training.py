"""Device selection, mixed precision, the decoded-image cache, checkpoints/resume and
data-parallel training of the shared torch loop (jobs/tasks/torch_device.py, trainloop.py), on the
CPU: bf16 autocast runs there, and two gloo processes stand in for two GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs.tasks import torch_device, trainloop
from jobs.tasks.base import ParamError
from jobs.tasks.image_single_classification import TASK
from tests.unit import image_fixtures

PARAMS = {"epochs": 6, "batch_size": 16, "threads": 1}


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def test_cpu_is_chosen_without_cuda_and_described() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    device = torch_device.select({})
    assert (device.kind, device.precision, device.name) == ("cpu", "fp32", "cpu") and device.count >= 1
    described = device.describe()
    assert described["device"] == "cpu" and described["device_precision"] == "fp32"
    assert set(described) == {"device", "device_name", "device_count", "device_memory_gb", "device_precision"}
    assert torch_device.select({"device": "cpu", "precision": "bf16"}).precision == "bf16"


@pytest.mark.parametrize("params, match", [
    ({"device": "tpu"}, "param device"),
    ({"precision": "fp8"}, "param precision"),
    ({"device": "cpu", "precision": "fp16"}, "needs a GPU"),
])
def test_bad_device_params_are_named(params: dict[str, Any], match: str) -> None:
    with pytest.raises(ParamError, match=match):
        torch_device.select(params)


def test_asking_for_cuda_without_one_fails_instead_of_running_on_the_cpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ParamError, match="no usable CUDA"):
        torch_device.select({"device": "cuda"})


def test_bf16_autocast_runs_on_the_cpu_and_fp32_is_a_no_op() -> None:
    import torch

    layer = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    bf16 = torch_device.Device("cpu", "bf16", "cpu", 1, None)
    with torch_device.autocast(bf16):
        assert layer(x).dtype == torch.bfloat16
    with torch_device.autocast(torch_device.Device("cpu", "fp32", "cpu", 1, None)):
        assert layer(x).dtype == torch.float32
    assert not torch_device.grad_scaler(bf16).is_enabled()  # only fp16 needs loss scaling


def test_machine_defaults_cpu_quick_gpu_from_the_stage_budget() -> None:
    cpu = torch_device.machine_defaults(torch_device.Device("cpu", "fp32", "cpu", 2, None))
    assert (cpu.max_side, cpu.batch_size, cpu.max_seconds, cpu.loader_workers) == (128, 64, 240.0, 0)
    gpu = torch_device.machine_defaults(torch_device.Device("cuda", "bf16", "H100", 1, 80.0), max_hours=2.0)
    assert gpu.max_side == 320 and gpu.batch_size == 256 and gpu.loader_workers >= 1
    assert 3600 < gpu.max_seconds < 2 * 3600  # inside the stage's max_hours, with room to write the model


def test_training_in_bf16_on_the_cpu_reaches_the_bar(tmp_path: Path) -> None:
    ds = image_fixtures.single_dataset(tmp_path / "images")
    metrics = TASK.train(ds, str(tmp_path / "model"), {**PARAMS, "precision": "bf16"}, _quiet)
    assert (metrics["device"], metrics["device_precision"], metrics["processes"]) == ("cpu", "bf16", 1)
    ev = TASK.evaluate(ds, TASK.load_predictor(str(tmp_path / "model")), _quiet)
    assert ev.metrics["accuracy"] > 0.5  # the bar of test_image_single_model (chance 0.33)


def test_images_are_decoded_once_into_a_memmap_cache(tmp_path: Path) -> None:
    import numpy as np

    from jobs.tasks.image_single_classification import cache_arrays

    ds = image_fixtures.single_dataset(tmp_path / "images", n_per_class=4)
    with trainloop.using(trainloop.Session(cache_dir=str(tmp_path / "cache"))):
        x = cache_arrays(ds.examples, 18, "L", "train")
    assert isinstance(x, np.memmap) and x.shape == (12, 18, 18) and x.dtype == np.uint8
    assert Path(x.filename) == tmp_path / "cache" / "train-18-L.npy"
    data = trainloop.ArrayData(str(x.filename), np.arange(12))
    xb, yb = data[[5, 1, 3]]  # one batch, in the order asked for
    assert np.array_equal(xb.numpy(), x[[5, 1, 3]]) and yb.tolist() == [5, 1, 3]


def _loop(session: trainloop.Session, crash_at: int | None = None, epochs: int = 3) -> dict[str, Any]:
    """A tiny linear model through trainloop.run; raises after `crash_at` optimizer steps."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(64, 4, 4), dtype=np.uint8)
    y = (x.reshape(64, -1).mean(axis=1) > 127).astype(np.int64)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    steps = [0]

    def step_loss(net: Any, xb: Any, yb: Any, gen: Any) -> Any:
        steps[0] += 1
        if crash_at is not None and steps[0] > crash_at:
            raise RuntimeError("killed")
        return torch.nn.functional.cross_entropy(net(xb), yb)

    cfg = trainloop.LoopConfig(epochs=epochs, batch_size=8, lr=1e-2, patience=10, max_seconds=600)
    with trainloop.using(session):
        result = trainloop.run(model, trainloop.ArrayData(x, y), step_loss=step_loss, validate=lambda m: 0.5,
                               cfg=cfg, device=torch_device.select({}), progress=_quiet, metric="acc",
                               fingerprint="fp")
    return {**result, "steps": steps[0]}


def test_checkpoint_mid_epoch_and_resume_in_a_later_attempt(tmp_path: Path) -> None:
    import torch

    a1 = trainloop.Session(str(tmp_path / "a1" / "checkpoints"), attempt=1, checkpoint_seconds=0.0)
    with pytest.raises(RuntimeError, match="killed"):
        _loop(a1, crash_at=11)  # 8 steps per epoch: dies in the middle of epoch 2
    ckpt = torch.load(tmp_path / "a1" / "checkpoints" / "last.pt", weights_only=True)  # plain tensors and values
    assert (ckpt["epoch"], ckpt["batches_done"], ckpt["attempt"]) == (1, 3, 1)
    a2 = trainloop.Session(str(tmp_path / "a2" / "checkpoints"), (str(tmp_path / "a1" / "checkpoints"),), attempt=2)
    result = _loop(a2)
    assert result["resumed_from"] == {"attempt": 1, "epoch": 1, "batches": 3}
    assert result["steps"] == 5 + 8  # the rest of epoch 2 and epoch 3, not the whole run again
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]  # epoch 1's record came with the checkpoint
    other = trainloop.Session(str(tmp_path / "b" / "checkpoints"), (str(tmp_path / "a2" / "checkpoints"),), attempt=2)
    with trainloop.using(other):
        assert trainloop.newest_checkpoint(other, "another fingerprint") is None  # other data: not resumed


def test_two_gloo_processes_train_to_the_same_bar_as_one(tmp_path: Path) -> None:
    ds = image_fixtures.single_dataset(tmp_path / "images")
    messages: list[str] = []

    def progress(message: str, **fields: Any) -> None:
        messages.append(message)

    metrics = TASK.train(ds, str(tmp_path / "ddp"), {**PARAMS, "processes": 2}, progress)
    assert metrics["processes"] == 2 and metrics["epochs_run"] >= 1
    assert any("2 processes" in m for m in messages) and any(m.startswith("epoch 1/") for m in messages)
    ev = TASK.evaluate(ds, TASK.load_predictor(str(tmp_path / "ddp")), _quiet)
    assert ev.metrics["accuracy"] > 0.5  # the one-process bar of test_image_single_model


def test_detector_trains_data_parallel_too(tmp_path: Path) -> None:
    from jobs.tasks import bounding_box
    from lbtrain.adapters.labelbox import FileLabelbox
    from lbtrain.datasets import mnist_boxes

    mnist_boxes.build("bounding_box", str(tmp_path / "lb"), "mr-tiny", limit=30)
    rows = list(FileLabelbox(str(tmp_path / "lb")).export_rows("mr-tiny"))
    dataset = bounding_box.TASK.convert(rows, "mr-tiny", {}, str(tmp_path / "etl"), _quiet)
    tiny = {"epochs": 2, "width": 8, "input_size": 64, "threads": 1, "processes": 2}
    metrics = bounding_box.TASK.train(dataset, str(tmp_path / "model"), tiny, _quiet)
    assert metrics["processes"] == 2 and metrics["epochs_run"] == 2 and metrics["device"] == "cpu"
    predictor = bounding_box.TASK.load_predictor(str(tmp_path / "model"))
    assert 0.0 <= bounding_box.TASK.evaluate(dataset, predictor, _quiet).metrics["map50"] <= 1.0


def test_resume_false_trains_from_scratch(tmp_path: Path) -> None:
    a1 = trainloop.Session(str(tmp_path / "a1" / "checkpoints"), attempt=1)
    _loop(a1, epochs=2)
    again = trainloop.session_for_job(str(tmp_path / "root"), "r", "train", 2, str(tmp_path / "a2"), resume=False)
    assert again.resume_dirs == () and not again.resume
    fresh = trainloop.Session(str(tmp_path / "a1" / "checkpoints"), attempt=2, resume=False)
    assert _loop(fresh, epochs=2)["resumed_from"] is None  # its own checkpoint is not loaded either
    resumed = trainloop.Session(str(tmp_path / "a2" / "checkpoints"), (str(tmp_path / "a1" / "checkpoints"),),
                                attempt=2)
    assert _loop(resumed, epochs=2)["resumed_from"]["epoch"] == 2
