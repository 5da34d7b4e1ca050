"""Timing primitives of the speed benchmark: the two modes it compares, device timers, memory, profiles."""

from __future__ import annotations

import contextlib
import gc
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..numerics import Numerics, configure_numerics, resolve_numerics

__all__ = ["GiB", "Mode", "baseline_mode", "optimized_mode", "precision", "synchronize", "time_calls", "summary",
           "reset_peak_memory", "peak_memory", "free_memory", "is_oom", "profile_steps", "device_name"]

GiB = float(1 << 30)


# ---------------------------------------------------------------------------------------------- modes
@dataclass(frozen=True)
class Mode:
    """One way of running the same code: the numerics of a ``--precision`` (``benchmarks.numerics``, the very
    function the trainer and the evaluation call) plus the optimizer and compilation choices."""

    key: str
    label: str
    numerics: Numerics
    trainer_optimizer: bool = False  # the trainer's build_optimizer (fused AdamW on CUDA) vs foreach AdamW
    compile: bool = False
    compile_mode: str | None = None
    channels_last: bool = False

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return self.numerics.autocast_dtype

    @property
    def peak_key(self) -> str:
        if self.amp_dtype in (torch.bfloat16, torch.float16):
            return "bf16"
        return "tf32" if self.numerics.tf32 else "fp32"

    def autocast(self, device: torch.device):
        return self.numerics.autocast(device.type)

    def describe(self) -> str:
        n = self.numerics
        parts = [f"--precision {n.precision}",
                 f"{n.as_record()['autocast']} autocast" if n.autocast_dtype else "fp32",
                 "TF32" if n.tf32 else "no TF32"]
        parts.append("trainer optimizer (fused AdamW on CUDA)" if self.trainer_optimizer else "foreach optimizer")
        if n.cudnn_benchmark:
            parts.append("cudnn.benchmark")
        parts.append(f"torch.compile({self.compile_mode or 'default'})" if self.compile else "eager")
        if self.channels_last:
            parts.append("channels-last")
        return ", ".join(parts)


def baseline_mode(device: torch.device) -> Mode:
    """fp32 eager: strict float32, TF32 off, PyTorch's default (foreach) optimizer, no compile."""
    return Mode("fp32_eager", "fp32 eager", resolve_numerics("fp32", device))


def optimized_mode(device: torch.device, *, precision: str = "bf16", compile: bool = False,
                   compile_mode: str | None = None, channels_last: bool = False) -> Mode:
    """What ``runners.run --precision P`` runs (default bf16), plus ``--compile`` / ``--channels-last``."""
    return Mode("optimized", "optimized", resolve_numerics(precision, device), trainer_optimizer=True,
                compile=compile, compile_mode=compile_mode, channels_last=channels_last)


@contextlib.contextmanager
def precision(mode: Mode, device: torch.device):
    """Apply the mode's numerics with :func:`benchmarks.numerics.configure_numerics`; restore the flags after."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    configure_numerics(mode.numerics.precision, device)
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


# ---------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], n: int, device: torch.device) -> list[float]:
    """Seconds per call of ``fn`` for ``n`` calls: CUDA events around each call, or perf_counter on a CPU."""
    if n <= 0:
        return []
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        synchronize(device)
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        synchronize(device)
        return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summary(times: Sequence[float]) -> dict[str, float]:
    if not times:
        return {}
    return {"median_s": statistics.median(times), "mean_s": statistics.fmean(times), "min_s": min(times),
            "max_s": max(times), "n": len(times)}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float] | None:
    if device.type != "cuda":
        return None
    return {"allocated_gib": torch.cuda.max_memory_allocated(device) / GiB,
            "reserved_gib": torch.cuda.max_memory_reserved(device) / GiB}


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def profile_steps(fn: Callable[[], Any], device: torch.device, *, steps: int = 3, row_limit: int = 25,
                  trace: Path | None = None) -> str:
    """Top ops/kernels of ``steps`` calls of ``fn`` by self device time (self CPU time on a CPU)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            fn()
        synchronize(device)
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    averages = prof.key_averages()
    for key in (("self_device_time_total", "self_cuda_time_total") if device.type == "cuda"
                else ("self_cpu_time_total",)):
        try:
            return averages.table(sort_by=key, row_limit=row_limit)
        except (AttributeError, KeyError, ValueError):
            continue
    return averages.table(row_limit=row_limit)
