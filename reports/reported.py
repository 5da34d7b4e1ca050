"""Published (paper/README/issue) mIoU numbers and the map from harness names to the papers' names.

Two files ship inside the package (the project never reads ``../shared`` at run time):

- ``reported.csv``: a verbatim copy of ``shared/specs/reported.csv`` (``method, backbone, source_dataset,
  target_dataset, miou, reference, note``); each row is one published cell.
- ``reported_notes.csv``: further published cells that ``reported.csv`` only mentions in its ``note``
  column ("B 44.88 / M 48.80", "avg=64.30", "SETrd: 50.94"), transcribed one per row with the line of
  ``reported.csv`` whose note holds them (``from_line``, 1-based, the header being line 1). Users'
  reproductions and released training logs quoted in notes are *not* transcribed: only published numbers.

mIoU values are kept as the published strings ("66.40" and "66.4" differ in what the source printed);
:attr:`ReportedCell.value` is the float.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = [
    "REFERENCES",
    "METHOD_NAMES",
    "BACKBONE_NAMES",
    "DATASET_NAMES",
    "ReportedCell",
    "load_reported",
    "reference_text",
    "method_display",
    "backbone_display",
    "dataset_display",
    "avg_label",
    "harness_protocol",
    "harness_names",
    "reported_matches",
    "REFERENCE_PREFERENCE",
]

PACKAGE_DIR = Path(__file__).resolve().parent
REPORTED_CSV = PACKAGE_DIR / "reported.csv"
NOTES_CSV = PACKAGE_DIR / "reported_notes.csv"

REFERENCES: dict[str, str] = {
    "tqdmT1": "tqdm (ECCV'24) paper main table (project page main-table.png)",
    "SETrd": "SET README tables (the SET paper's Cityscapes-source tables)",
    "ReinRD": "Rein README",
    "ReinF1": "Rein arXiv v5, Fig. 1(a) table (frozen VFMs and earlier DGSS methods)",
    "FAMixRD": "FAMix README (released checkpoints re-evaluated at scale 1)",
    "VLTabs": "VLTSeg arXiv abstract",
    "VLTreimpl": "unofficial VLTSeg re-implementation README (VLTSeg/VLTSeg)",
    "Rein#": "Rein GitHub issue",
    "tqdm#": "tqdm GitHub issue",
    "FAMix#": "FAMix GitHub issue",
}
"""Abbreviations of the ``reference`` column (methods.md §8)."""

REFERENCE_PREFERENCE: tuple[str, ...] = ("tqdmT1", "ReinF1", "SETrd", "FAMixRD", "ReinRD", "VLTabs", "VLTreimpl")
"""When one cell has several published values, the first reference in this order is the one a reproduced
row is compared with (the others are listed as alternatives)."""

METHOD_NAMES: dict[str, str] = {
    "tqdm": "tqdm",
    "rein": "Rein",
    "set": "SET",
    "famix": "FAMix",
    "vireo": "Vireo",
    "vltseg": "VLTSeg",
    "frozen_m2f": "Frozen backbone+M2F",
}
"""Harness method name -> the name ``reported.csv`` uses."""

BACKBONE_NAMES: dict[str, tuple[str, ...]] = {
    "dinov2_vitl14": ("DINOv2-L",),
    "dinov2_vitl14_p14": ("DINOv2-L",),
    "dinov2_vits14": ("DINOv2 ViT-S",),
    "dinov2_vitb14": ("DINOv2 ViT-B",),
    "eva02_clip_vitl14": ("EVA02-CLIP-L/14", "EVA02-L"),
    "eva02_clip_vitl14_s4b": ("EVA02-CLIP-L/14", "EVA02-L"),
    "clip_vitb16": ("CLIP ViT-B/16",),
    "clip_vitl14": ("CLIP-ViT-L", "CLIP-L"),
    "clip_rn50": ("CLIP RN50",),
    "clip_rn101": ("CLIP RN101",),
}
"""Harness backbone name -> the names ``reported.csv`` uses for it (the first is the display name). The
CSV writes EVA02-CLIP-L as "EVA02-CLIP-L/14" in tqdm/VLTSeg rows and "EVA02-L" in Rein rows."""

DATASET_NAMES: dict[str, str] = {
    "gta5": "GTA5",
    "synthia": "SYNTHIA",
    "cityscapes": "Cityscapes",
    "bdd100k": "BDD100K",
    "mapillary": "Mapillary",
    "acdc": "ACDC",
}
"""Protocol split keys -> the dataset names ``reported.csv`` uses."""

_HARNESS_PROTOCOLS: dict[str, tuple[str, tuple[str, ...]]] = {
    "gta2cbm": ("GTA5", ("Cityscapes", "BDD100K", "Mapillary")),
    "city2bm": ("Cityscapes", ("BDD100K", "Mapillary")),
}


def method_display(name: str) -> str:
    """Display name of a harness method ("rein" -> "Rein"); unknown names are returned unchanged."""
    return METHOD_NAMES.get(name, name)


def backbone_display(name: str, method: str | None = None) -> str:
    """Display name of a harness backbone, as the method's own rows in ``reported.csv`` write it."""
    aliases = BACKBONE_NAMES.get(name)
    if not aliases:
        return name
    if method is not None:
        written = {c.backbone for c in load_reported() if c.method == method_display(method)}
        for alias in aliases:
            if alias in written:
                return alias
    return aliases[0]


