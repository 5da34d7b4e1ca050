"""Inference and scoring of one split (datasets.md §8.1, §8.2).

``predict_fn(images float32[B,3,h,w] 0..255) -> scores float[B,C,h,w]`` (or any object with such a
``predict`` method) is run under ``torch.inference_mode()`` on each test image, whole or with mmseg's
sliding window; the scores are resized bilinearly to the *native* label size, argmax-ed and compared with
the label (:func:`resized_argmax`: one class at a time, never the full-size float32 score tensor, which is
~0.9 GB for a 12-megapixel Mapillary label). Per-image confusion matrices are stored in
``<out_dir>/confusion_<key>.npz`` (arrays ``names`` and ``confusion`` [N,C,C]); the dataset score is computed
from their sum, so re-scoring needs no re-inference (:func:`score_file`). The predictions of the protocol's
gallery images are saved as palette PNGs on the way (``gallery``, :mod:`benchmarks.predictions`). Partial
results are checkpointed and survive failures (``resume=True`` continues where a run stopped).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .metrics import SplitScore, confusion_matrix, score_confusion
from .numerics import Numerics
from .predictions import save_gallery_item
from .protocols import InferenceSpec

__all__ = [
    "EvaluationError",
    "SplitEvaluation",
    "slide_windows",
    "infer_logits",
    "resize_logits",
    "resized_argmax",
    "evaluate_split",
    "confusion_path",
    "partial_path",
    "load_confusions",
    "save_confusions",
    "score_file",
]

PredictFn = Callable[[torch.Tensor], torch.Tensor]


class EvaluationError(RuntimeError):
    """Loading or predicting one test image failed; the message names the image and the partial file."""


# ---------------------------------------------------------------------------------------------- inference
def slide_windows(h: int, w: int, crop: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """mmseg sliding-window grid as ``(y0, y1, x0, x1)`` boxes (slice ``img[..., y0:y1, x0:x1]``).

    ``h_grids = ceil(max(h - crop_h, 0) / stride_h) + 1`` (same for w); window i starts at
    ``i * stride`` and is shifted back so it ends inside the image. An image smaller than the crop is one
    window of the image size (no padding). Rows first, then columns.
    """
    crop_h, crop_w = int(crop[0]), int(crop[1])
    stride_h, stride_w = int(stride[0]), int(stride[1])
    if min(crop_h, crop_w, stride_h, stride_w, h, w) <= 0:
        raise ValueError(f"slide_windows: sizes must be positive, got h={h} w={w} crop={crop} stride={stride}")
    h_grids = math.ceil(max(h - crop_h, 0) / stride_h) + 1
    w_grids = math.ceil(max(w - crop_w, 0) / stride_w) + 1
    boxes = []
    for i in range(h_grids):
        y1 = min(i * stride_h + crop_h, h)
        y0 = max(y1 - crop_h, 0)
        for j in range(w_grids):
            x1 = min(j * stride_w + crop_w, w)
            x0 = max(x1 - crop_w, 0)
            boxes.append((y0, y1, x0, x1))
    return boxes


def resize_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of [B,C,h,w] scores to ``size`` = (H, W); no-op if equal."""
    size = (int(size[0]), int(size[1]))
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def resized_argmax(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``resize_logits(logits, size).argmax(1)`` (int64 [B,H,W]) without the full-size [B,C,H,W] float32 tensor.

    Bilinear interpolation treats every class plane on its own, so the planes are resized one at a time and a
    running maximum keeps the winner; a later class replaces it only when strictly greater, so ties go to the
    lower class index, as ``argmax`` does. The values, and so the labels, are bit-identical to the one-shot
    resize (NaN scores excepted). Extra memory: about 10 bytes per output pixel instead of 4 per class.
    """
    size = (int(size[0]), int(size[1]))
    num_classes = logits.shape[1]
    if num_classes == 0:
        raise ValueError(f"resized_argmax: no classes in logits of shape {tuple(logits.shape)}")
    best_value = resize_logits(logits[:, :1], size)[:, 0].clone()
    best_index = torch.zeros_like(best_value, dtype=torch.uint8 if num_classes <= 256 else torch.int64)
    for c in range(1, num_classes):
        plane = resize_logits(logits[:, c:c + 1], size)[:, 0]
        best_index.masked_fill_(plane > best_value, c)
        torch.maximum(best_value, plane, out=best_value)
    return best_index.long()


def _as_predict_fn(model: Any) -> PredictFn:
    fn = getattr(model, "predict", None)
    if callable(fn):
        return fn
    if callable(model):
        return model
    raise TypeError(f"expected a callable predict_fn or an object with a .predict method, got {type(model).__name__}")


def _run(predict_fn: PredictFn, images: torch.Tensor, num_classes: int) -> torch.Tensor:
    out = predict_fn(images)
    expected = (images.shape[0], num_classes, *images.shape[-2:])
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"predict_fn returned {got}, expected scores of shape {expected} (B, C, h, w)")
    return out.float()


def _slide(predict_fn: PredictFn, image: torch.Tensor, spec: InferenceSpec, num_classes: int,
           batch_windows: int) -> torch.Tensor:
    b, _, h, w = image.shape
    boxes = slide_windows(h, w, spec.crop_size, spec.stride)
    scores = image.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    count = image.new_zeros((1, 1, h, w), dtype=torch.float32)
    step = max(1, int(batch_windows))
    for k in range(0, len(boxes), step):
        chunk = boxes[k:k + step]
        crops = torch.cat([image[:, :, y0:y1, x0:x1] for y0, y1, x0, x1 in chunk], dim=0)
        out = _run(predict_fn, crops, num_classes)
        for n, (y0, y1, x0, x1) in enumerate(chunk):
            scores[:, :, y0:y1, x0:x1] += out[n * b:(n + 1) * b]
            count[:, :, y0:y1, x0:x1] += 1
    return scores / count


def _single_pass(predict_fn: PredictFn, image: torch.Tensor, spec: InferenceSpec, num_classes: int,
                 batch_windows: int) -> torch.Tensor:
    if spec.mode == "whole":
        return _run(predict_fn, image, num_classes)
    return _slide(predict_fn, image, spec, num_classes, batch_windows)


def infer_logits(predict_fn: Any, image: torch.Tensor, spec: InferenceSpec, num_classes: int,
                 *, batch_windows: int = 1) -> torch.Tensor:
    """Scores [B,C,H,W] (float32) for test image(s) [B,3,H,W] under ``spec``.

    ``whole``: one forward pass. ``slide``: window scores summed into a full-size buffer and divided by
    the per-pixel window count; ``batch_windows`` windows go through ``predict_fn`` at once. With
    ``scales`` the image is resized bilinearly by each factor and the scores resized back; with ``flip``
    the horizontally flipped image is added (scores flipped back). All passes are averaged.
    """
    predict_fn = _as_predict_fn(predict_fn)
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"infer_logits: expected images of shape [B,3,H,W], got {tuple(image.shape)}")
    h, w = image.shape[-2:]
    total: torch.Tensor | None = None
    passes = 0
    for scale in spec.scales:
        scaled = image
        if scale != 1.0:
            size = (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)))
            scaled = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        for flip in ((False, True) if spec.flip else (False,)):
            x = scaled.flip(-1) if flip else scaled
            out = _single_pass(predict_fn, x, spec, num_classes, batch_windows)
            if flip:
                out = out.flip(-1)
            out = resize_logits(out, (h, w))
            total = out if total is None else total + out
            passes += 1
    assert total is not None
    return total / passes if passes > 1 else total


# ---------------------------------------------------------------------------------------------- storage
def confusion_path(out_dir: Path | str, key: str) -> Path:
    """``<out_dir>/confusion_<key>.npz``: the final per-image confusion matrices of split ``key``."""
    return Path(out_dir) / f"confusion_{key}.npz"


def partial_path(out_dir: Path | str, key: str) -> Path:
    """``<out_dir>/confusion_<key>.partial.npz``: checkpoint of an unfinished evaluation."""
    return Path(out_dir) / f"confusion_{key}.partial.npz"


def save_confusions(path: Path | str, names: Sequence[str], cms: np.ndarray | Sequence[np.ndarray],
                    num_classes: int = 19) -> Path:
    """Atomically write ``names`` (str [N]) and ``confusion`` (int64 [N,C,C]) to ``path`` (.npz)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(cms, dtype=np.int64) if len(names) else np.zeros((0, num_classes, num_classes), np.int64)
    if arr.ndim != 3 or arr.shape[0] != len(names):
        raise ValueError(f"save_confusions: {len(names)} names but confusion array of shape {arr.shape}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, names=np.asarray(list(names), dtype=str), confusion=arr)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def load_confusions(path: Path | str) -> tuple[list[str], np.ndarray]:
    """``(names, confusion int64 [N,C,C])`` from a file written by :func:`evaluate_split`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no confusion file at {path}; run evaluate_split(..., out_dir={path.parent}) first")
    with np.load(path, allow_pickle=False) as z:
        missing = {"names", "confusion"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: not a confusion file (missing arrays {sorted(missing)}; has {z.files})")
        names = [str(n) for n in z["names"]]
        cms = z["confusion"].astype(np.int64)
    if cms.ndim != 3 or cms.shape[0] != len(names) or cms.shape[1] != cms.shape[2]:
        raise ValueError(f"{path}: confusion array of shape {cms.shape} does not match {len(names)} names")
    return names, cms


def score_file(path: Path | str) -> SplitScore:
    """Re-score a saved confusion file (sum over images, then IoU): no re-inference."""
    names, cms = load_confusions(path)
    return score_confusion(cms.sum(0), num_images=len(names))


# ---------------------------------------------------------------------------------------------- evaluation
@dataclass
class SplitEvaluation:
    """Result of :func:`evaluate_split`. ``confusion`` is the dataset-level [C,C] matrix."""

    key: str
    score: SplitScore
    confusion: np.ndarray
    per_image_path: str
    num_images: int
    seconds: float


def _dataset_names(dataset: Any) -> list[str] | None:
    names = getattr(dataset, "names", None)
    if names is None or callable(names):
        return None
    try:
        names = [str(n) for n in names]
    except TypeError:
        return None
    return names if len(names) == len(dataset) else None


class _Indexed(torch.utils.data.Dataset):
    """``dataset`` restricted to ``indices``, yielding ``(index, item)`` (for in-order prefetching)."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return self.indices[i], self.dataset[self.indices[i]]


def _identity(x: Any) -> Any:
    return x


def _describe(index: int, name: str | None) -> str:
    return f"image #{index} ({name!r})" if name else f"image #{index}"


def evaluate_split(
    predict_fn: Any,
    dataset: Any,
    spec: InferenceSpec,
    *,
    key: str,
    num_classes: int = 19,
    device: str | torch.device = "cpu",
    out_dir: Path | str,
    autocast_dtype: torch.dtype | None = None,
    numerics: Numerics | None = None,
    progress: bool = True,
    batch_windows: int = 1,
    num_workers: int = 0,
    resume: bool = False,
    checkpoint_every: int = 50,
    ignore_index: int = 255,
    gallery: Collection[str] = (),
    gallery_dir: Path | str | None = None,
) -> SplitEvaluation:
    """Evaluate ``predict_fn`` on every item of ``dataset`` and store per-image confusion matrices.

    Items are dicts with ``image`` [3,h,w] (uint8 or float, 0..255, already test-resized), ``label`` [H0,W0]
    at native size and ``name``. Scores are resized to the label size before argmax. Partial results are
    written to ``confusion_<key>.partial.npz`` every ``checkpoint_every`` images and when an error
    occurs; with ``resume=True`` images already in the partial (or final) file are skipped (without
    loading them when the dataset has a ``names`` sequence). A failing image raises
    :class:`EvaluationError` naming it. ``numerics`` (what ``benchmarks.numerics.configure_numerics`` returned
    for the run's ``--precision``) sets the model's autocast, as in training; without it ``autocast_dtype``
    (e.g. ``torch.bfloat16`` on CUDA) does; scores are accumulated in float32. ``num_workers > 0`` decodes the
    images in that many DataLoader worker processes, in order, ahead of the model (the results are the same).
    Images named in ``gallery`` get their image, ground truth and prediction saved to ``gallery_dir``
    (:func:`benchmarks.predictions.save_gallery_item`).
    """
    start = time.perf_counter()
    predict = _as_predict_fn(predict_fn)
    device = torch.device(device)
    out_dir = Path(out_dir)
    final, partial = confusion_path(out_dir, key), partial_path(out_dir, key)

    done: dict[str, np.ndarray] = {}
    if resume:
        for path in (final, partial):
            if path.is_file():
                old_names, old_cms = load_confusions(path)
                if old_cms.shape[1:] != (num_classes, num_classes):
                    raise ValueError(f"{path}: {old_cms.shape[1]} classes on disk, but num_classes={num_classes}")
                for n, cm in zip(old_names, old_cms):
                    done.setdefault(n, cm)

    order: list[str] = []          # names in dataset order
    results: dict[str, np.ndarray] = {}
    new_since_flush = 0

    def flush(path: Path) -> None:
        names = list(results) + [n for n in done if n not in results]
        save_confusions(path, names, [results.get(n, done.get(n)) for n in names], num_classes)

    known_names = _dataset_names(dataset)  # optional; lets resume skip without loading, names failures

    def autocast() -> contextlib.AbstractContextManager:
        if numerics is not None:
            return numerics.autocast(device.type)
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=autocast_dtype)

    prefetched = None
    if num_workers > 0:  # decode ahead in worker processes, in dataset order, skipping what resume skips
        todo = [i for i in range(len(dataset)) if known_names is None or known_names[i] not in done]
        prefetched = iter(torch.utils.data.DataLoader(
            _Indexed(dataset, todo), batch_size=None, num_workers=int(num_workers), collate_fn=_identity,
            pin_memory=device.type == "cuda", prefetch_factor=2))

    bar = tqdm(total=len(dataset), desc=f"eval {key}", disable=not progress, leave=False)
    index, name = -1, None
    try:
        for index in range(len(dataset)):
            name = known_names[index] if known_names is not None else None
            if name is not None and name in done:
                order.append(name)
                results[name] = done[name]
                bar.update(1)
                continue
            if prefetched is None:
                item = dataset[index]
            else:
                loaded_index, item = next(prefetched)
                if loaded_index != index:
                    raise RuntimeError(f"prefetch out of order: got image #{loaded_index}, expected #{index}")
            name = str(item["name"])
            if name in results:
                raise ValueError(f"duplicate image name {name!r} in split {key!r}: names must be unique")
            order.append(name)
            if name in done:
                results[name] = done[name]
                bar.update(1)
                continue
            # uint8 from the loader (pinned when prefetched); float on the device
            image = torch.as_tensor(item["image"]).to(device, non_blocking=True).float().unsqueeze(0)
            label = torch.as_tensor(item["label"]).to(device, non_blocking=True)
            if label.ndim == 3 and label.shape[0] == 1:
                label = label[0]
            with torch.inference_mode(), autocast():
                logits = infer_logits(predict, image, spec, num_classes, batch_windows=batch_windows)
            with torch.inference_mode():
                pred = resized_argmax(logits.float(), label.shape[-2:])[0]
                results[name] = confusion_matrix(pred, label, num_classes=num_classes, ignore_index=ignore_index)
                if name in gallery and gallery_dir is not None:
                    save_gallery_item(gallery_dir, name, image[0], label, pred)
            new_since_flush += 1
            bar.update(1)
            if checkpoint_every and new_since_flush >= checkpoint_every:
                flush(partial)
                new_since_flush = 0
    except BaseException as exc:
        if results or done:
            flush(partial)
        bar.close()
        if isinstance(exc, Exception):
            n_saved = len(set(results) | set(done))
            raise EvaluationError(
                f"evaluation of split {key!r} failed on {_describe(index, name)}: {type(exc).__name__}: {exc}. "
                f"{n_saved} finished image(s) are saved in {partial}; to continue: the same command with --resume "
                f"(evaluate_split(..., resume=True))."
            ) from exc
        raise
    bar.close()

    extra = [n for n in done if n not in results]
    if extra:
        warnings.warn(f"{key}: {len(extra)} image(s) in the partial file are not in the dataset and are dropped "
                      f"(e.g. {extra[:3]})", stacklevel=2)
    cms = np.stack([results[n] for n in order]) if order else np.zeros((0, num_classes, num_classes), np.int64)
    save_confusions(final, order, cms, num_classes)
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    total = cms.sum(0)
    return SplitEvaluation(
        key=key,
        score=score_confusion(total, num_images=len(order)),
        confusion=total,
        per_image_path=str(final),
        num_images=len(order),
        seconds=time.perf_counter() - start,
    )

