"""Model-level suites: the trainer's step, batched sliding-window prediction, host syncs, protocol evaluation time.

Everything here works on any object with ``training_step`` / ``predict`` / ``param_groups``; what is timed comes
in as arguments: ``spec`` (builds the model: ``runners.speed.MethodSpec``) and ``trainer``
(:class:`TrainerParts`: the trainer's own ``build_optimizer`` and ``train_step`` from ``runners.train``), because
``benchmarks`` may not import ``methods`` or ``runners``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from datasets import TestTransform, read_image, read_index_png

from ..evaluate import infer_logits, resized_argmax, slide_windows
from ..metrics import confusion_matrix
from ..protocols import InferenceSpec, keep_ratio_size
from .data import synthetic_label_ids, synthetic_photo
from .flops import count_flops
from .timing import (Mode, free_memory, is_oom, peak_memory, precision, reset_peak_memory, summary, synchronize,
                     time_calls)

__all__ = ["TARGETS", "TEST_SPLITS", "TrainerParts", "synthetic_batch", "make_optimizer", "bench_train",
           "bench_eval", "attention_report", "find_host_syncs", "protocol_geometry", "estimate_protocol_eval"]

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


@dataclass(frozen=True)
class TrainerParts:
    """The trainer's own pieces (``runners.train.build_optimizer`` and ``runners.train.train_step``), handed in
    so that the benchmark times exactly what ``runners.run`` runs."""

    build_optimizer: Callable[[Any, Any], torch.optim.Optimizer]
    train_step: Callable[..., tuple[Tensor, dict[str, Tensor], Tensor | None]]


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


def _opt_params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def make_optimizer(method: Any, recipe: Any, mode: Mode, trainer: TrainerParts) -> torch.optim.Optimizer:
    """The trainer's optimizer (``trainer.build_optimizer``: fused AdamW on CUDA) for the optimised mode; the
    same parameter groups with PyTorch's default (foreach) implementation for the baseline."""
    if mode.trainer_optimizer:
        return trainer.build_optimizer(method, recipe)
    groups = method.param_groups(recipe)
    if not groups:
        raise ValueError(f"{getattr(method, 'name', method)} has no trainable parameters")
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps,
                                 weight_decay=recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


