"""Mapillary Vistas v1.2 (Neuhold et al., ICCV'17): a DGSS target, split ``validation`` (datasets.md §5).

Labels are palette PNGs of the 66 v1.2 ids (0-65), mapped to the 19 train ids at load time with a
named mapping: ``"robustnet"`` (explicit id list of RobustNet/HRDA/VLTSeg-reimpl, the default) or
``"rein"`` (the name-matched list of Rein/DDB/openseg). Both package layouts are accepted:
v1.2 package ``{split}/labels/<key>.png`` and v2.0 package ``{split}/v1.2/labels/<key>.png``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import SamplePair, pair_with_labels, SegmentationDataset, layout_error, missing_labels_error
from .labels import DEFAULT_MAPILLARY_MAPPING, mapillary_lut

MAPILLARY_SPLITS = ("training", "validation")
MAPILLARY_SPLIT_ALIASES = {"train": "training", "val": "validation"}
MAPILLARY_LAYOUT = """\
<data_root>/mapillary/
  {training,validation}/images/<key>.jpg
  {training,validation}/labels/<key>.png         v1.2 package (palette PNG, ids 0-65)
  or {training,validation}/v1.2/labels/<key>.png  v2.0 package (its v1.2 labels; never v2.0/labels)"""
MAPILLARY_FIX = (
    "download the Mapillary Vistas v1.2 (or v2.0) research package and unzip it into <data_root>/mapillary/ "
    "so that <data_root>/mapillary/validation/images exists; keep the raw v1.2 label PNGs (the 66->19 "
    "mapping is applied at load time)"
)


def canonical_mapillary_split(split: str) -> str:
    """Accept ``train``/``val`` as aliases of ``training``/``validation``."""
    split = MAPILLARY_SPLIT_ALIASES.get(split, split)
    if split not in MAPILLARY_SPLITS:
        raise ValueError(f"Mapillary split must be one of {MAPILLARY_SPLITS} (or train/val), got {split!r}")
    return split


def mapillary_label_dir(root: Path, split: str) -> Path:
    """The v1.2 label folder of ``split``: v1.2-package layout first, then v2.0-package layout."""
    for cand in (root / split / "labels", root / split / "v1.2" / "labels"):
        if cand.is_dir():
            return cand
    raise layout_error(
        f"mapillary: no v1.2 label folder for split {split!r} (looked for {root / split / 'labels'} "
        f"and {root / split / 'v1.2' / 'labels'})",
        root / split / "labels", MAPILLARY_LAYOUT, MAPILLARY_FIX,
    )


def mapillary_pairs(root: Path, split: str) -> list[SamplePair]:
    """Enumerate Mapillary v1.2 (image, label) pairs of ``split`` without decoding anything."""
    split = canonical_mapillary_split(split)
    img_dir = root / split / "images"
    if not img_dir.is_dir():
        raise layout_error(f"mapillary: folder {img_dir} is missing", img_dir, MAPILLARY_LAYOUT, MAPILLARY_FIX)
    lab_dir = mapillary_label_dir(root, split)
    names = sorted(e.name for e in os.scandir(img_dir) if e.name.lower().endswith(".jpg"))
    if not names:
        raise layout_error(f"mapillary: no .jpg images in {img_dir}", img_dir / "<key>.jpg", MAPILLARY_LAYOUT, MAPILLARY_FIX)
    labels = {e.name for e in os.scandir(lab_dir)}
    pairs, missing = [], []
    pair_with_labels(((img_dir / n, Path(n).stem) for n in names), lab_dir, labels, (".png",), pairs, missing)
    if missing:
        err = missing_labels_error("mapillary", missing, MAPILLARY_LAYOUT, MAPILLARY_FIX, pairs)
        if any(lab.endswith("_labelTrainIds.png") for lab in labels):
            err = type(err)(
                f"{err}\n  note: {lab_dir} holds converted *_labelTrainIds.png files; this loader needs the raw "
                "v1.2 label PNGs (ids 0-65) so that the 66->19 mapping is a load-time option",
                err.missing, err.pairs,
            )
        raise err
    return pairs


class MapillaryDataset(SegmentationDataset):
    """Mapillary Vistas v1.2 with a named 66->19 mapping (``mapping`` attribute)."""

    def __init__(self, *args, mapping: str = DEFAULT_MAPILLARY_MAPPING, **kwargs) -> None:
        self.label_lut = mapillary_lut(mapping)  # validates the name
        self.mapping = mapping
        super().__init__(*args, **kwargs)
