"""Training and evaluation speed of one method: the optimised path against the same code in fp32 eager.

    python -m benchmarks.speed --method rein                      # paper scale on a GPU, miniature on a CPU
    python -m benchmarks.speed --method frozen_m2f --scale miniature --res 64 --steps 3   # CI-sized

What is timed (data already on the device, random weights, synthetic but realistic label maps):

- **train**: the runner's full training step (``runners.train``): ``Method.training_step`` under autocast,
  sum of the losses, ``zero_grad``, ``backward``, gradient clipping when the recipe clips, optimizer step
  (``Method.param_groups`` + the recipe's optimizer). Median over ``--steps`` after ``--warmup`` steps.
- **eval**: ``Method.predict`` on ``--eval-batch`` sliding windows at once (``batch_windows`` of
  :func:`benchmarks.evaluate.evaluate_split`) under ``inference_mode``.

Two modes run in one process on freshly built, identically seeded models:

- ``fp32 eager``: fp32 (TF32 off for matmuls and cuDNN), foreach AdamW, no compile: the in-run baseline;
- ``optimized``: bf16 autocast on CUDA, TF32 for the fp32 rest, cudnn.benchmark, the trainer's optimizer
  (fused AdamW on CUDA), plus ``--compile`` / ``--channels-last`` when asked.
  ``--grad-checkpointing`` applies to both (it trades time for memory; the ratio stays like for like).

Times come from CUDA events (``time.perf_counter`` on a CPU). FLOPs are counted once per mode with
``torch.utils.flop_counter.FlopCounterMode`` (eager, without activation recomputation, i.e. *model* FLOPs;
SDPA's CPU kernel is counted too); MFU is achieved TFLOP/s over the peak of :data:`PEAK_TFLOPS` for the GPU
(bf16 dense peak for the optimised mode, fp32 peak for the baseline). Extra modes:

- ``--data``: the real decoding + augmentation pipeline (the GTA5 loader, the recipe's ``TrainTransform``)
  on GTA-size PNGs written to a temporary folder, timed per data-loader worker count;
- ``--eval-protocol gta2cbm``: the full-protocol evaluation time estimated from timed single images
  (windows per image from the protocol's test resize and slide settings at typical image sizes);
- ``--sync-debug``: one step under ``torch.cuda.set_sync_debug_mode("warn")``, host syncs listed by place;
- ``--profile``: the top kernels of three optimised steps (``torch.profiler``);
- ``--probe``: GPU ceilings (bf16 matmul, copy bandwidth) and micro-benchmarks of suspect kernels (EVA02's
  2730-wide SwiGLU GEMMs, SDPA back-ends, an EVA02 block against a DINOv2 block);
- ``--check-grad-checkpointing``: losses and gradients with and without activation checkpointing;
- ``--suite rein,tqdm,...`` (or ``--suite targets``): one process per method with the other flags, then one
  summary table (``--json-dir DIR`` keeps each method's numbers).

The short table is printed last; ``--json OUT`` writes every number.

Layering: the timing code works on any object with ``training_step`` / ``predict`` / ``param_groups``;
only the command-line glue imports ``methods`` (the registry) and ``runners.train`` (the trainer's optimizer
and collate function), lazily, so ``benchmarks`` keeps no import-time dependency on higher packages.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from .evaluate import infer_logits, resize_logits, slide_windows
from .metrics import confusion_matrix
from .protocols import InferenceSpec, keep_ratio_size

__all__ = [
    "PEAK_TFLOPS",
    "TARGETS",
    "TEST_SPLITS",
    "Mode",
    "peak_tflops",
    "synthetic_batch",
    "count_flops",
    "train_step",
    "bench_train",
    "bench_eval",
    "check_grad_checkpointing",
    "find_host_syncs",
    "write_gta_like",
    "bench_data",
    "protocol_geometry",
    "estimate_protocol_eval",
    "attention_report",
    "main",
]

# ---------------------------------------------------------------------------------------------- constants
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

TARGETS: dict[str, dict[str, float]] = {
    # issue "Performance: fast training and evaluation on one GPU": H100, bf16, 512x512, recipe batch
    "rein": {"train_img_s": 90.0}, "set": {"train_img_s": 90.0}, "vireo": {"train_img_s": 90.0},
    "tqdm": {"train_img_s": 45.0}, "vltseg": {"train_img_s": 45.0},
}
SPEEDUP_TARGET = 3.0
EVAL_TARGET_S = 240.0  # gta2cbm targets (3,500 images) in under 4 minutes
VIREO_MEMORY_GIB = 24.0  # Vireo at batch 8

TEST_SPLITS: dict[tuple[str, str], tuple[tuple[int, int], int, str]] = {
    # (dataset, split) -> (typical native size (h, w), number of images, file type of the images)
    ("cityscapes", "val"): ((1024, 2048), 500, ".png"),
    ("bdd100k", "val"): ((720, 1280), 1000, ".jpg"),
    ("mapillary", "validation"): ((3024, 4032), 2000, ".jpg"),  # sizes vary; 4:3 phone images are typical
    ("gta5", "val"): ((1052, 1914), 6382, ".png"),  # RobustNet's val list (the gta2cbm rPD reference)
    ("gta5", "all"): ((1052, 1914), 24966, ".png"),
    ("cityscapes", "train"): ((1024, 2048), 2975, ".png"),
    ("acdc", "val"): ((1080, 1920), 406, ".png"),
    ("acdc", "test"): ((1080, 1920), 2000, ".png"),
}
"""Typical test images per split, for :func:`estimate_protocol_eval` (datasets.md §1)."""

GTA_SIZE = (1052, 1914)
GiB = float(1 << 30)


def peak_tflops(device_name: str) -> dict[str, float] | None:
    """The :data:`PEAK_TFLOPS` entry whose key is the longest substring of ``device_name``."""
    hits = [k for k in PEAK_TFLOPS if k.lower() in device_name.lower()]
    return dict(PEAK_TFLOPS[max(hits, key=len)]) if hits else None


# ---------------------------------------------------------------------------------------------- modes
@dataclass(frozen=True)
class Mode:
    """One way of running the same code."""

    key: str
    label: str
    amp_dtype: torch.dtype | None = None
    trainer_optimizer: bool = False  # runners.train.build_optimizer (fused AdamW on CUDA) vs foreach AdamW
    compile: bool = False
    compile_mode: str | None = None
    channels_last: bool = False
    tf32: bool = False
    cudnn_benchmark: bool = False

    @property
    def peak_key(self) -> str:
        if self.amp_dtype in (torch.bfloat16, torch.float16):
            return "bf16"
        return "tf32" if self.tf32 else "fp32"

    def describe(self) -> str:
        parts = [f"{_dtype_name(self.amp_dtype)} autocast" if self.amp_dtype else "fp32"]
        parts.append("TF32" if self.tf32 else "no TF32")
        parts.append("trainer optimizer (fused AdamW on CUDA)" if self.trainer_optimizer else "foreach optimizer")
        if self.cudnn_benchmark:
            parts.append("cudnn.benchmark")
        parts.append(f"torch.compile({self.compile_mode or 'default'})" if self.compile else "eager")
        if self.channels_last:
            parts.append("channels-last")
        return ", ".join(parts)


def _dtype_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "none"}.get(dtype, str(dtype))


def baseline_mode() -> Mode:
    return Mode("fp32_eager", "fp32 eager")


def optimized_mode(device: torch.device, *, amp_dtype: torch.dtype | None | str = "auto", compile: bool = False,
                   compile_mode: str | None = None, channels_last: bool = False) -> Mode:
    if amp_dtype == "auto":
        amp_dtype = torch.bfloat16 if device.type == "cuda" else None
    cuda = device.type == "cuda"
    return Mode("optimized", "optimized", amp_dtype=amp_dtype, trainer_optimizer=True, compile=compile,
                compile_mode=compile_mode, channels_last=channels_last, tf32=cuda, cudnn_benchmark=cuda)


@contextlib.contextmanager
def precision(mode: Mode):
    """TF32 / cudnn.benchmark settings of a mode, restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = mode.tf32
    torch.backends.cudnn.allow_tf32 = mode.tf32
    torch.backends.cudnn.benchmark = mode.cudnn_benchmark
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


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


