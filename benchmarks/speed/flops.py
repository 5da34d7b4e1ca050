"""FLOPs of a call (``torch.utils.flop_counter``, CPU SDPA included) and the datasheet peaks for MFU."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

__all__ = ["PEAK_TFLOPS", "peak_tflops", "count_flops"]

# ---------------------------------------------------------------------------------------------- peaks
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    # dense (no 2:4 sparsity) datasheet peaks, TFLOP/s; matched against torch.cuda.get_device_name()
    "H200": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0},
    "H100 NVL": {"bf16": 835.0, "tf32": 418.0, "fp32": 60.0},
    "H100": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},  # SXM5 / HBM3
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6},
}
"""Peak TFLOP/s per GPU and precision (NVIDIA datasheets, dense). The longest matching key wins."""


def peak_tflops(device_name: str) -> dict[str, float] | None:
    """The :data:`PEAK_TFLOPS` entry whose key is the longest substring of ``device_name``."""
    hits = [k for k in PEAK_TFLOPS if k.lower() in device_name.lower()]
    return dict(PEAK_TFLOPS[max(hits, key=len)]) if hits else None



# ---------------------------------------------------------------------------------------------- FLOPs
_CENSUS_FRAGMENTS = ("scaled_dot_product", "flash_attention", "efficient_attention", "_softmax", "grid_sampler",
                     "native_group_norm", "convolution")


class _OpCensus(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts calls of the aten ops that tell which attention kernels ran (and softmax / grid_sample / conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket).replace("aten.", "")
        if any(f in name for f in _CENSUS_FRAGMENTS):
            self.calls[name] = self.calls.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _flop_counter():
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    custom: dict[Any, Any] = {}
    # the CPU SDPA kernel is not in FlopCounterMode's table (torch 2.14): count it like the CUDA ones
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        def forward(query, key, value, *args, out_val=None, **kwargs):  # noqa: ANN001, ANN202
            return fc.sdpa_flop_count(query.shape, key.shape, value.shape)

        def backward(grad_out, query, key, value, *args, out_val=None, **kwargs):  # noqa: ANN001, ANN202
            return fc.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)

        forward._get_raw = backward._get_raw = True  # type: ignore[attr-defined]  # shapes taken here
        for packet, formula in ((aten._scaled_dot_product_flash_attention_for_cpu, forward),
                                (aten._scaled_dot_product_flash_attention_for_cpu_backward, backward)):
            # the packet and every overload: the counter looks an op up by overload first (and tries to
            # decompose it when absent), then books it by packet
            custom[packet] = formula
            for overload in packet.overloads():
                custom[getattr(packet, overload)] = formula
    counter = fc.FlopCounterMode(display=False, custom_mapping=custom)
    # Global totals only: the per-module attribution (ModuleTracker) fails on no-grad views of parameters
    # (e.g. ``embedding.weight[None].expand(...)`` under no_grad / inference_mode, torch 2.14).
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _GlobalOnly()
    return counter


class _GlobalOnly(contextlib.nullcontext):
    """Stands in for FlopCounterMode's ModuleTracker: every FLOP is booked under "Global"."""

    parents = frozenset({"Global"})
    is_bw = False


def count_flops(fn: Callable[[], Any]) -> dict[str, Any]:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention; forward and backward), by op, and a
    census of attention-related kernel calls."""
    counter = _flop_counter()
    census = _OpCensus()
    with counter, census:
        fn()
    by_op = {str(k).replace("aten.", ""): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    attention = {k: v for k, v in by_op.items() if "attention" in k}
    return {"total": int(counter.get_total_flops()), "by_op": by_op, "attention_flops": attention,
            "calls": dict(sorted(census.calls.items()))}

