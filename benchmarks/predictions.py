"""Colourised predictions of a protocol's gallery images (:class:`benchmarks.protocols.GallerySpec`).

For each gallery image of a target split, a run keeps three files in ``<run>/predictions/<key>/``:

- ``<name>.pred.png``: the prediction as a palette PNG (pixel = Cityscapes train id, palette = the Cityscapes
  colours, 255 = black), at the label's size;
- ``<name>.gt.png``: the ground truth, same encoding (ignored pixels black);
- ``<name>.jpg``: the test image, resized to the label's size (what the prediction is scored against).

Sizes are capped at :data:`MAX_SIDE` on the long side (nearest for labels), enough for a figure; ``name``
is the dataset's image name with path separators replaced. :func:`reports.gallery` composes them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from datasets.labels import TRAIN_ID_PALETTE

__all__ = ["MAX_SIDE", "PREDICTIONS_DIR", "prediction_files", "save_gallery_item", "selected_present",
           "split_image_names", "safe_name", "palette_png", "read_palette_png"]

MAX_SIDE = 1024
PREDICTIONS_DIR = "predictions"
_PALETTE = TRAIN_ID_PALETTE.reshape(-1).tolist()


def safe_name(name: str) -> str:
    """A file-name-safe form of an image name ("berlin/a_1" -> "berlin__a_1")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "__", str(name)).strip(".") or "image"


def prediction_files(folder: Path | str, name: str) -> dict[str, Path]:
    """``{"image", "gt", "pred"}`` paths of one gallery image in ``folder`` (``<run>/predictions/<key>``)."""
    stem = Path(folder) / safe_name(name)
    return {"image": stem.with_name(stem.name + ".jpg"), "gt": stem.with_name(stem.name + ".gt.png"),
            "pred": stem.with_name(stem.name + ".pred.png")}


def split_image_names(dataset: Any) -> list[str] | None:
    """Image names of a split in dataset order (``dataset.names`` or the loader's pairs), or None."""
    names = getattr(dataset, "names", None)
    if names is not None and not callable(names):
        return [str(n) for n in names]
    pairs = getattr(dataset, "pairs", None)
    if pairs is not None:
        return [str(p.name) for p in pairs]
    return None


def palette_png(train_ids: np.ndarray, path: Path | str) -> Path:
    """Write a [H, W] train-id map (0..18, 255 ignored) as a palette PNG with the Cityscapes colours."""
    arr = np.asarray(train_ids)
    if arr.ndim != 2:
        raise ValueError(f"palette_png: expected a [H, W] map, got shape {arr.shape}")
    img = Image.fromarray(arr.astype(np.uint8), mode="P")
    img.putpalette(_PALETTE)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)
    return path


def read_palette_png(path: Path | str) -> np.ndarray:
    """The train-id map [H, W] uint8 of a file written by :func:`palette_png`."""
    with Image.open(path) as img:
        if img.mode != "P":
            raise ValueError(f"{path}: expected a palette PNG, got mode {img.mode}")
        return np.asarray(img)


def _capped(h: int, w: int) -> tuple[int, int]:
    factor = min(1.0, MAX_SIDE / max(h, w))
    return max(1, round(h * factor)), max(1, round(w * factor))


def save_gallery_item(folder: Path | str, name: str, image: torch.Tensor, label: torch.Tensor,
                      pred: torch.Tensor) -> dict[str, Path]:
    """Write the image, ground truth and prediction of one gallery image; returns their paths.

    ``image`` float [3, h, w] 0..255 (test-resized), ``label`` and ``pred`` int [H, W] (label size).
    """
    files = prediction_files(folder, name)
    h, w = label.shape[-2:]
    size = _capped(h, w)
    maps = torch.stack([label.reshape(h, w).long(), pred.reshape(h, w).long()])[:, None].float()
    if size != (h, w):
        maps = F.interpolate(maps, size=size, mode="nearest")
    gt, pr = maps[:, 0].to(torch.uint8).cpu().numpy()  # 255 stays 255; train ids < 19
    rgb = F.interpolate(image.float().reshape(1, 3, *image.shape[-2:]), size=size, mode="bilinear",
                        align_corners=False, antialias=True)[0]
    rgb = rgb.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    files["image"].parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(files["image"], quality=90)
    palette_png(gt, files["gt"])
    palette_png(pr, files["pred"])
    return files


def selected_present(folder: Path | str, names: Sequence[str]) -> list[str]:
    """The names among ``names`` whose three files exist in ``folder``."""
    return [n for n in names if all(p.is_file() for p in prediction_files(folder, n).values())]
