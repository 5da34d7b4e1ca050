"""Training and test transforms (mmseg-equivalent semantics, own implementation, cv2 resizing).

Train pipeline (mmseg order): rescale -> RandomCrop (cat_max_ratio) -> RandomFlip ->
PhotoMetricDistortion -> pad to the crop size (image 0, label 255). All randomness comes from the
``np.random.Generator`` passed in, so ``TrainTransform(aug)(sample, default_rng(seed))`` is a pure
function of the sample and the seed.

Outputs follow the shared contract: image ``torch.float32[3,H,W]`` in 0..255 RGB (not normalised),
label ``torch.int64[H,W]`` train ids with 255 ignore.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from .labels import IGNORE_INDEX

__all__ = [
    "rescale_size",
    "shortest_edge_size",
    "TrainAugmentation",
    "TrainTransform",
    "TestTransform",
    "random_crop_box",
    "photometric_distortion",
    "to_tensors",
]

RESCALE_MODES = ("ratio_range", "short_edge_choices", "fixed", "none")


def rescale_size(w: int, h: int, scale: tuple[int, int]) -> tuple[int, int]:
    """Keep-ratio target size (mmcv ``rescale_size``): fit (w, h) inside scale = (long, short).

    factor = min(long / max(w, h), short / min(w, h)); new = (int(w*f + 0.5), int(h*f + 0.5)).
    """
    long_edge, short_edge = max(scale), min(scale)
    f = min(long_edge / max(w, h), short_edge / min(w, h))
    return int(w * f + 0.5), int(h * f + 0.5)


def shortest_edge_size(w: int, h: int, short: int, max_long: int) -> tuple[int, int]:
    """mmseg ``ResizeShortestEdge``: shortest edge -> ``short``, long edge capped at ``max_long``."""
    f = short / min(w, h)
    new_w, new_h = w * f, h * f
    if max(new_w, new_h) > max_long:
        g = max_long / max(new_w, new_h)
        new_w, new_h = new_w * g, new_h * g
    return int(new_w + 0.5), int(new_h + 0.5)


@dataclass(frozen=True)
class TrainAugmentation:
    """Training augmentation settings (what a paper's mmseg pipeline calls Resize/RandomCrop/...).

    rescale:
      "ratio_range": random ratio r in ``ratio_range``; size = keep-ratio fit into ``base_size``*r
                     (mmseg RandomResize), or the original size * r when ``base_size`` is None.
      "short_edge_choices": Rein's RandomChoiceResize: shortest edge from ``short_edge_choices``,
                     long edge capped at ``max_long_edge``.
      "fixed":      resize to ``fixed_size`` = (w, h) without keeping the ratio (VLTSeg GTA 1280x720).
      "none":       no rescaling (FAMix GTA).
    crop_size is (h, w); cat_max_ratio < 1 retries the crop up to 10 times while one class covers
    more than that share of the non-ignored crop pixels (mmseg RandomCrop).
    """

    crop_size: tuple[int, int] = (512, 512)
    rescale: str = "ratio_range"
    ratio_range: tuple[float, float] = (0.5, 2.0)
    base_size: tuple[int, int] | None = None
    short_edge_choices: tuple[int, ...] = ()
    max_long_edge: int = 2048
    fixed_size: tuple[int, int] | None = None
    cat_max_ratio: float = 0.75
    hflip_prob: float = 0.5
    photometric: bool = True

    def __post_init__(self) -> None:
        if self.rescale not in RESCALE_MODES:
            raise ValueError(f"rescale must be one of {RESCALE_MODES}, got {self.rescale!r}")
        if self.rescale == "short_edge_choices" and not self.short_edge_choices:
            raise ValueError("rescale='short_edge_choices' needs a non-empty short_edge_choices")
        if self.rescale == "fixed" and self.fixed_size is None:
            raise ValueError("rescale='fixed' needs fixed_size=(w, h)")
        if self.rescale == "ratio_range" and not 0 < self.ratio_range[0] <= self.ratio_range[1]:
            raise ValueError(f"bad ratio_range {self.ratio_range}")
        if min(self.crop_size) <= 0:
            raise ValueError(f"bad crop_size {self.crop_size}")


def random_crop_box(
    label: np.ndarray, crop_size: tuple[int, int], cat_max_ratio: float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of an mmseg RandomCrop, retried up to 10 times for ``cat_max_ratio``."""
    h, w = label.shape[:2]
    ch, cw = crop_size

    def draw() -> tuple[int, int, int, int]:
        y0 = int(rng.integers(0, max(h - ch, 0) + 1))
        x0 = int(rng.integers(0, max(w - cw, 0) + 1))
        return y0, min(y0 + ch, h), x0, min(x0 + cw, w)

    box = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            y0, y1, x0, x1 = box
            counts = np.bincount(label[y0:y1, x0:x1].ravel(), minlength=256)
            counts[IGNORE_INDEX] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = draw()
    return box


def photometric_distortion(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg PhotoMetricDistortion on uint8 RGB: brightness (+-32), contrast (0.5-1.5, before or
    after the colour steps at random), saturation (0.5-1.5), hue (+-18 on OpenCV's 0-180 scale).
    Each step is applied with probability 1/2."""

    def convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    if rng.integers(2):
        img = convert(img, beta=float(rng.uniform(-32, 32)))
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        img = convert(img, alpha=float(rng.uniform(0.5, 1.5)))
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = convert(hsv[..., 1], alpha=float(rng.uniform(0.5, 1.5)))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(rng.integers(-18, 18))) % 180).astype(np.uint8)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first and rng.integers(2):
        img = convert(img, alpha=float(rng.uniform(0.5, 1.5)))
    return img


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 HWC RGB + uint8 HW -> float32 [3,H,W] (0..255) and int64 [H,W]."""
    img_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
    lab_t = torch.from_numpy(np.ascontiguousarray(label)).long()
    return img_t, lab_t


def _resize_pair(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    w, h = size
    if (w, h) == (image.shape[1], image.shape[0]):
        return image, label
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    return image, label


def _passthrough(sample: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sample.items() if k not in ("image", "label")}


class TrainTransform:
    """Random rescale, crop, flip, photometric distortion and padding (see ``TrainAugmentation``)."""

    def __init__(self, aug: TrainAugmentation) -> None:
        self.aug = aug

    def __repr__(self) -> str:
        return f"TrainTransform({self.aug!r})"

    def target_size(self, w: int, h: int, rng: np.random.Generator) -> tuple[int, int]:
        """(w, h) after the rescale step."""
        a = self.aug
        if a.rescale == "ratio_range":
            r = float(rng.uniform(a.ratio_range[0], a.ratio_range[1]))
            base = a.base_size if a.base_size is not None else (w, h)
            return rescale_size(w, h, (int(base[0] * r), int(base[1] * r)))
        if a.rescale == "short_edge_choices":
            short = int(a.short_edge_choices[int(rng.integers(len(a.short_edge_choices)))])
            return shortest_edge_size(w, h, short, a.max_long_edge)
        if a.rescale == "fixed":
            assert a.fixed_size is not None
            return int(a.fixed_size[0]), int(a.fixed_size[1])
        return w, h

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        a = self.aug
        image, label = sample["image"], sample["label"]
        h, w = label.shape
        image, label = _resize_pair(image, label, self.target_size(w, h, rng))
        y0, y1, x0, x1 = random_crop_box(label, a.crop_size, a.cat_max_ratio, rng)
        image, label = image[y0:y1, x0:x1], label[y0:y1, x0:x1]
        if rng.random() < a.hflip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        image = np.ascontiguousarray(image)
        if a.photometric:
            image = photometric_distortion(image, rng)
        ch, cw = a.crop_size
        ph, pw = max(ch - image.shape[0], 0), max(cw - image.shape[1], 0)
        if ph or pw:
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=0)
            label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        out = _passthrough(sample)
        out["image"], out["label"] = to_tensors(image, label)
        return out


class TestTransform:
    """Test-time keep-ratio resize of the image only (mmseg ``Resize(scale, keep_ratio=True)``).

    ``resize`` = (long, short), or None for native resolution. The label stays at its native size
    (predictions are upsampled to it before scoring); ``ori_size`` = (H, W) of the label is added.
    """

    __test__ = False  # not a pytest class

    def __init__(self, resize: tuple[int, int] | None) -> None:
        self.resize = None if resize is None else (int(resize[0]), int(resize[1]))

    def __repr__(self) -> str:
        return f"TestTransform(resize={self.resize})"

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
        image, label = sample["image"], sample["label"]
        h, w = image.shape[:2]
        if self.resize is not None:
            nw, nh = rescale_size(w, h, self.resize)
            if (nw, nh) != (w, h):
                image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        out = _passthrough(sample)
        out["image"], out["label"] = to_tensors(image, label)
        out["ori_size"] = (int(label.shape[0]), int(label.shape[1]))
        return out
