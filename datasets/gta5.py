"""GTA5 / "Playing for Data" (Richter et al., ECCV'16): the synthetic DGSS source (datasets.md §1).

Labels are 8-bit *palette* PNGs whose pixel index is the Cityscapes labelId (the palette is only
the Cityscapes colour map). They are read as index arrays and mapped with ``LABEL_ID_TO_TRAIN_ID``;
they are never converted to RGB. Converted ``NNNNN_labelTrainIds.png`` files (DAFormer/Rein
converters) are accepted as a fallback and read as train ids.

Splits (decisions.md §5: "all" is the default, the split lists are variants):

- ``all``: every image (the Rein/VLTSeg/DAFormer default, 24,966);
- ``train``/``val``/``test``: RobustNet's lists ``gtav_split_{split}.txt`` next to ``images/``
  (12,388 / 6,382 / 6,181 names; used by RobustNet, TLDR, tqdm, FAMix);
- ``official_train``/``official_val``/``official_test``: the dataset's own ``split.mat`` (from
  ``read_mapping.zip``; arrays ``trainIds``/``valIds``/``testIds`` of 1-based frame numbers, 12,403 /
  6,382 / 6,181), placed next to ``images/``.
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
from .labels import LABEL_ID_TO_TRAIN_ID, apply_lut

GTA5_SPLITS = ("all", "train", "val", "test", "official_train", "official_val", "official_test")
GTA5_LIST_SPLITS = ("train", "val", "test")
GTA5_OFFICIAL_SPLITS = {"official_train": "trainIds", "official_val": "valIds", "official_test": "testIds"}
GTA5_LAYOUT = """\
<data_root>/gta/                     (or <data_root>/gta5/)
  images/00001.png ... 24966.png
  labels/00001.png ... 24966.png     8-bit palette PNG, index = Cityscapes labelId
  gtav_split_train.txt               RobustNet split lists (only for splits train/val/test),
  gtav_split_val.txt                 one file name per line, e.g. 00001.png
  gtav_split_test.txt
  split.mat                          official split (read_mapping.zip; only for official_* splits)"""
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
    elif split in GTA5_OFFICIAL_SPLITS:
        stems = _official_split_stems(root, split)
        absent = [s for s in stems if s not in images]
        if absent:
            raise layout_error(
                f"gta5: {len(absent)} image(s) of {split!r} in {root / 'split.mat'} are missing from {img_dir}, "
                f"e.g. {', '.join(absent[:5])}",
                img_dir / f"{absent[0]}.png", GTA5_LAYOUT, GTA5_FIX,
            )
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
        raise missing_labels_error("gta5", missing, GTA5_LAYOUT, GTA5_FIX, pairs)
    return pairs


def _official_split_stems(root: Path, split: str) -> list[str]:
    """Frame names of an official split from ``split.mat`` (1-based frame numbers -> "00001")."""
    mat = root / "split.mat"
    if not mat.is_file():
        raise layout_error(
            f"gta5: official split file {mat} is missing (needed for split {split!r})", mat, GTA5_LAYOUT,
            "take split.mat from read_mapping.zip on the GTA5 download page and put it next to images/",
        )
    from scipy.io import loadmat  # only needed for this variant

    try:
        data = loadmat(str(mat))
    except Exception as exc:  # noqa: BLE001 - scipy raises several kinds
        raise layout_error(f"gta5: cannot read {mat}: {exc}", mat, GTA5_LAYOUT,
                           "re-extract split.mat from read_mapping.zip") from exc
    key = GTA5_OFFICIAL_SPLITS[split]
    if key not in data:
        raise layout_error(f"gta5: {mat} has no array {key!r} (has {sorted(k for k in data if not k.startswith('__'))})",
                           mat, GTA5_LAYOUT, "use the official split.mat from read_mapping.zip")
    return [f"{int(i):05d}" for i in np.asarray(data[key]).ravel()]


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
            return apply_lut(raw, TRAIN_ID_SANITIZE)
        return apply_lut(raw, LABEL_ID_TO_TRAIN_ID)