def dataset_display(key: str) -> str:
    """"cityscapes" -> "Cityscapes"; unknown keys are returned unchanged."""
    return DATASET_NAMES.get(key, key)


def avg_label(targets: list[str] | tuple[str, ...]) -> str:
    """The papers' average column name for display-named targets: "Avg(C/B/M)" when the initials tell the
    targets apart, else the names after their shared prefix: "Avg(acdc-fog/night/rain/snow)"."""
    initials = [t[0].upper() for t in targets]
    if len(set(initials)) == len(initials):
        return "Avg(" + "/".join(initials) + ")"
    prefix = os.path.commonprefix(list(targets))
    prefix = prefix[:max(prefix.rfind("-"), prefix.rfind(" "), prefix.rfind("_")) + 1]  # whole words only
    return "Avg(" + "/".join([targets[0]] + [t[len(prefix):] for t in targets[1:]]) + ")"


def harness_protocol(source: str, target: str) -> str:
    """The harness protocol a published (source, target) pair belongs to ("" when none does)."""
    for name, (src, targets) in _HARNESS_PROTOCOLS.items():
        if source == src and (target in targets or target == avg_label(targets)):
            return name
    return ""


def harness_names(method: str, backbone: str) -> tuple[str, str] | None:
    """(harness method, harness backbone) for a ``reported.csv`` (method, backbone), or None."""
    m = next((k for k, v in METHOD_NAMES.items() if v == method), None)
    b = next((k for k, v in BACKBONE_NAMES.items() if backbone in v), None)
    return (m, b) if m and b else None


@dataclass(frozen=True)
class ReportedCell:
    """One published number. ``line`` is its line in ``reported.csv`` (for ``origin="note"``: the line
    whose note holds it); ``text`` is the number exactly as published."""

    method: str
    backbone: str
    source: str
    target: str
    text: str
    reference: str
    note: str
    line: int
    origin: str  # "row" (a reported.csv row) or "note" (transcribed from that row's note)

    @property
    def value(self) -> float:
        return float(self.text)

    @property
    def protocol(self) -> str:
        return harness_protocol(self.source, self.target)

    def provenance(self) -> str:
        """Human-readable source of the number, naming the reference and the CSV line."""
        where = (f"reported.csv line {self.line}" if self.origin == "row"
                 else f"note of reported.csv line {self.line}")
        return f"{self.reference} ({reference_text(self.reference)}); {where}" + (f"; {self.note}" if self.note else "")


def reference_text(ref: str) -> str:
    """Long form of a ``reference`` abbreviation ("tqdmT1" -> "tqdm (ECCV'24) paper main table ...")."""
    key = ref.split()[0]
    if key in REFERENCES:
        return REFERENCES[key]
    for prefix in ("Rein#", "tqdm#", "FAMix#"):
        if key.startswith(prefix):
            return f"{REFERENCES[prefix]} {key[len(prefix) - 1:]}"
    return ref


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@lru_cache(maxsize=4)
def _load(reported_path: str, notes_path: str | None) -> tuple[ReportedCell, ...]:
    cells = []
    for i, r in enumerate(_read(Path(reported_path)), start=2):
        float(r["miou"])  # a malformed number fails here, naming nothing else
        cells.append(ReportedCell(r["method"], r["backbone"], r["source_dataset"], r["target_dataset"],
                                  r["miou"].strip(), r["reference"], r["note"], i, "row"))
    if notes_path:
        for r in _read(Path(notes_path)):
            cells.append(ReportedCell(r["method"], r["backbone"], r["source_dataset"], r["target_dataset"],
                                      r["miou"].strip(), r["reference"], r["note"], int(r["from_line"]), "note"))
    return tuple(cells)


def load_reported(path: Path | str | None = None, *, include_notes: bool = True) -> list[ReportedCell]:
    """Every published cell: the rows of ``reported.csv`` then (optionally) the note transcriptions."""
    reported = Path(path) if path else REPORTED_CSV
    if not reported.is_file():
        raise FileNotFoundError(f"published numbers not found at {reported}; the package ships reports/reported.csv "
                                "(a copy of shared/specs/reported.csv)")
    return list(_load(str(reported), str(NOTES_CSV) if include_notes and path is None else None))


def reported_matches(method: str, backbone: str, source: str, target: str,
                     cells: list[ReportedCell] | None = None) -> list[ReportedCell]:
    """Published cells for a harness (method, backbone) on display-named (source, target), best first
    (:data:`REFERENCE_PREFERENCE`, then rows before note transcriptions)."""
    cells = load_reported() if cells is None else cells
    m = method_display(method)
    aliases = BACKBONE_NAMES.get(backbone, (backbone,))
    hits = [c for c in cells if c.method == m and c.backbone in aliases and c.source == source and c.target == target]

    def rank(c: ReportedCell) -> tuple:
        ref = c.reference.split()[0]
        return (REFERENCE_PREFERENCE.index(ref) if ref in REFERENCE_PREFERENCE else len(REFERENCE_PREFERENCE),
                c.origin != "row", c.line)

    return sorted(hits, key=rank)
