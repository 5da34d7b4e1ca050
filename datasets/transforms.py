"""Training and test transforms (mmseg-equivalent semantics, own implementation, cv2 resizing).

Train pipeline (mmseg order): rescale -> RandomCrop (cat_max_ratio) -> RandomFlip ->
PhotoMetricDistortion -> pad to the crop size (label 255; the image's padding is overwritten on the device,
see ``datasets.batching``). All randomness comes from the ``np.random.Generator`` passed in, so
``TrainTransform(aug)(sample, default_rng(seed))`` is a pure function of the sample and the seed.

Outputs follow the shared contract: image ``torch.uint8[3,H,W]`` RGB (not normalised; the device converts and
normalises), label ``torch.uint8[H,W]`` train ids with 255 ignore; training samples also carry
``valid_size`` = (h, w), the unpadded part of the crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from PIL import Image

from .labels import IGNORE_INDEX

__all__ = [
    "rescale_size",
    "shortest_edge_size",
    "TrainAugmentation",
    "TrainTransform",
    "TestTransform",
    "HeightCenterCrop",
    "prehalve",
    "height_center_crop",
    "random_crop_box",
    "photometric_distortion",
    "color_jitter",
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
    color_jitter: (brightness, contrast, saturation) strengths of a torchvision-style ColorJitter applied after
    the flip (FAMix: (0.8, 0.8, 0.8)); None disables it. See :func:`color_jitter`.
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
    color_jitter: tuple[float, float, float] | None = None

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
        if self.color_jitter is not None and (len(self.color_jitter) != 3 or min(self.color_jitter) < 0):
            raise ValueError(f"color_jitter must be 3 non-negative strengths (brightness, contrast, saturation), "
                             f"got {self.color_jitter}")


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


def color_jitter(img: np.ndarray, strengths: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """torchvision ``ColorJitter(brightness, contrast, saturation)`` on a uint8 RGB image (PIL path).

    Each factor is drawn uniformly from [max(0, 1 - s), 1 + s]; the three adjustments run in a random order
    (torchvision permutes them) through PIL ``ImageEnhance`` (what torchvision calls on PIL images):
    brightness blends with black, contrast with the grayscale mean, saturation with the grayscale image.
    A strength of 0 skips that adjustment.
    """
    from PIL import Image, ImageEnhance  # noqa: F811 (local: independent of the module imports)

    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    factors = [None if s == 0 else float(rng.uniform(max(0.0, 1 - s), 1 + s)) for s in strengths]
    pil = Image.fromarray(np.ascontiguousarray(img))
    for index in rng.permutation(3):
        if factors[index] is not None:
            pil = enhancers[index](pil).enhance(factors[index])
    return np.asarray(pil, dtype=np.uint8).copy()


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 HWC RGB + uint8 HW -> uint8 [3,H,W] and uint8 [H,W] (compact across worker processes; the
    device converts to float32 / int64, ``datasets.batching.batch_to_device``)."""
    img_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    lab_t = torch.from_numpy(np.ascontiguousarray(label))
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
        if rng.random() < a.hflip_prob:  # cv2.flip writes contiguous copies (numpy's [:, ::-1] copies later, slower)
            image, label = cv2.flip(image, 1), cv2.flip(label, 1)
        image = np.ascontiguousarray(image)
        if a.photometric:
            image = photometric_distortion(image, rng)
        if a.color_jitter is not None:
            image = color_jitter(image, a.color_jitter, rng)
        ch, cw = a.crop_size
        valid_size = (int(image.shape[0]), int(image.shape[1]))
        ph, pw = max(ch - image.shape[0], 0), max(cw - image.shape[1], 0)
        if ph or pw:  # the image's 0s become the normalisation mean on the device (mmseg pads after Normalize)
            image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            label = cv2.copyMakeBorder(np.ascontiguousarray(label), 0, ph, 0, pw, cv2.BORDER_CONSTANT,
                                       value=IGNORE_INDEX)
        out = _passthrough(sample)
        out["image"], out["label"] = to_tensors(image, label)
        out["valid_size"] = valid_size
        return out


