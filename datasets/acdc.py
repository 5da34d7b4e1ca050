"""ACDC (Sakaridis et al., ICCV'21): adverse-condition target (fog, night, rain, snow) (datasets.md §7).

Split names: ``"val"`` / ``"train"`` / ``"test"`` take all four conditions; ``"<cond>/<split>"`` (e.g.
``"fog/val"``) one condition, as in Rein's per-condition evaluation. Labels: the official
``*_gt_labelTrainIds.png`` (read directly), falling back to ``*_gt_labelIds.png`` (mapped with the
Cityscapes LUT). ``test`` has no public ground truth (label None). ``*_ref`` folders are not used.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import SamplePair, pair_with_labels, SegmentationDataset, layout_error, missing_labels_error
from .labels import LABEL_ID_TO_TRAIN_ID

ACDC_CONDITIONS = ("fog", "night", "rain", "snow")
ACDC_BASE_SPLITS = ("train", "val", "test")
ACDC_LAYOUT = """\
<data_root>/acdc/
  rgb_anon/{fog,night,rain,snow}/{train,val,test}/<seq>/<seq>_frame_<NNNNNN>_rgb_anon.png
  gt/{fog,night,rain,snow}/{train,val}/<seq>/<seq>_frame_<NNNNNN>_gt_labelTrainIds.png
      (or ..._gt_labelIds.png)"""
ACDC_FIX = "download rgb_anon_trainvaltest.zip and gt_trainval.zip from acdc.vision.ee.ethz.ch and unzip both into <data_root>/acdc/"
_IMG_SUFFIX = "_rgb_anon.png"


def parse_acdc_split(split: str) -> tuple[tuple[str, ...], str]:
    """``"val"`` -> (all conditions, "val"); ``"fog/val"`` -> (("fog",), "val")."""
    if "/" in split:
        cond, base = split.split("/", 1)
        conds: tuple[str, ...] = (cond,)
    else:
        conds, base = ACDC_CONDITIONS, split
    if base not in ACDC_BASE_SPLITS or any(c not in ACDC_CONDITIONS for c in conds):
        raise ValueError(
            f"ACDC split must be one of {ACDC_BASE_SPLITS} or '<condition>/<split>' with condition in "
            f"{ACDC_CONDITIONS}, got {split!r}"
        )
    return conds, base


def acdc_pairs(root: Path, split: str) -> list[SamplePair]:
    """Enumerate ACDC (image, label) pairs without decoding anything."""
    conds, base = parse_acdc_split(split)
    pairs: list[SamplePair] = []
    missing: list[tuple[Path, Path]] = []
    for cond in conds:
        img_root, gt_root = root / "rgb_anon" / cond / base, root / "gt" / cond / base
        if not img_root.is_dir():
            raise layout_error(f"acdc: folder {img_root} is missing", img_root, ACDC_LAYOUT, ACDC_FIX)
        has_gt = gt_root.is_dir()
        if not has_gt and base != "test":
            raise layout_error(f"acdc: folder {gt_root} is missing", gt_root, ACDC_LAYOUT, ACDC_FIX)
        for seq in sorted(e.name for e in os.scandir(img_root) if e.is_dir()):
            gt_files = {e.name for e in os.scandir(gt_root / seq)} if has_gt and (gt_root / seq).is_dir() else set()
            images = [(img_root / seq / f, f[: -len(_IMG_SUFFIX)])
                      for f in sorted(e.name for e in os.scandir(img_root / seq) if e.name.endswith(_IMG_SUFFIX))]
            if not has_gt:
                pairs.extend(SamplePair(img, None, stem) for img, stem in images)
                continue
            pair_with_labels(images, gt_root / seq, gt_files, ("_gt_labelTrainIds.png", "_gt_labelIds.png"),
                             pairs, missing)
    if missing:
        raise missing_labels_error("acdc", missing, ACDC_LAYOUT, ACDC_FIX, pairs)
    if not pairs:
        raise layout_error(f"acdc: no *{_IMG_SUFFIX} images for split {split!r}", root / "rgb_anon", ACDC_LAYOUT, ACDC_FIX)
    return pairs


class ACDCDataset(SegmentationDataset):
    """ACDC; labelTrainIds read directly, labelIds mapped with the Cityscapes LUT."""

    label_lut = LABEL_ID_TO_TRAIN_ID