def _summary(times: Sequence[float]) -> dict[str, float]:
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


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


# ---------------------------------------------------------------------------------------------- inputs
def synthetic_batch(batch: int, size: tuple[int, int], *, num_classes: int = 19, seed: int = 0,
                    device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Random images float32[B,3,H,W] in 0..255 and label maps int64[B,H,W] that look like street scenes to
    the loss: 8-14 classes per image in blocky regions, about 5 % ignore. Never zeros."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    images = torch.rand(batch, 3, h, w, generator=g) * 255.0
    gh, gw = max(2, h // 32), max(2, w // 32)
    labels = []
    for _ in range(batch):
        k = int(torch.randint(8, 15, (1,), generator=g))
        classes = torch.randperm(num_classes, generator=g)[:k]
        cells = classes[torch.randint(0, k, (gh, gw), generator=g)]
        cells[torch.rand(gh, gw, generator=g) < 0.05] = 255
        lab = torch.nn.functional.interpolate(cells[None, None].float(), size=(h, w), mode="nearest")[0, 0]
        labels.append(lab.long())
    return images.to(device), torch.stack(labels).to(device)


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


# ---------------------------------------------------------------------------------------------- the step
def train_step(method: Any, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor, *,
               amp_dtype: torch.dtype | None, grad_clip: float | None = None,
               params: Sequence[Tensor] | None = None, step_fn: Callable | None = None) -> Tensor:
    """One training step exactly as ``runners.train.Trainer`` runs it (no LR update, no logging)."""
    step_fn = step_fn or method.training_step
    with autocast(images.device, amp_dtype):
        losses = step_fn(images, labels)
    total = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params if params is not None else _opt_params(optimizer), grad_clip)
    optimizer.step()
    return total.detach()


def _opt_params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def make_optimizer(method: Any, recipe: Any, mode: Mode) -> torch.optim.Optimizer:
    """The trainer's optimizer (``runners.train.build_optimizer``: fused AdamW on CUDA) for the optimised mode;
    the same parameter groups with PyTorch's default (foreach) implementation for the baseline."""
    from runners.train import build_optimizer  # CLI glue (see the module docstring)

    if mode.trainer_optimizer:
        return build_optimizer(method, recipe)
    groups = method.param_groups(recipe)
    if not groups:
        raise ValueError(f"{getattr(method, 'name', method)} has no trainable parameters")
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps,
                                 weight_decay=recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


# ---------------------------------------------------------------------------------------------- method specs
@dataclass
class MethodSpec:
    """What to build: a registered method at a scale, with its recipe (batch and crop possibly overridden)."""

    name: str
    backbone: str | None
    scale: str
    source: str
    batch_size: int
    res: tuple[int, int]
    eval_res: tuple[int, int]
    eval_batch: int
    grad_checkpointing: bool
    recipe: Any
    method_class: Any
    config: Any

    def build(self, device: torch.device, *, seed: int = 0, grad_checkpointing: bool | None = None) -> Any:
        from methods.backbones.vit import set_grad_checkpointing

        config = dataclasses.replace(self.config) if dataclasses.is_dataclass(self.config) else self.config
        torch.manual_seed(seed)
        with torch.device(device):
            method = self.method_class(config)
        method.to(device)
        if getattr(method, "style_bank", False) is None and getattr(config, "style_mixing", False):
            # FAMix mixes styles from a bank mined from the training set before training; for timing, a
            # synthetic bank of the same shape (same sampling and mixing cost) stands in for it
            from methods.famix import StyleBank

            method.set_style_bank(StyleBank.synthetic(config.resnet.channels[0], seed=seed))
        gc_on = self.grad_checkpointing if grad_checkpointing is None else grad_checkpointing
        n = set_grad_checkpointing(method, gc_on)
        if gc_on and n == 0:
            warnings.warn(f"{self.name}: no ViTBackbone found; --grad-checkpointing has no effect", stacklevel=2)
        return method

    def describe(self) -> str:
        bb = self.backbone or getattr(self.config, "backbone", "") or "default"
        return (f"{self.name} / {bb} ({self.scale}), source {self.source}, batch {self.batch_size}, "
                f"train {self.res[0]}x{self.res[1]}, eval windows {self.eval_res[0]}x{self.eval_res[1]} "
                f"x{self.eval_batch}" + (", grad checkpointing" if self.grad_checkpointing else ""))


def resolve_method(name: str, *, backbone: str | None = None, scale: str = "miniature", source: str = "gta5",
                   batch_size: int | None = None, res: int | Sequence[int] | None = None,
                   eval_res: int | Sequence[int] | None = None, eval_batch: int = 2,
                   grad_checkpointing: bool = False, config: Any = None) -> MethodSpec:
    """Resolve a registered method name like the runner does (default config for the scale, the recipe of
    the source; ``config_for_source`` when the method has it)."""
    try:
        from methods.registry import get_method_class  # CLI glue (see the module docstring)

        cls = get_method_class(name)
    except ModuleNotFoundError as exc:
        raise SystemExit(
            f"error: importing the method registry needs the package {exc.name!r}, which is not installed here. "
            "Every method module is imported to fill the registry; install the pinned stack (specs/install.md), "
            "or on a lent GPU carry it as wheels (.library/device/README.md): e.g. open_clip_torch==3.3.0, "
            "ftfy, wcwidth, timm==1.0.31") from exc
    cls = get_method_class(name)
    bb = backbone or (cls.backbones[0] if getattr(cls, "backbones", ()) else None)
    recipe = cls.recipe(source=source, scale=scale, backbone=bb)
    if config is None:
        config = cls.default_config(bb, scale=scale)
        hook = getattr(cls, "config_for_source", None)
        if hook is not None:
            config = hook(config, source)
    train_res = _pair(res) if res is not None else tuple(int(x) for x in recipe.crop_size)
    if eval_res is None:
        eval_res = (512, 512) if scale == "paper" else (256, 256)
    return MethodSpec(name=cls.name, backbone=bb, scale=scale, source=source,
                      batch_size=int(batch_size or recipe.batch_size), res=train_res, eval_res=_pair(eval_res),
                      eval_batch=int(eval_batch), grad_checkpointing=grad_checkpointing, recipe=recipe,
                      method_class=cls, config=config)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        return (int(parts[0]), int(parts[-1]))
    a, b = value
    return (int(a), int(b))


# ---------------------------------------------------------------------------------------------- train / eval
def _flops_without_recompute(method: Any, fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Model FLOPs of ``fn`` with activation checkpointing switched off (MFU counts no recomputation);
    falls back to counting with it on when that runs out of memory."""
    from methods.backbones.vit import set_grad_checkpointing

    states = [(m, m.cfg) for m in method.modules() if hasattr(m, "cfg") and hasattr(m.cfg, "grad_checkpointing")]
    was_on = any(c.grad_checkpointing for _, c in states)
    try:
        if was_on:
            set_grad_checkpointing(method, False)
        out = count_flops(fn)
        out["includes_recompute"] = False
        return out
    except Exception as exc:  # noqa: BLE001
        if not (was_on and _is_oom(exc)):
            raise
    finally:
        for m, c in states:
            m.cfg = c
    free_memory(device)
    out = count_flops(fn)
    out["includes_recompute"] = True
    return out


def bench_train(spec: MethodSpec, mode: Mode, images: Tensor, labels: Tensor, *, steps: int, warmup: int,
                device: torch.device, seed: int = 0, count: bool = True, keep: bool = False) -> dict[str, Any]:
    """Time the full training step of ``spec`` in ``mode``. Returns times, img/s, memory, FLOPs, losses."""
    out: dict[str, Any] = {"mode": mode.key, "settings": mode.describe()}
    with precision(mode):
        method = spec.build(device, seed=seed)
        if mode.channels_last:
            method.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        method.train()
        optimizer = make_optimizer(method, spec.recipe, mode)
        params = _opt_params(optimizer)
        out["params"] = {"trainable": sum(p.numel() for p in params),
                         "total": sum(p.numel() for p in method.parameters())}
        clip = spec.recipe.grad_clip
        step_fn = method.training_step
        if mode.compile:
            step_fn = torch.compile(step_fn, mode=mode.compile_mode)

        def run(fn: Callable = step_fn) -> Tensor:
            return train_step(method, optimizer, images, labels, amp_dtype=mode.amp_dtype, grad_clip=clip,
                              params=params, step_fn=fn)

        t0 = time.perf_counter()
        loss = run()
        synchronize(device)
        out["first_step_s"] = time.perf_counter() - t0  # includes compilation with --compile, lazy set-up
        out["first_loss"] = float(loss)
        if count:  # after the first step: one-time lazy work (e.g. embedding class texts) is not a step's cost
            flops = _flops_without_recompute(method, lambda: run(method.training_step), device)
            out["flops_per_step"] = flops["total"]
            out["flops_per_image"] = flops["total"] / spec.batch_size
            out["flop_detail"] = flops
        for _ in range(max(0, warmup - 1)):
            run()
        reset_peak_memory(device)
        t0 = time.perf_counter()
        times = time_calls(run, steps, device)
        wall = time.perf_counter() - t0
        out["step_times_s"] = times
        out["time"] = _summary(times)
        out["img_per_s"] = spec.batch_size / out["time"]["median_s"]
        out["img_per_s_wall"] = spec.batch_size * steps / wall
        out["peak_memory"] = peak_memory(device)
        if count:
            out["tflops"] = out["flops_per_step"] / out["time"]["median_s"] / 1e12
    if keep:
        out["_method"], out["_optimizer"] = method, optimizer
    return out


def bench_eval(spec: MethodSpec, mode: Mode, windows: Tensor, *, steps: int, warmup: int, device: torch.device,
               method: Any = None, seed: int = 0, count: bool = True) -> dict[str, Any]:
    """Time ``predict`` on a batch of sliding windows (inference mode, the mode's autocast)."""
    out: dict[str, Any] = {"mode": mode.key, "windows_per_call": int(windows.shape[0])}
    with precision(mode):
        if method is None:
            method = spec.build(device, seed=seed)
        if mode.channels_last:
            method.to(memory_format=torch.channels_last)
            windows = windows.contiguous(memory_format=torch.channels_last)
        method.eval()
        predict = method.predict
        if mode.compile:
            predict = torch.compile(predict, mode=mode.compile_mode)

        def run(fn: Callable = predict, grad_mode: Callable = torch.inference_mode) -> Tensor:
            with grad_mode(), autocast(device, mode.amp_dtype):
                return fn(windows)

        free_memory(device)
        t0 = time.perf_counter()
        scores = run()
        synchronize(device)
        out["first_call_s"] = time.perf_counter() - t0
        out["scores_finite"] = bool(torch.isfinite(scores).all())
        if count:
            flops = count_flops(lambda: run(method.predict))
            out["flops_per_call"] = flops["total"]
            out["flops_per_window"] = flops["total"] / windows.shape[0]
            out["flop_detail"] = flops
        for _ in range(max(0, warmup - 1)):
            run()
        reset_peak_memory(device)
        times = time_calls(run, steps, device)
        out["call_times_s"] = times
        out["time"] = _summary(times)
        out["windows_per_s"] = windows.shape[0] / out["time"]["median_s"]
        out["peak_memory"] = peak_memory(device)
        if count:
            out["tflops"] = out["flops_per_call"] / out["time"]["median_s"] / 1e12
    return out


# ---------------------------------------------------------------------------------------------- attention
def attention_report(method: Any) -> dict[str, Any]:
    """Which attention modules use SDPA: timm's ``fused_attn`` flag per attention class (False means the
    explicit softmax(QK^T)V path), and this project's SDPA-only modules."""
    flagged: dict[str, dict[str, int]] = {}
    for m in method.modules():
        if hasattr(m, "fused_attn"):
            entry = flagged.setdefault(type(m).__name__, {"fused": 0, "not_fused": 0})
            entry["fused" if bool(m.fused_attn) else "not_fused"] += 1
    sdpa_modules: dict[str, int] = {}
    for m in method.modules():
        src = type(m).__module__
        if src.startswith("methods.") and "attention" in type(m).__name__.lower():
            sdpa_modules[type(m).__name__] = sdpa_modules.get(type(m).__name__, 0) + 1
    not_fused = sum(e["not_fused"] for e in flagged.values())
    return {"timm_attention": flagged, "project_attention_modules": sdpa_modules, "all_timm_fused": not_fused == 0}


# ---------------------------------------------------------------------------------------------- checks
def check_grad_checkpointing(spec: MethodSpec, *, device: torch.device | str = "cpu", batch: int = 2,
                             res: tuple[int, int] | None = None, seed: int = 0) -> dict[str, Any]:
    """One forward + backward with and without activation checkpointing from the same weights, inputs and RNG:
    loss and gradient differences, and how many backbone blocks ran again in the backward pass."""
    device = torch.device(device)
    res = res or spec.res
    images, labels = synthetic_batch(batch, res, seed=seed + 1, device=device)
    runs = {}
    for enable in (False, True):
        method = spec.build(device, seed=seed, grad_checkpointing=enable)
        method.train()
        calls = [0]
        from methods.backbones.vit import ViTBackbone

        def counting(forward: Callable) -> Callable:  # module hooks do not fire in checkpoint recomputation
            def wrapped(*a: Any, **k: Any) -> Any:
                calls[0] += 1
                return forward(*a, **k)
            return wrapped

        blocks = [blk for m in method.modules() if isinstance(m, ViTBackbone) for blk in m.vit.blocks]
        for blk in blocks:
            blk.forward = counting(blk.forward)
        torch.manual_seed(seed + 2)
        losses = method.training_step(images, labels)
        forward_calls = calls[0]
        total = sum(losses.values())
        total.backward()
        for blk in blocks:
            del blk.forward  # back to the class's forward
        grads = {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}
        runs[enable] = {"losses": {k: float(v.detach()) for k, v in losses.items()}, "total": float(total.detach()),
                        "grads": grads,
                        "block_calls_forward": forward_calls, "block_calls_backward": calls[0] - forward_calls}
    a, b = runs[False], runs[True]
    if set(a["grads"]) != set(b["grads"]):
        raise AssertionError(f"different parameters got gradients: {sorted(set(a['grads']) ^ set(b['grads']))[:5]}")
    rel = {}
    for n, g in a["grads"].items():
        denom = float(g.abs().max()) or 1.0
        rel[n] = float((g - b["grads"][n]).abs().max()) / denom
    worst = max(rel, key=rel.get) if rel else None
    return {
        "method": spec.name, "loss_without": a["total"], "loss_with": b["total"],
        "loss_abs_diff": abs(a["total"] - b["total"]),
        "max_rel_grad_diff": rel[worst] if worst else 0.0, "worst_param": worst, "num_grads": len(rel),
        "recomputed_blocks": b["block_calls_backward"], "recomputed_blocks_without": a["block_calls_backward"],
    }


def find_host_syncs(spec: MethodSpec, mode: Mode, images: Tensor, labels: Tensor, *, device: torch.device,
                    seed: int = 0, method: Any = None, optimizer: Any = None) -> dict[str, Any]:
    """Run one eager training step under ``torch.cuda.set_sync_debug_mode("warn")`` and list where the host
    waited for the GPU (file:line in this project, with the message), most frequent first."""
    if device.type != "cuda":
        return {"available": False, "reason": "sync debug mode needs CUDA"}
    with precision(mode):
        if method is None:
            method = spec.build(device, seed=seed)
        method.train()
        if optimizer is None:
            optimizer = make_optimizer(method, spec.recipe, mode)
        train_step(method, optimizer, images, labels, amp_dtype=mode.amp_dtype, grad_clip=spec.recipe.grad_clip)
        synchronize(device)
        events: list[dict[str, Any]] = []
        root = str(Path(__file__).resolve().parents[1])

        def record(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
            frames = [f for f in traceback.extract_stack()[:-1]
                      if f.filename.startswith(root) and not f.filename.endswith(("speed.py",))]
            where = [f"{os.path.relpath(f.filename, root)}:{f.lineno} {f.name}" for f in frames[-3:]]
            events.append({"message": str(message).splitlines()[0][:160], "where": where or [f"{filename}:{lineno}"]})

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_step(method, optimizer, images, labels, amp_dtype=mode.amp_dtype,
                           grad_clip=spec.recipe.grad_clip)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        synchronize(device)
    grouped: dict[str, dict[str, Any]] = {}
    for e in events:
        key = " <- ".join(reversed(e["where"])) + " | " + e["message"]
        entry = grouped.setdefault(key, {"count": 0, "where": e["where"], "message": e["message"]})
        entry["count"] += 1
    ranked = sorted(grouped.values(), key=lambda x: -x["count"])
    return {"available": True, "num_syncs": len(events), "places": ranked}


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


# ---------------------------------------------------------------------------------------------- data
def _synthetic_photo(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A street-photo-like uint8 RGB image: smooth colour regions, edges and sensor noise, so that PNG/JPEG
    files get realistic sizes and decode times (random noise would be much larger, flat colour much smaller)."""
    import cv2

    base = rng.integers(0, 256, (max(2, h // 48), max(2, w // 48), 3), dtype=np.uint8)
    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    detail = rng.integers(0, 256, (max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8)
    img += (cv2.resize(detail, (w, h), interpolation=cv2.INTER_NEAREST).astype(np.int16) - 128) // 6
    img += rng.normal(0, 4, (h, w, 3)).astype(np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def _synthetic_label_ids(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Cityscapes labelIds (GTA5's palette indices) in blocky regions."""
    import cv2

    ids = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33, 0, 1],
                   dtype=np.uint8)
    cells = ids[rng.integers(0, len(ids), (max(2, h // 64), max(2, w // 64)))]
    return cv2.resize(cells, (w, h), interpolation=cv2.INTER_NEAREST)


def write_gta_like(root: Path | str, n: int, size: tuple[int, int] = GTA_SIZE, *, seed: int = 0) -> Path:
    """Write ``n`` GTA5-layout pairs (``gta/images/NNNNN.png`` RGB, ``gta/labels/NNNNN.png`` 8-bit palette with
    Cityscapes labelIds) of ``size`` = (h, w) under ``root``; returns ``root``."""
    import cv2
    from PIL import Image

    root = Path(root)
    img_dir, lab_dir = root / "gta" / "images", root / "gta" / "labels"
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = [int(x) for x in rng.integers(0, 256, 768)]
    h, w = size
    for i in range(n):
        name = f"{i + 1:05d}.png"
        cv2.imwrite(str(img_dir / name), cv2.cvtColor(_synthetic_photo(h, w, rng), cv2.COLOR_RGB2BGR))
        ids = _synthetic_label_ids(h, w, rng)
        lab = Image.frombytes("P", (w, h), ids.tobytes())
        lab.putpalette(palette)
        lab.save(lab_dir / name)
    return root


def bench_data(root: Path | str, recipe: Any, *, batch_size: int, workers: Sequence[int], batches: int = 8,
               pin_memory: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """Images/s of the real training input pipeline (GTA5 loader + the recipe's TrainTransform + collate)
    through a DataLoader, per worker count. ``steady_img_per_s`` leaves out the first batch of every worker
    (start-up); ``s_per_img_per_worker`` is the single-worker cost of one sample."""
    from datasets import TrainAugmentation, TrainTransform, build_dataset
    from runners.train import collate  # CLI glue (see the module docstring)

    aug = TrainAugmentation(crop_size=tuple(recipe.crop_size), **recipe.augmentation)
    ds = build_dataset("gta5", "all", root, transform=TrainTransform(aug))
    rows = []
    for k in workers:
        n_batches = max(int(batches), 3 * k + 2)
        items = [(i % len(ds), seed * 1_000_003 + i) for i in range(n_batches * batch_size)]
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=items, collate_fn=collate,
                                             num_workers=k, pin_memory=pin_memory, persistent_workers=False,
                                             drop_last=True, prefetch_factor=4 if k else None)
        t0 = time.perf_counter()
        stamps = []
        for batch in loader:
            assert batch["image"].shape[0] == batch_size
            stamps.append(time.perf_counter())
        skip = min(max(k, 1), len(stamps) - 1)  # batches produced while the workers started up
        steady = (len(stamps) - 1 - skip + 1) * batch_size / (stamps[-1] - stamps[skip - 1]) if len(stamps) > skip else math.nan
        total_rate = len(stamps) * batch_size / (stamps[-1] - t0)
        rows.append({"workers": k, "batches": len(stamps), "first_batch_s": stamps[0] - t0,
                     "img_per_s": total_rate, "steady_img_per_s": steady})
    base = next((r for r in rows if r["workers"] == 0), None)
    if base is not None:
        for r in rows:
            r["s_per_img_per_worker"] = 1.0 / base["steady_img_per_s"]
    return rows


# ---------------------------------------------------------------------------------------------- eval protocol
def protocol_geometry(protocol: Any, *, include_reference: bool = True) -> list[dict[str, Any]]:
    """Per evaluated split of ``protocol``: typical native size and image count (:data:`TEST_SPLITS`), the
    size after the split's keep-ratio test resize, and the model passes (sliding windows x scales x flips)
    one image takes."""
    spec: InferenceSpec = protocol.inference
    splits = [(s, False) for s in protocol.targets]
    if include_reference and getattr(protocol, "reference", None) is not None:
        splits.append((protocol.reference, True))
    rows = []
    for split, is_ref in splits:
        row: dict[str, Any] = {"key": split.key, "dataset": split.dataset, "split": split.split, "reference": is_ref}
        known = TEST_SPLITS.get((split.dataset, split.split))
        if known is None:
            row["skipped"] = "no typical size known (add it to benchmarks.speed.TEST_SPLITS)"
            rows.append(row)
            continue
        native, n_images, ext = known
        resized = keep_ratio_size(native[0], native[1], split.test_resize)
        passes = len(spec.scales) * (2 if spec.flip else 1)
        if spec.mode == "slide":
            windows = len(slide_windows(resized[0], resized[1], spec.crop_size, spec.stride)) * passes
        else:
            windows = passes
        row.update(images=n_images, native_hw=list(native), resized_hw=list(resized), file_type=ext,
                   test_resize=list(split.test_resize) if split.test_resize else None, windows_per_image=windows)
        rows.append(row)
    return rows


def estimate_protocol_eval(predict: Callable[[Tensor], Tensor], protocol: Any, *, device: torch.device,
                           amp_dtype: torch.dtype | None, batch_windows: int, reps: int = 2,
                           include_reference: bool = True, num_classes: int = 19,
                           loading: bool = True, seed: int = 0) -> dict[str, Any]:
    """Estimate a protocol's full evaluation time: for each split (:func:`protocol_geometry`), the measured
    seconds per typical image of the real per-image path (``infer_logits`` with ``batch_windows``, resize to
    the native label size, argmax, confusion matrix) times the number of images; optionally also the
    seconds to decode + test-resize one such image on one CPU core (``loading``)."""
    spec: InferenceSpec = protocol.inference
    g = torch.Generator().manual_seed(seed)
    per_size: dict[tuple[tuple[int, int], tuple[int, int]], float] = {}
    rows = protocol_geometry(protocol, include_reference=include_reference)
    for row in rows:
        if "skipped" in row:
            continue
        native, resized = tuple(row["native_hw"]), tuple(row["resized_hw"])
        key = (native, resized)
        if key not in per_size:
            image = torch.rand(1, 3, *resized, generator=g).mul_(255).to(device)
            label = torch.randint(0, num_classes, native, generator=g).to(device)

            def one() -> None:
                with torch.inference_mode(), autocast(device, amp_dtype):
                    logits = infer_logits(predict, image, spec, num_classes, batch_windows=batch_windows)
                with torch.inference_mode():
                    pred = resize_logits(logits.float(), native).argmax(1)[0]
                    confusion_matrix(pred, label, num_classes=num_classes)

            one()  # warm-up (and compilation)
            synchronize(device)
            per_size[key] = statistics.median(time_calls(one, max(1, reps), device))
        s_img = per_size[key]
        row.update(s_per_image=s_img, windows_per_s=row["windows_per_image"] / s_img,
                   total_s=s_img * row["images"])
        if loading:
            row["load_s_per_image"] = _time_loading(native, row["file_type"], row["test_resize"], seed=seed)
            row["workers_to_keep_up"] = math.ceil(row["load_s_per_image"] / s_img)
            row["total_s_serial_loading"] = (s_img + row["load_s_per_image"]) * row["images"]
    targets = [r for r in rows if "total_s" in r and not r["reference"]]
    out = {"protocol": getattr(protocol, "name", "?"), "variant": getattr(protocol, "variant", "?"),
           "inference": dataclasses.asdict(spec), "batch_windows": batch_windows, "splits": rows,
           "targets_images": sum(r["images"] for r in targets),
           "targets_total_s": sum(r["total_s"] for r in targets),
           "assumptions": "typical native sizes per split (TEST_SPLITS); data loading overlapped by workers "
                          "for total_s; total_s_serial_loading adds decoding in the main process"}
    if loading and targets:
        out["targets_total_s_serial_loading"] = sum(r["total_s_serial_loading"] for r in targets)
    return out


def _time_loading(native: tuple[int, int], ext: str, resize: Sequence[int] | None, *, seed: int = 0,
                  reps: int = 2) -> float:
    """Seconds to decode one image of ``native`` size (``ext`` file) and its label PNG and test-resize it."""
    import cv2
    from PIL import Image

    from datasets import TestTransform, read_image, read_index_png

    rng = np.random.default_rng(seed)
    h, w = native
    with tempfile.TemporaryDirectory(prefix="dgss_speed_load_") as tmp:
        img_path, lab_path = Path(tmp) / f"img{ext}", Path(tmp) / "label.png"
        photo = cv2.cvtColor(_synthetic_photo(h, w, rng), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(img_path), photo, [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else [])
        Image.frombytes("L", (w, h), _synthetic_label_ids(h, w, rng).tobytes()).save(lab_path)
        transform = TestTransform(tuple(resize) if resize else None)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            sample = {"image": read_image(img_path), "label": read_index_png(lab_path), "name": "x"}
            transform(sample)
            times.append(time.perf_counter() - t0)
    return min(times)


# ---------------------------------------------------------------------------------------------- probe
def probe(device: torch.device, *, small: bool | None = None) -> dict[str, Any]:
    """Ceilings and micro-benchmarks that explain the step times (METHOD.md: measure the two ceilings once).

    - bf16 matmul TFLOP/s (8192^3) and device copy GB/s (bytes read + written);
    - EVA02-L's SwiGLU GEMMs at hidden 2730 (the real width, not a multiple of 8) against 2736 / 2816;
    - SDPA back-ends (flash, memory-efficient, math) at ViT-L shapes, forward + backward;
    - one EVA02-L block (rope, SwiGLU, sub-LN) against one DINOv2-L block, forward + backward, bf16.
    On a CPU the sizes shrink to a smoke test (numbers meaningless)."""
    from methods.backbones.vit import _build_timm, vit_config  # CLI glue

    cuda = device.type == "cuda"
    small = (not cuda) if small is None else small
    dt = torch.bfloat16 if cuda else torch.float32
    out: dict[str, Any] = {"device": _device_name(device), "dtype": str(dt)}

    def bench(fn: Callable[[], Any], n: int = 10) -> float:
        fn()
        synchronize(device)
        return statistics.median(time_calls(fn, n if cuda else 2, device))

    n = 512 if small else 8192
    a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
    out["matmul_tflops"] = 2 * n ** 3 / bench(lambda: a @ b) / 1e12
    del a, b
    numel = (1 << 20) if small else (1 << 29)  # 1 GiB of bf16
    src = torch.randn(numel, device=device, dtype=dt)
    dst = torch.empty_like(src)
    out["copy_gb_s"] = 2 * src.numel() * src.element_size() / bench(lambda: dst.copy_(src)) / 1e9
    del src, dst
    free_memory(device)

    m = 256 if small else 8 * 1297  # batch 8 x (36*36 + 1) tokens of EVA02-L at 512/14
    d = 64 if small else 1024
    x = torch.randn(m, d, device=device, dtype=dt)
    gemm = {}
    for hidden in ((170, 176) if small else (2730, 2736, 2816)):
        w_up = torch.randn(hidden, d, device=device, dtype=dt)
        h = torch.randn(m, hidden, device=device, dtype=dt)
        w_down = torch.randn(d, hidden, device=device, dtype=dt)
        t_up = bench(lambda: torch.nn.functional.linear(x, w_up))
        t_down = bench(lambda: torch.nn.functional.linear(h, w_down))
        flops = 2 * m * d * hidden
        gemm[str(hidden)] = {"up_tflops": flops / t_up / 1e12, "down_tflops": flops / t_down / 1e12,
                             "up_ms": t_up * 1e3, "down_ms": t_down * 1e3}
    out["swiglu_gemm"] = gemm
    del x
    free_memory(device)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    bsz, heads, seq, hd = (2, 2, 128, 32) if small else (8, 16, 1297, 64)
    q, k, v = (torch.randn(bsz, heads, seq, hd, device=device, dtype=dt, requires_grad=True) for _ in range(3))
    fl = 4 * bsz * heads * seq * seq * hd * 3.5  # forward (2 matmuls) + backward (5 matmuls)
    sdpa = {}
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                          ("cudnn", getattr(SDPBackend, "CUDNN_ATTENTION", None)), ("math", SDPBackend.MATH)):
        if backend is None:
            continue

        def fwd_bwd() -> None:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()

        try:
            t = bench(fwd_bwd, 5)
            sdpa[name] = {"ms": t * 1e3, "tflops": fl / t / 1e12}
        except RuntimeError as exc:
            sdpa[name] = {"error": str(exc).splitlines()[0][:120]}
    out["sdpa_fwd_bwd"] = sdpa
    del q, k, v
    free_memory(device)

    blocks = {}
    for label, name in (("dinov2", "dinov2_tiny" if small else "dinov2_vitl14_p14"),
                        ("eva02", "eva02_tiny" if small else "eva02_clip_vitl14")):
        cfg = vit_config(name, depth=1, taps=(0,), frozen=False, drop_path=0.0)
        with torch.device(device):
            vit = _build_timm(cfg)
        blk = vit.blocks[0]
        grid = 4 if small else 36
        tokens = torch.randn(2 if small else 8, 1 + grid * grid, cfg.embed_dim, device=device, requires_grad=True)
        rope = vit.rope.get_embed(shape=[grid, grid]) if getattr(vit, "rope", None) is not None else None

        def run_block() -> None:
            with autocast(device, torch.bfloat16 if cuda else None):
                y = blk(tokens, rope=rope) if rope is not None else blk(tokens)
            y.float().square().mean().backward()

        counted = count_flops(run_block)["total"]
        t = bench(run_block, 10)
        blocks[label] = {"ms": t * 1e3, "gflop": counted / 1e9, "tflops": counted / t / 1e12}
        del vit, blk, tokens
        free_memory(device)
    out["block_fwd_bwd"] = blocks
    return out


# ---------------------------------------------------------------------------------------------- reporting
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def _mfu(result: dict[str, Any] | None, peaks: dict[str, float] | None, key: str) -> float | None:
    if not result or not peaks or result.get("tflops") is None:
        return None
    return 100.0 * result["tflops"] / peaks[key]


def main_table(report: dict[str, Any]) -> str:
    """The short table: fp32 eager vs optimised (and their ratio) for train and eval."""
    modes = report["modes"]
    peaks = report.get("peak_tflops")
    cols = [m for m in ("fp32_eager", "optimized") if m in report.get("train", {}) or m in report.get("eval", {})]
    train, ev = report.get("train", {}), report.get("eval", {})

    def val(section: dict, mode: str, fn: Callable[[dict], Any]) -> Any:
        r = section.get(mode)
        if r is None:
            return None
        if "error" in r:
            return r["error"]
        try:
            return fn(r)
        except (KeyError, TypeError):
            return None

    lines: list[tuple[str, Callable[[dict], Any], dict, int, bool]] = [
        ("train img/s (median step)", lambda r: r["img_per_s"], train, 1, True),
        ("train step ms (median)", lambda r: r["time"]["median_s"] * 1e3, train, 1, False),
        ("train first step s", lambda r: r["first_step_s"], train, 2, False),
        ("train peak mem GiB", lambda r: (r["peak_memory"] or {}).get("allocated_gib"), train, 2, False),
        ("train GFLOP/img (fwd+bwd)", lambda r: r["flops_per_image"] / 1e9, train, 1, False),
        ("train TFLOP/s", lambda r: r["tflops"], train, 2, True),
        ("train MFU %", None, train, 1, False),
        (f"eval windows/s (x{report['spec']['eval_batch']})", lambda r: r["windows_per_s"], ev, 1, True),
        ("eval peak mem GiB", lambda r: (r["peak_memory"] or {}).get("allocated_gib"), ev, 2, False),
        ("eval GFLOP/window", lambda r: r["flops_per_window"] / 1e9, ev, 1, False),
        ("eval TFLOP/s", lambda r: r["tflops"], ev, 2, True),
        ("eval MFU %", None, ev, 1, False),
    ]
    rows = []
    for label, fn, section, digits, ratio in lines:
        if not section:
            continue
        cells = []
        for mode in cols:
            if fn is None:
                cells.append(_mfu(section.get(mode), peaks, modes[mode]["peak_key"]))
            else:
                cells.append(val(section, mode, fn))
        r = "-"
        if ratio and len(cells) == 2 and all(isinstance(c, (int, float)) for c in cells) and cells[0]:
            r = f"{cells[1] / cells[0]:.2f}x"
        rows.append([label, *(_fmt(c, digits) if not isinstance(c, str) else c for c in cells), r])
    headers = ["metric", *[modes[m]["label"] for m in cols], "ratio"]
    return format_table(headers, rows)


def target_lines(report: dict[str, Any]) -> list[str]:
    """PASS/FAIL against the issue's targets (meaningful on an H100 at paper scale)."""
    out = []
    name, spec = report["spec"]["method"], report["spec"]
    train = report.get("train", {})
    opt, base = train.get("optimized"), train.get("fp32_eager")
    device = report["device"]
    real = spec["scale"] == "paper" and "H100" in device
    tag = "" if real else "  (not comparable: targets are for paper scale on an H100)"
    goal = TARGETS.get(name, {}).get("train_img_s")
    if goal and opt and "img_per_s" in opt:
        ok = opt["img_per_s"] >= goal
        out.append(f"target train >= {goal:.0f} img/s: {'PASS' if ok else 'FAIL'} ({opt['img_per_s']:.1f}){tag}")
    if opt and base and "img_per_s" in opt and "img_per_s" in base:
        ratio = opt["img_per_s"] / base["img_per_s"]
        out.append(f"target optimized >= {SPEEDUP_TARGET:.0f}x fp32 eager: {'PASS' if ratio >= SPEEDUP_TARGET else 'FAIL'} "
                   f"({ratio:.2f}x){tag}")
    if name == "vireo" and spec["batch_size"] == 8 and opt and opt.get("peak_memory"):
        mem = opt["peak_memory"]["allocated_gib"]
        out.append(f"target Vireo batch 8 peak <= {VIREO_MEMORY_GIB:.0f} GiB: "
                   f"{'PASS' if mem <= VIREO_MEMORY_GIB else 'FAIL'} ({mem:.1f} GiB){tag}")
    est = report.get("eval_protocol")
    if est and est.get("protocol") == "gta2cbm" and est.get("targets_total_s"):
        t = est["targets_total_s"]
        out.append(f"target gta2cbm eval ({est['targets_images']} images) < {EVAL_TARGET_S / 60:.0f} min: "
                   f"{'PASS' if t < EVAL_TARGET_S else 'FAIL'} (est. {t / 60:.1f} min, loading overlapped){tag}")
    return out


def probe_text(pr: dict[str, Any]) -> str:
    lines = [f"probe ({pr['device']}, {pr['dtype']}): matmul {pr['matmul_tflops']:.1f} TFLOP/s, "
             f"device copy {pr['copy_gb_s']:.0f} GB/s (read + write)"]
    gemm = ", ".join(f"{h}: up {g['up_tflops']:.1f} / down {g['down_tflops']:.1f}" for h, g in pr["swiglu_gemm"].items())
    lines.append(f"  SwiGLU GEMMs by hidden width (TFLOP/s): {gemm}")
    sd = ", ".join(f"{k} {v['ms']:.2f} ms ({v['tflops']:.1f} TFLOP/s)" if "ms" in v else f"{k} n/a"
                   for k, v in pr["sdpa_fwd_bwd"].items())
    lines.append(f"  SDPA fwd+bwd: {sd}")
    bl = ", ".join(f"{k} {v['ms']:.2f} ms ({v['gflop']:.1f} GFLOP, {v['tflops']:.1f} TFLOP/s)"
                   for k, v in pr["block_fwd_bwd"].items())
    lines.append(f"  one block fwd+bwd: {bl}")
    return "\n".join(lines)


def eval_protocol_table(est: dict[str, Any]) -> str:
    rows = []
    for r in est["splits"]:
        if "skipped" in r:
            rows.append([r["key"], "-", "-", "-", "-", "-", "-", "-", r["skipped"]])
            continue
        rows.append([r["key"] + (" (ref)" if r["reference"] else ""), r["images"],
                     "x".join(map(str, r["native_hw"])), "x".join(map(str, r["resized_hw"])), r["windows_per_image"],
                     _fmt(r["s_per_image"] * 1e3, 1), _fmt(r.get("load_s_per_image", math.nan) * 1e3, 1),
                     r.get("workers_to_keep_up", "-"), _fmt(r["total_s"] / 60, 2)])
    head = ["split", "images", "native", "resized", "win/img", "ms/img", "load ms/img", "workers", "est. min"]
    text = format_table(head, rows)
    text += (f"\n{est['protocol']} targets: {est['targets_images']} images, est. {est['targets_total_s'] / 60:.2f} min "
             f"with loading overlapped")
    if "targets_total_s_serial_loading" in est:
        text += f", {est['targets_total_s_serial_loading'] / 60:.2f} min with serial loading"
    return text


def data_table(rows: list[dict[str, Any]], need: float | None) -> str:
    table = format_table(["workers", "first batch s", "img/s (all)", "img/s (steady)"],
                         [[r["workers"], _fmt(r["first_batch_s"], 2), _fmt(r["img_per_s"], 1),
                           _fmt(r["steady_img_per_s"], 1)] for r in rows])
    base = next((r for r in rows if r["workers"] == 0), None)
    if base is not None:
        per = 1.0 / base["steady_img_per_s"]
        table += f"\none sample costs {per * 1e3:.0f} ms on one process"
        if need:
            table += (f"; {need:.0f} img/s needs >= {math.ceil(need * per)} workers (and as many free cores; "
                      f"this machine has {os.cpu_count()})")
    return table


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.speed",
        description="Time the full training step and sliding-window evaluation of a method: optimised vs "
                    "fp32 eager in one run (img/s, peak memory, TFLOP/s, MFU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--method", required=False, help="registered method name (python -m runners.run --help)")
    p.add_argument("--backbone", default=None, help="backbone name (default: the method's first)")
    p.add_argument("--scale", choices=("paper", "miniature"), default=None,
                   help="paper (default on CUDA) or miniature (default on CPU)")
    p.add_argument("--source", default="gta5", help="source domain whose recipe is used")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's batch size")
    p.add_argument("--res", default=None, help="training crop, e.g. 512 or 512x1024 (default: the recipe's)")
    p.add_argument("--eval-res", default=None, help="sliding window size (default 512 paper / 256 miniature)")
    p.add_argument("--eval-batch", type=int, default=None, help="windows per predict call (default 8 CUDA, 2 CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 CUDA, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 5 CUDA, 1 CPU; >=3 w/ compile)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--modes", choices=("both", "optimized", "baseline"), default="both")
    p.add_argument("--no-train", action="store_true", help="skip the training-step timing")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation timing")
    p.add_argument("--amp-dtype", choices=("auto", "bf16", "fp16", "none"), default="auto",
                   help="optimised mode autocast dtype (auto: bf16 on CUDA, none on CPU)")
    p.add_argument("--compile", action="store_true", help="optimised mode: torch.compile training_step / predict")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default, max-autotune, ...)")
    p.add_argument("--channels-last", action="store_true", help="optimised mode: channels-last model and inputs")
    p.add_argument("--grad-checkpointing", action="store_true", help="activation checkpointing (both modes)")
    p.add_argument("--sync-debug", action="store_true",
                   help="run one optimised step under torch.cuda.set_sync_debug_mode('warn') and list host syncs")
    p.add_argument("--profile", action="store_true", help="print the top kernels of 3 optimised steps")
    p.add_argument("--trace", default=None, help="with --profile: write a Chrome trace here")
    p.add_argument("--probe", action="store_true", help="GPU ceilings and suspect-kernel micro-benchmarks")
    p.add_argument("--check-grad-checkpointing", action="store_true",
                   help="compare losses/gradients with and without activation checkpointing")
    p.add_argument("--data", action="store_true", help="time the real data pipeline on generated GTA-size PNGs")
    p.add_argument("--data-workers", default=None, help="worker counts, e.g. 0,2,4,8 (default 0,1,2,4,8 capped)")
    p.add_argument("--data-images", type=int, default=24, help="PNG pairs to generate")
    p.add_argument("--data-size", default=f"{GTA_SIZE[0]}x{GTA_SIZE[1]}", help="generated image size HxW")
    p.add_argument("--data-batches", type=int, default=8, help="batches per worker count (at least 3*workers+2)")
    p.add_argument("--data-only", action="store_true", help="only the data pipeline (no model timing)")
    p.add_argument("--eval-protocol", default=None, help="estimate this protocol's full evaluation time")
    p.add_argument("--eval-variant", default="default", help="protocol variant for --eval-protocol")
    p.add_argument("--eval-reps", type=int, default=None, help="timed images per size (default 3 CUDA, 1 CPU)")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the optimised-mode peak for MFU")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write all numbers to this JSON file")
    p.add_argument("--list-methods", action="store_true", help="print the registered methods and exit")
    p.add_argument("--suite", default=None,
                   help="comma-separated methods (or 'targets': the issue's methods that are registered), each "
                        "run in its own process with the other flags; one summary table at the end")
    p.add_argument("--json-dir", default=None, help="with --suite: write <method>.json files here")
    p.add_argument("--suite-timeout", type=int, default=420, help="with --suite: seconds per method")
    return p


def _clean(obj: Any) -> Any:
    """JSON-safe copy (live objects such as modules become their type name)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (torch.nn.Module, torch.optim.Optimizer)):
        return type(obj).__name__
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, torch.dtype):
        return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_methods:
        from methods.registry import list_methods

        print("\n".join(list_methods()))
        return 0
    if args.suite:
        return run_suite(args, list(argv if argv is not None else sys.argv[1:]))
    if not args.method and not (args.data_only or args.probe):
        raise SystemExit("error: --method is required (see --list-methods)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    scale = args.scale or ("paper" if cuda else "miniature")
    steps = args.steps if args.steps is not None else (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    if args.compile:
        warmup = max(warmup, 3)
    eval_batch = args.eval_batch or (8 if cuda else 2)
    amp = {"auto": "auto", "bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[args.amp_dtype]
    opt_mode = optimized_mode(device, amp_dtype=amp, compile=args.compile, compile_mode=args.compile_mode,
                              channels_last=args.channels_last)
    base_mode = baseline_mode()
    modes = {"both": [base_mode, opt_mode], "optimized": [opt_mode], "baseline": [base_mode]}[args.modes]
    peaks = peak_tflops(_device_name(device)) if cuda else None
    if args.peak_tflops:
        peaks = dict(peaks or {"fp32": math.nan, "tf32": math.nan})
        peaks[opt_mode.peak_key] = args.peak_tflops
    report: dict[str, Any] = {
        "tool": "benchmarks.speed", "argv": list(argv if argv is not None else sys.argv[1:]),
        "device": _device_name(device), "torch": torch.__version__, "peak_tflops": peaks,
        "cuda": torch.version.cuda, "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "modes": {m.key: {"label": m.label, "settings": m.describe(), "peak_key": m.peak_key} for m in modes},
    }
    try:
        import timm

        report["timm"] = timm.__version__
        from timm.layers import use_fused_attn

        report["timm_use_fused_attn"] = bool(use_fused_attn())
    except Exception:  # noqa: BLE001
        pass
    printed: list[str] = []

    def emit(text: str) -> None:
        print(text, flush=True)
        printed.append(text)

    spec = None
    if args.method:
        spec = resolve_method(args.method, backbone=args.backbone, scale=scale, source=args.source,
                              batch_size=args.batch_size, res=_pair(args.res) if args.res else None,
                              eval_res=_pair(args.eval_res) if args.eval_res else None, eval_batch=eval_batch,
                              grad_checkpointing=args.grad_checkpointing)
        report["spec"] = {"method": spec.name, "backbone": spec.backbone, "scale": spec.scale,
                          "source": spec.source, "batch_size": spec.batch_size, "res": list(spec.res),
                          "eval_res": list(spec.eval_res), "eval_batch": spec.eval_batch, "steps": steps,
                          "warmup": warmup, "grad_checkpointing": spec.grad_checkpointing,
                          "recipe_source": getattr(spec.recipe, "source", "")}
        emit(f"speed: {spec.describe()} on {report['device']}, torch {torch.__version__}")

    # -------- data pipeline
    data_rows = None
    if args.data or args.data_only:
        size = _pair(args.data_size)
        if args.data_workers:
            workers = [int(x) for x in args.data_workers.split(",")]
        else:
            workers = [k for k in (0, 1, 2, 4, 8, 16) if k <= (os.cpu_count() or 1)]
        from methods.base import TrainRecipe

        recipe = spec.recipe if spec is not None else TrainRecipe()
        batch = spec.batch_size if spec is not None else recipe.batch_size
        with tempfile.TemporaryDirectory(prefix="dgss_speed_data_") as tmp:
            t0 = time.perf_counter()
            write_gta_like(tmp, args.data_images, size, seed=args.seed)
            gen_s = time.perf_counter() - t0
            mb = sum(f.stat().st_size for f in (Path(tmp) / "gta" / "images").iterdir()) / args.data_images / 1e6
            data_rows = bench_data(tmp, recipe, batch_size=batch, workers=workers, batches=args.data_batches,
                                   pin_memory=cuda, seed=args.seed)
        report["data"] = {"image_size": list(size), "images": args.data_images, "mb_per_png": mb,
                          "generate_s": gen_s, "batch_size": batch, "augmentation": _clean(recipe.augmentation),
                          "crop_size": list(recipe.crop_size), "rows": data_rows}
        emit(f"\ndata pipeline: GTA5 loader + TrainTransform on {size[0]}x{size[1]} PNGs "
             f"({mb:.1f} MB each), batch {batch}")
    if args.data_only or (args.probe and spec is None):
        if args.probe:
            report["probe"] = probe(device)
            emit(probe_text(report["probe"]))
        if data_rows is not None:
            need = TARGETS.get(spec.name, {}).get("train_img_s") if spec else None
            emit(data_table(data_rows, need))
        _write_json(args.json, report)
        return 0

    assert spec is not None
    images, labels = synthetic_batch(spec.batch_size, spec.res, seed=args.seed + 1, device=device)
    windows, _ = synthetic_batch(spec.eval_batch, spec.eval_res, seed=args.seed + 2, device=device)

    # -------- grad-checkpointing check
    if args.check_grad_checkpointing:
        gc_spec = dataclasses.replace(spec, grad_checkpointing=True)
        report["grad_checkpointing_check"] = check_grad_checkpointing(
            gc_spec, device=device, batch=min(2, spec.batch_size), res=spec.res, seed=args.seed)
        free_memory(device)

    # -------- train / eval per mode
    report["train"], report["eval"] = {}, {}
    kept: dict[str, Any] = {}
    for mode in modes:
        method = None
        if not args.no_train:
            try:
                r = bench_train(spec, mode, images, labels, steps=steps, warmup=warmup, device=device, seed=args.seed,
                                keep=True)
                method = r.pop("_method")
                kept[mode.key] = (method, r.pop("_optimizer"))
                report["train"][mode.key] = r
            except Exception as exc:  # noqa: BLE001
                if not _is_oom(exc):
                    raise
                report["train"][mode.key] = {"error": "OOM"}
                free_memory(device)
        if "attention" not in report and method is not None:
            report["attention"] = attention_report(method)
        if not args.no_eval:
            try:
                if method is not None:
                    kept[mode.key][1].zero_grad(set_to_none=True)
                    kept[mode.key] = (method, None)
                    free_memory(device)
                report["eval"][mode.key] = bench_eval(spec, mode, windows, steps=steps, warmup=warmup, device=device,
                                                      method=method, seed=args.seed)
            except Exception as exc:  # noqa: BLE001
                if not _is_oom(exc):
                    raise
                report["eval"][mode.key] = {"error": "OOM"}
        if mode.key != opt_mode.key:
            kept.pop(mode.key, None)
            method = None
            free_memory(device)

    # -------- extras on the optimised model
    opt_method = kept.get(opt_mode.key, (None, None))[0]
    if args.sync_debug:
        report["sync_debug"] = find_host_syncs(spec, dataclasses.replace(opt_mode, compile=False), images, labels,
                                               device=device, seed=args.seed, method=opt_method)
    if args.profile:
        m = opt_method or spec.build(device, seed=args.seed)
        m.train()
        opt = make_optimizer(m, spec.recipe, opt_mode)
        with precision(opt_mode):
            fn = lambda: train_step(m, opt, images, labels, amp_dtype=opt_mode.amp_dtype,  # noqa: E731
                                    grad_clip=spec.recipe.grad_clip)
            fn()
            report["profile_table"] = profile_steps(fn, device, trace=Path(args.trace) if args.trace else None)
        del opt
    if args.eval_protocol:
        from benchmarks.protocols import get_protocol

        protocol = get_protocol(args.eval_protocol, variant=args.eval_variant)
        m = opt_method or spec.build(device, seed=args.seed)
        m.eval()
        with precision(opt_mode):
            predict = torch.compile(m.predict, mode=opt_mode.compile_mode) if opt_mode.compile else m.predict
            report["eval_protocol"] = estimate_protocol_eval(
                predict, protocol, device=device, amp_dtype=opt_mode.amp_dtype, batch_windows=eval_batch,
                reps=args.eval_reps or (3 if cuda else 1), seed=args.seed)
    if args.probe:
        report["probe"] = probe(device)

    # -------- output: details first, the short table last
    if "attention" in report:
        att = report["attention"]
        timm_att = ", ".join(f"{k}: {v['fused']} fused / {v['not_fused']} not" for k, v in att["timm_attention"].items())
        emit(f"\nattention: timm {timm_att or 'none'}; project SDPA modules "
             f"{att['project_attention_modules'] or 'none'}; timm use_fused_attn()={report.get('timm_use_fused_attn')}")
    for key in ("optimized", "fp32_eager"):
        tr = report["train"].get(key)
        if tr and "flop_detail" in tr:
            calls = tr["flop_detail"]["calls"]
            emit(f"kernels in one {report['modes'][key]['label']} step: "
                 + ", ".join(f"{k} x{v}" for k, v in calls.items()))
    if "grad_checkpointing_check" in report:
        c = report["grad_checkpointing_check"]
        emit(f"\ngrad checkpointing check: loss {c['loss_without']:.6f} vs {c['loss_with']:.6f} "
             f"(|diff| {c['loss_abs_diff']:.2e}), max rel grad diff {c['max_rel_grad_diff']:.2e} over {c['num_grads']} "
             f"tensors, {c['recomputed_blocks']} blocks recomputed in backward")
    if "sync_debug" in report:
        s = report["sync_debug"]
        if not s.get("available"):
            emit(f"\nhost syncs: n/a ({s.get('reason')})")
        else:
            emit(f"\nhost syncs in one optimised step: {s['num_syncs']}")
            for p in s["places"][:12]:
                emit(f"  {p['count']:3d}x {' <- '.join(reversed(p['where']))}: {p['message'][:100]}")
    if "profile_table" in report:
        emit("\nprofile (3 optimised steps):\n" + report["profile_table"])
    if "probe" in report:
        emit("\n" + probe_text(report["probe"]))
    if "eval_protocol" in report:
        emit(f"\nevaluation estimate, protocol {args.eval_protocol} ({args.eval_variant}), optimised mode, "
             f"batch_windows {eval_batch}:\n" + eval_protocol_table(report["eval_protocol"]))
    if data_rows is not None:
        need = None
        tr = report["train"].get("optimized")
        if tr and "img_per_s" in tr:
            need = tr["img_per_s"]
        elif spec.name in TARGETS:
            need = TARGETS[spec.name]["train_img_s"]
        emit(data_table(data_rows, need))
    emit("")
    for m in modes:
        emit(f"{m.label}: {m.describe()}")
    if peaks:
        emit("peaks (TFLOP/s): " + ", ".join(f"{k} {v:g}" for k, v in peaks.items()))
    elif cuda:
        emit("MFU: no peak known for this GPU (use --peak-tflops)")
    else:
        emit("MFU: n/a on a CPU")
    for line in target_lines(report):
        emit(line)
    emit(main_table(report))
    _write_json(args.json, report)
    return 0


def _strip_suite_args(argv: list[str]) -> list[str]:
    """argv without --suite / --json-dir / --suite-timeout / --json / --method (and their values)."""
    drop_with_value = {"--suite", "--json-dir", "--suite-timeout", "--json", "--method"}
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in drop_with_value:
            skip = True
            continue
        if any(a.startswith(f + "=") for f in drop_with_value):
            continue
        out.append(a)
    return out


def run_suite(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the tool once per method in a fresh process (GPU memory and failures stay separate), then print one
    summary table. Output of every run streams through; numbers go to ``--json-dir``."""
    import subprocess

    from methods.registry import list_methods  # CLI glue

    registered = list_methods()
    if args.suite == "targets":
        names = [m for m in TARGETS if m in registered]
    else:
        names = [m.strip() for m in args.suite.split(",") if m.strip()]
    unknown = [m for m in names if m not in registered]
    if unknown:
        print(f"suite: not registered (skipped): {', '.join(unknown)}; registered: {', '.join(registered)}")
    names = [m for m in names if m in registered]
    out_dir = Path(args.json_dir or tempfile.mkdtemp(prefix="dgss_speed_suite_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    common = _strip_suite_args(argv)
    results: dict[str, Any] = {}
    for name in names:
        path = out_dir / f"{name}.json"
        cmd = [sys.executable, "-m", "benchmarks.speed", "--method", name, "--json", str(path), *common]
        print(f"\n===== suite: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd, timeout=args.suite_timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        wall = time.perf_counter() - t0
        results[name] = {"rc": rc, "wall_s": wall,
                         "report": json.loads(path.read_text()) if path.is_file() else None}
    rows = []
    for name, r in results.items():
        rep = r["report"]
        if rep is None:
            rows.append([name, "-", "-", "-", "-", "-", "-", "-", "-", f"failed ({r['rc']})"])
            continue
        tr = rep.get("train", {})
        opt, base = tr.get("optimized", {}), tr.get("fp32_eager", {})
        peaks = rep.get("peak_tflops")
        ratio = (opt["img_per_s"] / base["img_per_s"]) if "img_per_s" in opt and "img_per_s" in base else None
        mem = (opt.get("peak_memory") or {}).get("allocated_gib")
        ev = rep.get("eval", {}).get("optimized", {})
        verdicts = [f"{ln.split()[1]}:{ln.split(':')[1].split('(')[0].strip()}" for ln in target_lines(rep)]
        rows.append([name, rep["spec"]["batch_size"], _fmt(opt.get("img_per_s")), _fmt(base.get("img_per_s")),
                     f"{ratio:.2f}x" if ratio else "-", _fmt(mem, 2), _fmt(_mfu(opt, peaks, "bf16")),
                     _fmt(ev.get("windows_per_s")), _fmt((rep.get("eval_protocol") or {}).get("targets_total_s", math.nan) / 60, 2),
                     " ".join(verdicts) or "-"])
    print(f"\nsuite summary ({len(names)} methods; numbers in {out_dir}):")
    print(format_table(["method", "batch", "opt img/s", "fp32 img/s", "ratio", "peak GiB", "MFU %", "eval win/s",
                        "eval min", "targets"], rows))
    (out_dir / "suite.json").write_text(json.dumps(_clean({k: {"rc": v["rc"], "wall_s": v["wall_s"]}
                                                           for k, v in results.items()}), indent=1))
    return 0 if all(r["rc"] == 0 for r in results.values()) else 1


def _write_json(path: str | None, report: dict[str, Any]) -> None:
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_clean(report), indent=1))
    print(f"numbers: {out}")


if __name__ == "__main__":
    sys.exit(main())