@dataclass(frozen=True)
class HeightCenterCrop:
    """RobustNet's Mapillary test geometry (used by FAMix): resize so the height is ``height`` (keep
    ratio, width floored; bicubic image, nearest label), then centre crop / pad to ``size`` = (h, w).

    Image pad value ``image_pad``; label pad value ``label_pad``. RobustNet maps the 66 ids to train ids
    *before* this transform and pads the label with 0, i.e. padded pixels count as **road**
    (``label_pad=0`` reproduces that quirk; 255 would ignore them). Padding is split evenly (left/top
    gets the smaller half), crops are centred with ``round((w - tw) / 2)``.
    """

    height: int
    size: tuple[int, int]
    image_pad: int = 0
    label_pad: int = IGNORE_INDEX


def _pil_resize(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """PIL resize of a uint8 HxW or HxWx3 array to size=(w, h) (the offline tools of Rein/RobustNet use PIL)."""
    return np.array(Image.fromarray(np.ascontiguousarray(array)).resize(size, resample=resample))


def prehalve(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rein's offline Mapillary halving (``mapillary_resize.py``): (w // 2, h // 2), PIL bicubic for the
    image and PIL nearest for the label (which is then the scoring label). Rein also re-encodes the halved
    image as JPEG; that lossy step is not reproduced."""
    h, w = label.shape[:2]
    size = (max(1, w // 2), max(1, h // 2))
    return _pil_resize(image, size, Image.BICUBIC), _pil_resize(label, size, Image.NEAREST)


def height_center_crop(image: np.ndarray, label: np.ndarray, spec: HeightCenterCrop) -> tuple[np.ndarray, np.ndarray]:
    """Apply :class:`HeightCenterCrop` to an image/label pair (both change; the label is scored as is)."""
    h, w = label.shape[:2]
    if h != spec.height:
        nw = max(1, int(w / h * spec.height))
        image = _pil_resize(image, (nw, spec.height), Image.BICUBIC)
        label = _pil_resize(label, (nw, spec.height), Image.NEAREST)
    th, tw = spec.size
    for axis, target in ((0, th), (1, tw)):
        n = label.shape[axis]
        if n > target:
            start = int(round((n - target) / 2.0))
            index = slice(start, start + target)
            image = image[index] if axis == 0 else image[:, index]
            label = label[index] if axis == 0 else label[:, index]
        elif n < target:
            before = (target - n) // 2
            pad = (before, target - n - before)
            image = np.pad(image, (pad, (0, 0), (0, 0)) if axis == 0 else ((0, 0), pad, (0, 0)),
                           constant_values=spec.image_pad)
            label = np.pad(label, (pad, (0, 0)) if axis == 0 else ((0, 0), pad), constant_values=spec.label_pad)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


class TestTransform:
    """Test-time geometry: optional label-space steps, then the keep-ratio resize of the image only.

    1. ``prehalve`` (Rein's Mapillary): image and label halved offline (:func:`prehalve`);
    2. ``center_crop`` (RobustNet/FAMix Mapillary): :class:`HeightCenterCrop` on image and label;
    3. ``resize`` = (long, short): mmseg ``Resize(scale, keep_ratio=True)`` of the image only, or None.

    Scoring happens at the label size after steps 1-2 (``ori_size`` = (H, W) of that label); the
    prediction is upsampled to it before argmax.
    """

    __test__ = False  # not a pytest class

    def __init__(self, resize: tuple[int, int] | None, *, prehalve: bool = False,
                 center_crop: HeightCenterCrop | None = None) -> None:
        self.resize = None if resize is None else (int(resize[0]), int(resize[1]))
        self.prehalve = bool(prehalve)
        self.center_crop = center_crop

    def __repr__(self) -> str:
        extra = (", prehalve=True" if self.prehalve else "") + (
            f", center_crop={self.center_crop}" if self.center_crop is not None else "")
        return f"TestTransform(resize={self.resize}{extra})"

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
        image, label = sample["image"], sample["label"]
        if self.prehalve:
            image, label = prehalve(image, label)
        if self.center_crop is not None:
            image, label = height_center_crop(image, label, self.center_crop)
        h, w = image.shape[:2]
        if self.resize is not None:
            nw, nh = rescale_size(w, h, self.resize)
            if (nw, nh) != (w, h):
                image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        out = _passthrough(sample)
        out["image"], out["label"] = to_tensors(image, label)
        out["ori_size"] = (int(label.shape[0]), int(label.shape[1]))
        return out
