"""GTA5 / "Playing for Data" (Richter et al., ECCV'16): the synthetic DGSS source (datasets.md §1).

Labels are 8-bit *palette* PNGs whose pixel index is the Cityscapes labelId (the palette is only
the Cityscapes colour map). They are read as index arrays and mapped with ``LABEL_ID_TO_TRAIN_ID``;
they are never converted to RGB. Converted ``NNNNN_labelTrainIds.png`` files (DAFormer/Rein
converters) are accepted as a fallback and read as train ids.

Splits: ``all`` (every image; the Rein/VLTSeg/DAFormer default) and ``train``/``val``/``test``
from RobustNet-style split lists ``gtav_split_{split}.txt`` next to ``images/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import (
    SamplePair,
    SegmentationDataset,
    TRAIN_ID_SANITIZE,
    layout_error,
    missing_labels_error,
    read_index_png,
)
from .labels import LABEL_ID_TO_TRAIN_ID

GTA5_SPLITS = ("all", "train", "val", "test")
GTA5_LAYOUT = """\
<data_root>/gta/                     (or <data_root>/gta5/)
  images/00001.png ... 24966.png
  labels/00001.png ... 24966.png     8-bit palette PNG, index = Cityscapes labelId
  gtav_split_train.txt               RobustNet split lists (only for splits train/val/test),
  gtav_split_val.txt                 one file name per line, e.g. 00001.png
  gtav_split_test.txt"""
GTA5_FIX = (
    "download the 10 image and 10 label zips from download.visinf.tu-darmstadt.de/data/from_games/ and "
    "unzip all of them into <data_root>/gta/ (images/ and labels/); for train/val/test copy RobustNet's "
    "split_data/gtav_split_*.txt next to them (or use split 'all')"
)
_IMAGE_SUFFIXES = (".png", ".jpg")


def gta5_pairs(root: Path, split: str) -> list[SamplePair]:
    """Enumerate (image, label) pairs of a GTA5 split without decoding anything."""
    if split not in GTA5_SPLITS:
        raise ValueError(f"GTA5 split must be one of {GTA5_SPLITS}, got {split!r}")
    img_dir, lab_dir = root / "images", root / "labels"
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise layout_error(f"gta5: folder {d} is missing", d, GTA5_LAYOUT, GTA5_FIX)
    images = {Path(f.name).stem: f.name for f in os.scandir(img_dir) if f.name.lower().endswith(_IMAGE_SUFFIXES)}
    if split == "all":
        stems = sorted(images)
        if not stems:
            raise layout_error(f"gta5: no images in {img_dir}", img_dir / "00001.png", GTA5_LAYOUT, GTA5_FIX)
    else:
        list_file = root / f"gtav_split_{split}.txt"
        if not list_file.is_file():
            raise layout_error(
                f"gta5: split list file {list_file} is missing (needed for split {split!r})",
                list_file, GTA5_LAYOUT, GTA5_FIX,
            )
        stems = [Path(line.strip()).stem for line in list_file.read_text().splitlines() if line.strip()]
        absent = [s for s in stems if s not in images]
        if absent:
            raise layout_error(
                f"gta5: {len(absent)} image(s) listed in {list_file} are missing from {img_dir}, "
                f"e.g. {', '.join(absent[:5])}",
                img_dir / f"{absent[0]}.png", GTA5_LAYOUT, GTA5_FIX,
            )
    labels = {f.name for f in os.scandir(lab_dir)}
    pairs: list[SamplePair] = []
    missing: list[tuple[Path, Path]] = []
    for stem in stems:
        if f"{stem}.png" in labels:
            lab = lab_dir / f"{stem}.png"
        elif f"{stem}_labelTrainIds.png" in labels:
            lab = lab_dir / f"{stem}_labelTrainIds.png"
        else:
            missing.append((img_dir / images[stem], lab_dir / f"{stem}.png"))
            continue
        pairs.append(SamplePair(img_dir / images[stem], lab, stem))
    if missing:
        raise missing_labels_error("gta5", missing, GTA5_LAYOUT, GTA5_FIX)
    return pairs


class GTA5Dataset(SegmentationDataset):
    """GTA5 in its official layout; palette-index labels (= Cityscapes labelIds) -> train ids."""

    label_lut = LABEL_ID_TO_TRAIN_ID

    def decode_label(self, path: Path) -> np.ndarray:
        raw = read_index_png(
            path,
            what="GTA5 label",
            hint="GTA5 labels must be the official 8-bit palette PNGs (index = Cityscapes labelId); "
            "do not convert them to RGB.",
        )
        if path.name.endswith("labelTrainIds.png"):
            return TRAIN_ID_SANITIZE[raw]
        return LABEL_ID_TO_TRAIN_ID[raw]
