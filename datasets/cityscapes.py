"""Cityscapes (Cordts et al., CVPR'16): source (train) or target (val) (datasets.md §3).

Labels: the official ``*_gtFine_labelIds.png`` (mapped with ``LABEL_ID_TO_TRAIN_ID``) are
preferred; a frame that only has a generated ``*_gtFine_labelTrainIds.png`` uses it directly.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import SamplePair, pair_with_labels, SegmentationDataset, layout_error, missing_labels_error
from .labels import LABEL_ID_TO_TRAIN_ID

CITYSCAPES_SPLITS = ("train", "val", "test")
CITYSCAPES_LAYOUT = """\
<data_root>/cityscapes/
  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
      (or the generated ..._gtFine_labelTrainIds.png)"""
CITYSCAPES_FIX = (
    "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from cityscapes-dataset.com and "
    "unzip both into <data_root>/cityscapes/"
)
_IMG_SUFFIX = "_leftImg8bit.png"


def cityscapes_pairs(root: Path, split: str) -> list[SamplePair]:
    """Enumerate Cityscapes (image, label) pairs of ``split`` without decoding anything."""
    if split not in CITYSCAPES_SPLITS:
        raise ValueError(f"Cityscapes split must be one of {CITYSCAPES_SPLITS}, got {split!r}")
    img_root, gt_root = root / "leftImg8bit" / split, root / "gtFine" / split
    for d in (img_root, gt_root):
        if not d.is_dir():
            raise layout_error(f"cityscapes: folder {d} is missing", d, CITYSCAPES_LAYOUT, CITYSCAPES_FIX)
    pairs: list[SamplePair] = []
    missing: list[tuple[Path, Path]] = []
    for city in sorted(e.name for e in os.scandir(img_root) if e.is_dir()):
        gt_city = gt_root / city
        gt_files = {e.name for e in os.scandir(gt_city)} if gt_city.is_dir() else set()
        images = sorted(e.name for e in os.scandir(img_root / city) if e.name.endswith(_IMG_SUFFIX))
        pair_with_labels(((img_root / city / f, f[: -len(_IMG_SUFFIX)]) for f in images), gt_city, gt_files,
                         ("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"), pairs, missing)
    if missing:
        raise missing_labels_error("cityscapes", missing, CITYSCAPES_LAYOUT, CITYSCAPES_FIX, pairs)
    if not pairs:
        raise layout_error(
            f"cityscapes: no *{_IMG_SUFFIX} images under {img_root}",
            img_root / "<city>" / f"<city>_<seq>_<frame>{_IMG_SUFFIX}", CITYSCAPES_LAYOUT, CITYSCAPES_FIX,
        )
    return pairs


class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine annotations; labelIds -> train ids (labelTrainIds files read directly)."""

    label_lut = LABEL_ID_TO_TRAIN_ID
