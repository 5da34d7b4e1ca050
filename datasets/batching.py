"""Batches between the loader workers and the device: uint8 across processes, float and padding on the device.

Samples leave the workers as ``image uint8[3,H,W]`` and ``label uint8[H,W]`` (a quarter of float32's bytes for
the image, an eighth of int64's for the label) with ``valid_size`` = (h, w), the part of the crop that holds
pixels; the rest (bottom and right) is padding. :func:`collate` stacks them (into pinned memory when the
DataLoader pins), :func:`batch_to_device` copies without blocking and converts on the device.

Padding follows mmseg: a crop smaller than the crop size is normalised first and then padded with 0, labels
with 255. Since the methods normalise on the device (``Method.normalize``), :func:`fill_padding` writes the
normalisation mean there (``Method.pad_color``), which ``normalize`` maps to exactly 0.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["collate", "fill_padding", "batch_to_device"]


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``image`` / ``label`` (any dtype, kept), ``name`` as a list and ``valid_size`` as int64 [B, 2]
    when the samples carry one."""
    batch: dict[str, Any] = {
        "image": torch.stack([torch.as_tensor(s["image"]) for s in samples]),
        "label": torch.stack([torch.as_tensor(s["label"]) for s in samples]),
        "name": [s["name"] for s in samples],
    }
    if all("valid_size" in s for s in samples):
        batch["valid_size"] = torch.tensor([tuple(s["valid_size"]) for s in samples], dtype=torch.int64)
    return batch


def fill_padding(images: Tensor, valid_size: Tensor | Sequence[Sequence[int]], value: Tensor) -> Tensor:
    """Write ``value`` (C channel values) into every pixel of ``images`` [B,C,H,W] outside its valid top-left
    ``valid_size[b]`` = (h, w) region, in place; returns ``images``."""
    value = value.reshape(-1).to(device=images.device, dtype=images.dtype)[:, None, None]
    height, width = images.shape[-2:]
    for b, (h, w) in enumerate(torch.as_tensor(valid_size).tolist()):
        if h < height:
            images[b, :, h:, :] = value
        if w < width:
            images[b, :, :h, w:] = value
    return images


def batch_to_device(batch: dict[str, Any], device: torch.device, *, pad_color: Tensor | None = None
                    ) -> tuple[Tensor, Tensor]:
    """(images float32 [B,3,H,W] in 0..255, labels int64 [B,H,W]) on ``device`` from a :func:`collate` batch:
    non-blocking copies of the compact tensors, conversion on the device, padding filled with ``pad_color``
    (see the module docstring) when the batch has ``valid_size``."""
    images = batch["image"].to(device, non_blocking=True).float()
    labels = batch["label"].to(device, non_blocking=True).long()
    if pad_color is not None and "valid_size" in batch:
        fill_padding(images, batch["valid_size"], pad_color)
    return images, labels
