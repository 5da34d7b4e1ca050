"""Dataset registry: ``build_dataset(name, split, data_root)`` and pair enumeration by name.

A data root holds one folder per dataset (``DATASET_DIRS`` lists the accepted folder names), each in
its official layout. The built-in miniature benchmark (``datasets.miniature``) writes a root of the
same shape, so the same loaders read real and miniature data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from .acdc import ACDC_FIX, ACDC_LAYOUT, ACDCDataset, acdc_pairs
from .base import SamplePair, SegmentationDataset, find_dataset_dir
from .bdd100k import BDD100K_FIX, BDD100K_LAYOUT, BDD100KDataset, bdd100k_pairs
from .cityscapes import CITYSCAPES_FIX, CITYSCAPES_LAYOUT, CityscapesDataset, cityscapes_pairs
from .gta5 import GTA5_FIX, GTA5_LAYOUT, GTA5Dataset, gta5_pairs
from .labels import DEFAULT_MAPILLARY_MAPPING
from .mapillary import MAPILLARY_FIX, MAPILLARY_LAYOUT, MapillaryDataset, canonical_mapillary_split, mapillary_pairs
from .synthia import SYNTHIA_FIX, SYNTHIA_LAYOUT, SynthiaDataset, synthia_pairs

DATASET_DIRS: dict[str, tuple[str, ...]] = {
    "gta5": ("gta", "gta5"),
    "cityscapes": ("cityscapes",),
    "bdd100k": ("bdd100k",),
    "mapillary": ("mapillary",),
    "acdc": ("acdc",),
    "synthia": ("synthia", "RAND_CITYSCAPES"),
}
"""Folder names accepted under the data root, per dataset (first existing one wins)."""


@dataclass(frozen=True)
class _Spec:
    pairs: Callable[[Path, str], list[SamplePair]]
    cls: type[SegmentationDataset]
    layout: str
    fix: str


_SPECS: dict[str, _Spec] = {
    "gta5": _Spec(gta5_pairs, GTA5Dataset, GTA5_LAYOUT, GTA5_FIX),
    "cityscapes": _Spec(cityscapes_pairs, CityscapesDataset, CITYSCAPES_LAYOUT, CITYSCAPES_FIX),
    "bdd100k": _Spec(bdd100k_pairs, BDD100KDataset, BDD100K_LAYOUT, BDD100K_FIX),
    "mapillary": _Spec(mapillary_pairs, MapillaryDataset, MAPILLARY_LAYOUT, MAPILLARY_FIX),
    "acdc": _Spec(acdc_pairs, ACDCDataset, ACDC_LAYOUT, ACDC_FIX),
    "synthia": _Spec(synthia_pairs, SynthiaDataset, SYNTHIA_LAYOUT, SYNTHIA_FIX),
}
DATASET_NAMES: tuple[str, ...] = tuple(_SPECS)


def _spec(name: str) -> _Spec:
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASET_NAMES}") from None


def dataset_dir(name: str, data_root: str | Path) -> Path:
    """The folder of dataset ``name`` under ``data_root`` (raises ``DatasetLayoutError`` if absent)."""
    spec = _spec(name)
    return find_dataset_dir(Path(data_root).expanduser(), DATASET_DIRS[name], name, spec.layout, spec.fix)


def list_pairs(name: str, split: str, data_root: str | Path) -> list[SamplePair]:
    """Enumerate the (image, label) pairs of a split without decoding any file (for fingerprints)."""
    return _spec(name).pairs(dataset_dir(name, data_root), split)


def build_dataset(
    name: str,
    split: str,
    data_root: str | Path,
    *,
    mapillary_mapping: str = DEFAULT_MAPILLARY_MAPPING,
    transform=None,
    size_mismatch: Literal["error", "resize_image"] = "error",
) -> SegmentationDataset:
    """Build the dataset ``name`` (one of ``DATASET_NAMES``) for ``split`` from ``data_root``.

    Splits: gta5 all/train/val/test (RobustNet lists)/official_{train,val,test} (split.mat); cityscapes train/val/test; bdd100k train/val/test; mapillary
    validation/training (aliases val/train); acdc train/val/test or "<cond>/<split>"; synthia
    all/train/val. ``mapillary_mapping`` ("robustnet" or "rein") only affects Mapillary.
    """
    spec = _spec(name)
    root = dataset_dir(name, data_root)
    if name == "mapillary":
        split = canonical_mapillary_split(split)
    pairs = spec.pairs(root, split)
    kwargs = {"transform": transform, "size_mismatch": size_mismatch}
    if name == "mapillary":
        return MapillaryDataset(name, split, root, pairs, mapping=mapillary_mapping, **kwargs)
    return spec.cls(name, split, root, pairs, **kwargs)