# ---------------------------------------------------------------------------------------------- train / eval
def _flops_without_recompute(spec: Any, method: Any, fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Model FLOPs of ``fn`` with activation checkpointing switched off (``spec.set_grad_checkpointing``; MFU
    counts no recomputation); falls back to counting with it on when that runs out of memory."""
    states = [(m, m.cfg) for m in method.modules() if hasattr(m, "cfg") and hasattr(m.cfg, "grad_checkpointing")]
    was_on = any(c.grad_checkpointing for _, c in states)
    try:
        if was_on:
            spec.set_grad_checkpointing(method, False)
        out = count_flops(fn)
        out["includes_recompute"] = False
        return out
    except Exception as exc:  # noqa: BLE001
        if not (was_on and is_oom(exc)):
            raise
    finally:
        for m, c in states:
            m.cfg = c
    free_memory(device)
    out = count_flops(fn)
    out["includes_recompute"] = True
    return out


def bench_train(spec: Any, mode: Mode, images: Tensor, labels: Tensor, *, trainer: TrainerParts, steps: int,
                warmup: int, device: torch.device, seed: int = 0, count: bool = True, keep: bool = False
                ) -> dict[str, Any]:
    """Time the trainer's full step (``trainer.train_step``) of ``spec`` in ``mode``. Returns times, img/s, memory,
    FLOPs, losses."""
    out: dict[str, Any] = {"mode": mode.key, "settings": mode.describe()}
    with precision(mode, device):
        method = spec.build(device, seed=seed)
        if mode.channels_last:
            method.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        method.train()
        optimizer = make_optimizer(method, spec.recipe, mode, trainer)
        params = _opt_params(optimizer)
        out["params"] = {"trainable": sum(p.numel() for p in params),
                         "total": sum(p.numel() for p in method.parameters())}
        clip = spec.recipe.grad_clip
        step_fn = method.training_step
        if mode.compile:
            step_fn = torch.compile(step_fn, mode=mode.compile_mode)

        def run(fn: Callable = step_fn) -> Tensor:
            total, _, _ = trainer.train_step(fn, optimizer, params, images, labels, autocast=mode.autocast(device),
                                             grad_clip=clip)
            return total.detach()

        t0 = time.perf_counter()
        loss = run()
        synchronize(device)
        out["first_step_s"] = time.perf_counter() - t0  # includes compilation with --compile, lazy set-up
        out["first_loss"] = float(loss)
        if count:  # after the first step: one-time lazy work (e.g. embedding class texts) is not a step's cost
            flops = _flops_without_recompute(spec, method, lambda: run(method.training_step), device)
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
        out["time"] = summary(times)
        out["img_per_s"] = spec.batch_size / out["time"]["median_s"]
        out["img_per_s_wall"] = spec.batch_size * steps / wall
        out["peak_memory"] = peak_memory(device)
        if count:
            out["tflops"] = out["flops_per_step"] / out["time"]["median_s"] / 1e12
    if keep:
        out["_method"], out["_optimizer"] = method, optimizer
    return out


def bench_eval(spec: Any, mode: Mode, windows: Tensor, *, steps: int, warmup: int, device: torch.device,
               method: Any = None, seed: int = 0, count: bool = True) -> dict[str, Any]:
    """Time ``predict`` on a batch of sliding windows (inference mode, the mode's autocast)."""
    out: dict[str, Any] = {"mode": mode.key, "windows_per_call": int(windows.shape[0])}
    with precision(mode, device):
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
            with grad_mode(), mode.autocast(device):
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
        out["time"] = summary(times)
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




def find_host_syncs(spec: Any, mode: Mode, images: Tensor, labels: Tensor, *, trainer: TrainerParts,
                    device: torch.device, seed: int = 0, method: Any = None, optimizer: Any = None) -> dict[str, Any]:
    """Run one eager training step under ``torch.cuda.set_sync_debug_mode("warn")`` and list where the host
    waited for the GPU (file:line in this project, with the message), most frequent first."""
    if device.type != "cuda":
        return {"available": False, "reason": "sync debug mode needs CUDA"}
    with precision(mode, device):
        if method is None:
            method = spec.build(device, seed=seed)
        method.train()
        if optimizer is None:
            optimizer = make_optimizer(method, spec.recipe, mode, trainer)
        params = _opt_params(optimizer)

        def step() -> None:
            trainer.train_step(method.training_step, optimizer, params, images, labels,
                               autocast=mode.autocast(device), grad_clip=spec.recipe.grad_clip)

        step()
        synchronize(device)
        events: list[dict[str, Any]] = []
        root = str(Path(__file__).resolve().parents[2])

        def record(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
            frames = [f for f in traceback.extract_stack()[:-1]
                      if f.filename.startswith(root) and f"{os.sep}speed{os.sep}" not in f.filename]
            where = [f"{os.path.relpath(f.filename, root)}:{f.lineno} {f.name}" for f in frames[-3:]]
            events.append({"message": str(message).splitlines()[0][:160], "where": where or [f"{filename}:{lineno}"]})

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
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
                           mode: Mode, batch_windows: int, reps: int = 2,
                           include_reference: bool = True, num_classes: int = 19,
                           loading: bool = True, seed: int = 0) -> dict[str, Any]:
    """Estimate a protocol's full evaluation time: for each split (:func:`protocol_geometry`), the measured
    seconds per typical image of the real per-image path (``infer_logits`` with ``batch_windows``, resize to
    the native label size, argmax, confusion matrix; ``mode``'s autocast) times the number of images;
    optionally also the seconds to decode + test-resize one such image on one CPU core (``loading``)."""
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
                with torch.inference_mode(), mode.autocast(device):
                    logits = infer_logits(predict, image, spec, num_classes, batch_windows=batch_windows)
                with torch.inference_mode():
                    pred = resized_argmax(logits.float(), native)[0]
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

    rng = np.random.default_rng(seed)
    h, w = native
    with tempfile.TemporaryDirectory(prefix="dgss_speed_load_") as tmp:
        img_path, lab_path = Path(tmp) / f"img{ext}", Path(tmp) / "label.png"
        photo = cv2.cvtColor(synthetic_photo(h, w, rng), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(img_path), photo, [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else [])
        Image.frombytes("L", (w, h), synthetic_label_ids(h, w, rng).tobytes()).save(lab_path)
        transform = TestTransform(tuple(resize) if resize else None)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            sample = {"image": read_image(img_path), "label": read_index_png(lab_path), "name": "x"}
            transform(sample)
            times.append(time.perf_counter() - t0)
    return min(times)

