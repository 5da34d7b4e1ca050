"""SYNTHIA-RAND-CITYSCAPES (Ros et al., CVPR'16): synthetic source (datasets.md §2).

Labels ``GT/LABELS/*.png`` are 16-bit 3-channel PNGs; the class id (0-22) is the R channel, which is
channel index 2 of a cv2 (BGR) read. PIL cannot read them, so cv2 ``IMREAD_UNCHANGED`` is used.
Splits: ``all`` (9,400) or ``train``/``val`` from RobustNet's ``synthia_split_{train,val}.txt``.
Terrain, truck and train never occur: the 16-class (and 13-class) reporting conventions are a protocol
setting (``benchmarks.protocols.SplitSpec.num_classes_reported``), not a loader option.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .base import SamplePair, pair_with_labels, SegmentationDataset, TRAIN_ID_SANITIZE, layout_error, missing_labels_error, read_index_png
from .labels import IGNORE_INDEX, SYNTHIA_TO_TRAIN_ID, apply_lut

SYNTHIA_SPLITS = ("all", "train", "val")
SYNTHIA_LAYOUT = """\
<data_root>/synthia/                 (or RAND_CITYSCAPES/)
  RGB/0000000.png ... 0009399.png
  GT/LABELS/0000000.png ...          16-bit 3-channel PNG, class id in the R channel
  synthia_split_train.txt            RobustNet split lists (only for splits train/val)
  synthia_split_val.txt"""
SYNTHIA_FIX = (
    "extract SYNTHIA_RAND_CITYSCAPES.rar and rename RAND_CITYSCAPES/ to <data_root>/synthia/ "
    "(check for corrupted label files after unrar)"
)


def synthia_pairs(root: Path, split: str) -> list[SamplePair]:
    """Enumerate SYNTHIA (RGB, GT/LABELS) pairs without decoding anything."""
    if split not in SYNTHIA_SPLITS:
        raise ValueError(f"SYNTHIA split must be one of {SYNTHIA_SPLITS}, got {split!r}")
    img_dir, lab_dir = root / "RGB", root / "GT" / "LABELS"
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise layout_error(f"synthia: folder {d} is missing", d, SYNTHIA_LAYOUT, SYNTHIA_FIX)
    images = {Path(e.name).stem: e.name for e in os.scandir(img_dir) if e.name.endswith(".png")}
    if split == "all":
        stems = sorted(images)
    else:
        list_file = root / f"synthia_split_{split}.txt"
        if not list_file.is_file():
            raise layout_error(f"synthia: split list file {list_file} is missing", list_file, SYNTHIA_LAYOUT, SYNTHIA_FIX)
        stems = [Path(s.strip()).stem for s in list_file.read_text().splitlines() if s.strip()]
        absent = [s for s in stems if s not in images]
        if absent:
            raise layout_error(
                f"synthia: {len(absent)} image(s) listed in {list_file} are missing from {img_dir}, e.g. "
                f"{', '.join(absent[:5])}", img_dir / f"{absent[0]}.png", SYNTHIA_LAYOUT, SYNTHIA_FIX,
            )
    labels = {e.name for e in os.scandir(lab_dir)}
    pairs, missing = [], []
    pair_with_labels(((img_dir / images[s], s) for s in stems), lab_dir, labels, (".png", "_labelTrainIds.png"),
                     pairs, missing)
    if missing:
        raise missing_labels_error("synthia", missing, SYNTHIA_LAYOUT, SYNTHIA_FIX, pairs)
    if not pairs:
        raise layout_error(f"synthia: no images in {img_dir}", img_dir / "0000000.png", SYNTHIA_LAYOUT, SYNTHIA_FIX)
    return pairs


class SynthiaDataset(SegmentationDataset):
    """SYNTHIA-RAND-CITYSCAPES; R channel of the 16-bit label -> train ids."""

    label_lut = SYNTHIA_TO_TRAIN_ID

    def decode_label(self, path: Path) -> np.ndarray:
        if path.name.endswith("labelTrainIds.png"):
            return apply_lut(read_index_png(path), TRAIN_ID_SANITIZE)
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise FileNotFoundError(f"cannot read SYNTHIA label {path}")
        if raw.ndim != 3 or raw.shape[2] < 3 or raw.dtype != np.uint16:
            hint = ""
            if raw.dtype == np.uint8 and raw.ndim == 3:
                hint = (" (an 8-bit colour PNG: a GT/COLOR visualisation, or a label re-saved by an 8-bit tool, "
                        "which garbles the ids)")
            raise layout_error(
                f"synthia: label {path} has shape {raw.shape} ({raw.dtype}){hint}; expected the official 16-bit "
                "3-channel GT/LABELS PNG with the class id in the R channel",
                path, SYNTHIA_LAYOUT,
                "use GT/LABELS (not GT/COLOR) from the official archive, read unchanged (cv2.IMREAD_UNCHANGED); "
                "re-extract files that an image tool converted to 8 bits",
            )
        ids = raw[:, :, 2]  # R channel of a BGR read
        ids = np.where(ids > 255, IGNORE_INDEX, ids).astype(np.uint8)
        return apply_lut(ids, SYNTHIA_TO_TRAIN_ID)
