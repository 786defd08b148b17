"""Which device a torch trainer uses and how it keeps it busy (docs/architecture.md §3, "Devices").

One place for the choices every torch task makes the same way: CUDA when present (or the run's
`device` param), else the CPU; mixed precision on a GPU (bf16 autocast where the GPU supports it,
fp16 with a GradScaler otherwise; on the CPU only when `precision` asks for it, which is how the
tests exercise the path); channels-last memory layout and pinned host memory on a GPU; and the
defaults that follow from the machine (image side cap, batch, epochs, time budget, loader workers).

torch is imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from jobs.tasks.base import ParamError

DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Device:
    """The chosen device and how training runs on it."""

    kind: str  # "cpu" | "cuda"
    precision: str  # "fp32" | "bf16" | "fp16"
    name: str
    count: int  # devices of this kind on the machine
    memory_gb: float | None  # per device (GPU memory; host memory for the CPU)

    @property
    def cuda(self) -> bool:
        return self.kind == "cuda"

    def describe(self) -> dict[str, Any]:
        """For the train metrics and the run page."""
        return {f"device_{k}" if k != "kind" else "device": v for k, v in asdict(self).items()}


def _host_memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def select(params: Mapping[str, Any] | None = None) -> Device:
    """CUDA when available, else the CPU; the `device` param ("cpu"/"cuda") forces one (asking for
    CUDA where there is none is a ParamError, not a silent CPU run the user would pay GPU time for).
    `precision` ("fp32"/"bf16"/"fp16") overrides the default: bf16 on GPUs that support it, fp16
    elsewhere on a GPU, fp32 on the CPU."""
    import torch

    params = params or {}
    requested = params.get("device")
    if requested is not None and requested not in DEVICES:
        raise ParamError(f'param device must be "cpu" or "cuda", not {requested!r}')
    precision = params.get("precision")
    if precision is not None and precision not in PRECISIONS:
        raise ParamError(f'param precision must be "fp32", "bf16" or "fp16", not {precision!r}')
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise ParamError('param device is "cuda" but this machine has no usable CUDA device')
    kind = requested or ("cuda" if has_cuda else "cpu")
    if kind == "cuda":
        props = torch.cuda.get_device_properties(0)
        default = "bf16" if _native_bf16(torch) else "fp16"
        return Device("cuda", precision or default, str(props.name), torch.cuda.device_count(),
                      round(props.total_memory / 2**30, 1))
    if precision == "fp16":
        raise ParamError('param precision "fp16" needs a GPU; use "bf16" or "fp32" on the CPU')
    return Device("cpu", precision or "fp32", "cpu", os.cpu_count() or 1, _host_memory_gb())


def _native_bf16(torch: Any) -> bool:
    """bf16 in hardware (Ampere and later); an emulated one (a T4) is slower than fp16 + GradScaler."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # an older torch without the argument
        return bool(torch.cuda.is_bf16_supported())


def torch_device(device: Device, rank: int = 0) -> Any:
    import torch

    return torch.device(f"cuda:{rank % max(1, device.count)}" if device.cuda else "cpu")


@contextlib.contextmanager
def autocast(device: Device) -> Iterator[None]:
    """Mixed precision for the forward pass and the loss (a no-op in fp32)."""
    import torch

    if device.precision == "fp32":
        yield
        return
    dtype = torch.bfloat16 if device.precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.kind, dtype=dtype):
        yield


def grad_scaler(device: Device) -> Any:
    """A GradScaler for fp16 (its small exponent range underflows gradients); disabled otherwise."""
    import torch

    return torch.amp.GradScaler(device.kind, enabled=device.precision == "fp16")


def prepare_model(model: Any, device: Device, rank: int = 0) -> Any:
    """Move to the device; channels-last on a GPU (faster convolutions with tensor cores)."""
    import torch

    model = model.to(torch_device(device, rank))
    if device.cuda:
        model = model.to(memory_format=torch.channels_last)
    return model


def to_device(x: Any, device: Device, rank: int = 0, *, image: bool = False) -> Any:
    """A batch tensor onto the device (non-blocking from pinned memory); images channels-last."""
    import torch

    x = x.to(torch_device(device, rank), non_blocking=device.cuda)
    if image and device.cuda and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@dataclass(frozen=True)
class MachineDefaults:
    """Training defaults that follow from the hardware; every one can be set per run (params)."""

    max_side: int  # images are resized to their own common size, at most this
    batch_size: int
    epochs: int
    patience: int
    max_seconds: float
    loader_workers: int


def machine_defaults(device: Device, max_hours: float | None = None, *, cpu_epochs: int = 15,
                     cpu_patience: int = 6) -> MachineDefaults:
    """CPU: today's quick defaults (128 px cap, 240 s, in-process loading on the 2-core machines).
    GPU: the images' own size up to 320 px, larger batches, many epochs bounded by early stopping
    and a budget of 85% of the stage's max_hours less 10 minutes for loading and writing."""
    if not device.cuda:
        return MachineDefaults(128, 64, cpu_epochs, cpu_patience, 240.0, 0)
    hours = max_hours if max_hours and max_hours > 0 else 24.0
    budget = max(300.0, hours * 3600 * 0.85 - 600)
    workers = max(1, min(8, (os.cpu_count() or 2) // max(1, device.count) - 1))
    return MachineDefaults(320, 256, 200, 12, budget, workers)
