"""The pretraining world: a broad, randomised street world the miniature foundation models learn from.

The miniature benchmark's foundation-model stand-ins (``methods.miniature_weights``) are pretrained here, never
on the benchmark's images or labels. Every scene draws its own appearance (``world_style``) from ranges much
wider than any benchmark domain: free per-element palettes, hue rotations up to 70 degrees, textures from
smooth to very rough, blur and sensor noise, every sky, night, fog, rain and snow, high and low cameras, and
three world-only restylings (colour channels permuted, grey, posterised). The world knows its signals exactly:
the element map (object classes, instance-free), metric depth, and a caption built from the class names of
what is in view, largest first ("a photo of a road, a car and a building.").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..labels import CITYSCAPES_CLASSES
from .elements import ELEMENT_TRAIN_ID
from .scene import render_scene
from .styles import DomainStyle

WORLD_VERSION = "1"
"""Bump whenever the world's images change (the miniature weights are trained on them)."""

WORLD_SIZES: tuple[tuple[int, int], ...] = ((256, 144), (320, 180), (384, 216), (224, 224), (288, 216))
"""Image sizes (w, h) of the world: smaller than the benchmark's 512-wide images, similar object scales once
the stand-ins' patch 14 meets the methods' patch 16."""

_WORLD_CONDITIONS = (None, None, None, None, None, None, None, "fog", "rain", "snow")


def world_style(rng: np.random.Generator) -> DomainStyle:
    """One scene's appearance and camera, drawn from ranges wider than every benchmark domain's."""
    def pair(lo: float, hi: float, spread: float) -> tuple[float, float]:
        a = float(rng.uniform(lo, hi))
        return (a, a + spread)

    return DomainStyle(
        sizes=(WORLD_SIZES[int(rng.integers(len(WORLD_SIZES)))],),
        saturation=pair(0.2, 1.9, 0.05), hue_shift=pair(-70.0, 70.0, 1.0), brightness=pair(0.55, 1.3, 0.05),
        contrast=pair(0.65, 1.35, 0.05), tint=tuple(float(v) for v in rng.uniform(0.8, 1.2, 3)),
        palette_jitter=float(rng.uniform(5.0, 45.0)), instance_jitter=float(rng.uniform(4.0, 25.0)),
        texture=float(rng.uniform(0.2, 3.0)), blur=float(rng.choice([0.0, 0.0, 0.5, 1.0])),
        sensor_noise=float(rng.uniform(0.0, 8.0)), focal=pair(0.55, 1.1, 0.05), horizon=pair(0.25, 0.6, 0.02),
        cam_height=pair(1.0, 5.0, 0.2), vp_jitter=0.12, road_width=pair(5.0, 18.0, 1.0),
        sky=("clear", "overcast", "sunset"), hood=("none", "none", "ego", "dashboard")[int(rng.integers(4))],
        night_prob=0.15, cars=(int(rng.integers(0, 4)), int(rng.integers(4, 10))),
        building_prob=float(rng.uniform(0.3, 0.8)), no_terrain_truck_train=bool(rng.random() < 0.1),
    )


def _restyle(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """World-only appearance changes: permuted colour channels, grey, or posterised (else unchanged)."""
    u = rng.random()
    if u < 0.12:
        return np.ascontiguousarray(img[..., rng.permutation(3)])
    if u < 0.2:
        grey = (img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if u < 0.28:
        step = int(rng.choice([32, 48, 64]))
        return ((img // step) * step + step // 2).clip(0, 255).astype(np.uint8)
    return img


@dataclass(frozen=True)
class WorldScene:
    """One scene of the pretraining world and the signals it knows exactly."""

    image: np.ndarray  # uint8 [H, W, 3] RGB
    elements: np.ndarray  # uint8 [H, W] of ``E`` values
    depth: np.ndarray  # float32 [H, W], metres (sky 1000)
    caption: str

    @property
    def classes(self) -> np.ndarray:
        """uint8 [H, W]: the 19 Cityscapes classes (255 for void elements)."""
        return ELEMENT_TRAIN_ID[self.elements]


def caption_for(classes: np.ndarray, *, min_share: float = 0.02, max_names: int = 4) -> str:
    """"a photo of a road, a car and a building.": the classes covering at least ``min_share`` of the image,
    largest first, at most ``max_names``."""
    counts = np.bincount(classes.ravel(), minlength=256)[: len(CITYSCAPES_CLASSES)]
    order = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] >= min_share * classes.size]
    names = [f"a {CITYSCAPES_CLASSES[c]}" for c in order[:max_names]] or ["a street"]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"a photo of {listed}."


def render_world_scene(seed: int, index: int) -> WorldScene:
    """Scene ``index`` of the world with seed ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, 7919, index])
    style = world_style(rng)
    condition = _WORLD_CONDITIONS[int(rng.integers(len(_WORLD_CONDITIONS)))]
    img, elements, depth = render_scene([seed, 7920, index], style, feature=index, condition=condition,
                                        with_depth=True)
    img = _restyle(img, rng)
    return WorldScene(img, elements, depth.astype(np.float32), caption_for(ELEMENT_TRAIN_ID[elements]))
