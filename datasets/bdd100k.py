"""BDD100K 10k semantic segmentation subset (Yu et al., CVPR'20): a DGSS target (datasets.md §6).

The ``labels/sem_seg/masks`` PNGs already hold train ids 0-18 (255 ignore). ``colormaps/`` is never
used: its palette differs from Cityscapes (wall/fence swapped) and its file set need not match.
Pairing goes image -> mask by name.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import SamplePair, pair_with_labels, SegmentationDataset, layout_error, missing_labels_error

BDD100K_SPLITS = ("train", "val", "test")
BDD100K_LAYOUT = """\
<data_root>/bdd100k/
  images/10k/{train,val,test}/<name>.jpg
  labels/sem_seg/masks/{train,val}/<name>.png      uint8 train ids 0-18, 255 ignore
      (labels/sem_seg/colormaps/ is not used)"""
BDD100K_FIX = (
    "download 10k_images_{train,val,test}.zip (or bdd100k_images_10k.zip) and "
    "bdd100k_sem_seg_labels_trainval.zip from the BDD100K site and unzip both into <data_root>/ so that "
    "<data_root>/bdd100k/images/10k and <data_root>/bdd100k/labels/sem_seg/masks exist"
)


def bdd100k_pairs(root: Path, split: str) -> list[SamplePair]:
    """Enumerate BDD100K-10k (image, mask) pairs; ``test`` has no masks (label None)."""
    if split not in BDD100K_SPLITS:
        raise ValueError(f"BDD100K split must be one of {BDD100K_SPLITS}, got {split!r}")
    img_dir = root / "images" / "10k" / split
    mask_dir = root / "labels" / "sem_seg" / "masks" / split
    if not img_dir.is_dir():
        raise layout_error(f"bdd100k: folder {img_dir} is missing", img_dir, BDD100K_LAYOUT, BDD100K_FIX)
    names = sorted(e.name for e in os.scandir(img_dir) if e.name.lower().endswith(".jpg"))
    if not names:
        raise layout_error(f"bdd100k: no .jpg images in {img_dir}", img_dir / "<name>.jpg", BDD100K_LAYOUT, BDD100K_FIX)
    if split == "test" and not mask_dir.is_dir():
        return [SamplePair(img_dir / n, None, Path(n).stem) for n in names]
    if not mask_dir.is_dir():
        raise layout_error(f"bdd100k: folder {mask_dir} is missing", mask_dir, BDD100K_LAYOUT, BDD100K_FIX)
    masks = {e.name for e in os.scandir(mask_dir)}
    pairs, missing = [], []
    pair_with_labels(((img_dir / n, Path(n).stem) for n in names), mask_dir, masks, (".png",), pairs, missing)
    if missing:
        raise missing_labels_error("bdd100k", missing, BDD100K_LAYOUT, BDD100K_FIX, pairs)
    return pairs


class BDD100KDataset(SegmentationDataset):
    """BDD100K-10k; the masks are train ids already (stray values 19-254 become 255)."""

    label_lut = None
