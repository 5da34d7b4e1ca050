"""Numerical settings of a run, set in one place: ``--precision {bf16,tf32,fp32}``.

The trainer, the evaluation and the speed benchmark all call :func:`configure_numerics`, so the benchmark
times exactly what ``runners.run`` runs.

- ``bf16``: bf16 autocast on CUDA for the forward pass (losses and scores stay float32), TF32 for the
  float32 rest, ``cudnn.benchmark``. The harmonised profile's default on a GPU.
- ``tf32``: float32 everywhere with TF32 matmuls/convolutions and ``cudnn.benchmark``.
- ``fp32``: strict float32, TF32 off (what the official repositories train and test with).

On the CPU every precision is strict float32 (autocast stays off, so CPU results do not depend on it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used, so the CLI can list PRECISIONS without it
    import torch

PRECISIONS = ("bf16", "tf32", "fp32")


@dataclass(frozen=True)
class Numerics:
    """What :func:`configure_numerics` set: the autocast dtype (``None``: no autocast) and the backend flags."""

    precision: str
    autocast_dtype: torch.dtype | None
    tf32: bool
    cudnn_benchmark: bool

    def autocast(self, device_type: str):
        """The forward-pass context: ``torch.autocast`` when a dtype is set, otherwise a no-op context."""
        import torch

        return torch.autocast(device_type=device_type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def as_record(self) -> dict:
        import torch

        return {"precision": self.precision,
                "autocast": {torch.bfloat16: "bf16", None: "none"}.get(self.autocast_dtype, str(self.autocast_dtype)),
                "tf32": self.tf32, "cudnn_benchmark": self.cudnn_benchmark}


def resolve_numerics(precision: str, device: torch.device | str) -> Numerics:
    """The settings ``precision`` means on ``device``, without touching global state."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    cuda = torch.device(device).type == "cuda"
    if not cuda:
        return Numerics(precision, None, False, False)
    return Numerics(precision, torch.bfloat16 if precision == "bf16" else None,
                    tf32=precision in ("bf16", "tf32"), cudnn_benchmark=precision in ("bf16", "tf32"))


def configure_numerics(precision: str, device: torch.device | str) -> Numerics:
    """Set the process-wide backend flags for ``precision`` on ``device`` and return what was set."""
    import torch

    numerics = resolve_numerics(precision, device)
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = numerics.tf32
        torch.backends.cudnn.allow_tf32 = numerics.tf32
        torch.backends.cudnn.benchmark = numerics.cudnn_benchmark
    return numerics
