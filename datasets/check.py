"""Check dataset folders before spending GPU hours: ``python -m datasets.check --data-root DIR``.

For every dataset found under the data root (``datasets.loaders.DATASET_DIRS``), each split whose folder
exists is enumerated with the real loaders and checked for:

- layout problems (missing folders / split lists) and **missing pairs** (images without a label file);
- **image/label size mismatches** (file headers only, fast on 25k files);
- **wrong label encodings** from the PNG header of every label: GTA5 / Mapillary palettes saved as RGB,
  Cityscapes colour PNGs instead of labelIds, 8-bit SYNTHIA labels (the class id needs the 16-bit R
  channel), ...;
- **unknown label ids** (values outside the dataset's id table), decoding only ``--sample N`` labels per
  split (evenly spread; ``--sample -1`` decodes all).

Each problem is reported with a count, examples and the fix. Exit status 1 when problems were found.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import Image

from .acdc import ACDC_CONDITIONS
from .base import DatasetLayoutError, MissingLabelsError, SamplePair, png_header
from .loaders import DATASET_DIRS, DATASET_NAMES, list_pairs

__all__ = ["Problem", "SplitReport", "DatasetReport", "check_dataset", "check_split_sample", "check_data_root",
           "main"]

MAX_EXAMPLES = 5


@dataclass
class Problem:
    """One kind of problem in one split: ``kind`` is layout, missing_labels, size_mismatch,
    label_encoding, unknown_ids or unreadable."""

    kind: str
    message: str
    count: int = 1
    examples: list[str] = field(default_factory=list)
    fix: str = ""

    def render(self) -> str:
        lines = [f"[{self.kind}] {self.message} ({self.count})"]
        lines += [f"    e.g. {e}" for e in self.examples[:MAX_EXAMPLES]]
        if self.fix:
            lines.append(f"    fix: {self.fix}")
        return "\n".join(lines)


@dataclass
class SplitReport:
    split: str
    num_pairs: int = 0
    num_decoded: int = 0
    problems: list[Problem] = field(default_factory=list)


@dataclass
class DatasetReport:
    dataset: str
    root: str
    splits: list[SplitReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def num_problems(self) -> int:
        return len(self.problems) + sum(len(s.problems) for s in self.splits)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "num_problems": self.num_problems}

    def render(self) -> str:
        status = "OK" if not self.num_problems else f"{self.num_problems} problem(s)"
        lines = [f"{self.dataset}: {self.root} -- {status}"]
        lines += ["  " + p.render().replace("\n", "\n  ") for p in self.problems]
        for s in self.splits:
            decoded = f", {s.num_decoded} label(s) decoded" if s.num_decoded else ""
            lines.append(f"  {s.split}: {s.num_pairs} pair(s){decoded}" + ("" if s.problems else " -- OK"))
            lines += ["    " + p.render().replace("\n", "\n    ") for p in s.problems]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- label rules
_TRAIN_IDS = frozenset(range(19)) | {255}
_LABEL_IDS = frozenset(range(34))


@dataclass(frozen=True)
class _LabelRule:
    """What a raw label file of a dataset must look like."""

    color_types: tuple[int, ...]  # accepted PNG colour types
    bit_depth: int
    valid_ids: frozenset[int]
    expected: str
    wrong: dict[int, str]  # colour type -> diagnosis
    fix: str


_PALETTE_AS_RGB = "an RGB colour image: the palette was converted to colours (index information lost)"
_COLOUR_LABEL = "an RGB colour image (a colour visualisation, not class ids)"
_TRAIN_ID_RULE = _LabelRule((0, 3), 8, _TRAIN_IDS, "8-bit single-channel PNG of train ids 0-18/255",
                            {2: _COLOUR_LABEL, 6: _COLOUR_LABEL}, "use the *labelTrainIds.png files of the official "
                            "converter (train ids as gray values), not colour renderings")
_RULES: dict[str, _LabelRule] = {
    "gta5": _LabelRule((3, 0), 8, _LABEL_IDS, "8-bit palette PNG whose index is the Cityscapes labelId (0-33)",
                       {2: _PALETTE_AS_RGB, 6: _PALETTE_AS_RGB},
                       "re-extract the official NN_labels.zip; never open and re-save GTA5 labels as RGB"),
    "cityscapes": _LabelRule((0, 3), 8, _LABEL_IDS, "8-bit gray *_gtFine_labelIds.png (labelIds 0-33)",
                             {2: _COLOUR_LABEL, 6: _COLOUR_LABEL},
                             "use *_gtFine_labelIds.png from gtFine_trainvaltest.zip, not *_gtFine_color.png"),
    "bdd100k": _LabelRule((0, 3), 8, _TRAIN_IDS, "8-bit labels/sem_seg/masks PNG of train ids 0-18/255",
                          {2: _COLOUR_LABEL + " -- colormaps/ instead of masks/?", 6: _COLOUR_LABEL},
                          "use labels/sem_seg/masks/ (train ids), never colormaps/ (its palette differs)"),
    "mapillary": _LabelRule((3, 0), 8, frozenset(range(66)), "8-bit palette PNG of v1.2 ids 0-65",
                            {2: _PALETTE_AS_RGB, 6: _PALETTE_AS_RGB},
                            "use the raw v1.2 labels of the official package (the 66->19 mapping is applied "
                            "at load time)"),
    "acdc": _LabelRule((0, 3), 8, _LABEL_IDS, "8-bit gray *_gt_labelIds.png (0-33)",
                       {2: _COLOUR_LABEL, 6: _COLOUR_LABEL},
                       "use *_gt_labelTrainIds.png / *_gt_labelIds.png from gt_trainval.zip, not *_gt_labelColor.png"),
    "synthia": _LabelRule((2,), 16, frozenset(range(23)), "16-bit 3-channel PNG, class id 0-22 in the R channel",
                          {0: "a single-channel image", 3: "a palette image", 6: "an RGBA image"},
                          "use GT/LABELS (not GT/COLOR) from SYNTHIA_RAND_CITYSCAPES.rar and delete pairs unrar "
                          "corrupted; never re-save the labels with an 8-bit tool"),
}


def _rule(dataset: str, label: Path) -> _LabelRule:
    return _TRAIN_ID_RULE if label.name.endswith("labelTrainIds.png") else _RULES[dataset]


def _raw_ids(dataset: str, label: Path) -> np.ndarray:
    """The stored ids of a label file, before any mapping (SYNTHIA: the R channel)."""
    if dataset == "synthia" and not label.name.endswith("labelTrainIds.png"):
        raw = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise OSError(f"cv2 cannot decode {label}")
        return raw[..., 2] if raw.ndim == 3 else raw
    with Image.open(label) as im:
        return np.asarray(im)


def _image_size(path: Path) -> tuple[int, int]:
    head = png_header(path)
    if head is not None:
        return head.width, head.height
    with Image.open(path) as im:  # header only (JPEG)
        return im.size


# ---------------------------------------------------------------------------------------------- splits
def _candidate_splits(dataset: str, root: Path) -> list[tuple[str, bool]]:
    """(split, check file contents) for each split whose folder or list exists. Subsets of a split
    that is checked in full (GTA5 / SYNTHIA lists) are only enumerated."""
    out: list[tuple[str, bool]] = []
    if dataset == "gta5":
        out.append(("all", True))
        out += [(s, False) for s in ("train", "val", "test") if (root / f"gtav_split_{s}.txt").is_file()]
        if (root / "split.mat").is_file():
            out += [(s, False) for s in ("official_train", "official_val", "official_test")]
    elif dataset == "synthia":
        out.append(("all", True))
        out += [(s, False) for s in ("train", "val") if (root / f"synthia_split_{s}.txt").is_file()]
    elif dataset == "cityscapes":
        out += [(s, True) for s in ("train", "val") if (root / "leftImg8bit" / s).is_dir()]
    elif dataset == "bdd100k":
        out += [(s, True) for s in ("train", "val") if (root / "images" / "10k" / s).is_dir()]
    elif dataset == "mapillary":
        out += [(s, True) for s in ("training", "validation") if (root / s / "images").is_dir()]
    elif dataset == "acdc":
        for cond in ACDC_CONDITIONS:
            for base in ("train", "val", "test"):
                if (root / "rgb_anon" / cond / base).is_dir():
                    out.append((f"{cond}/{base}", base != "test"))
    return out


def _sample_indices(n: int, sample: int) -> list[int]:
    if sample < 0 or sample >= n:
        return list(range(n))
    if sample == 0:
        return []
    return sorted(set(np.linspace(0, n - 1, sample).round().astype(int).tolist()))


def _check_files(dataset: str, pairs: list[SamplePair], sample: int, rep: SplitReport) -> None:
    sizes: list[str] = []
    encodings: dict[str, list[str]] = {}
    unreadable: list[str] = []
    fixes: dict[str, str] = {}
    good: list[SamplePair] = []
    for pair in pairs:
        if pair.label is None:
            continue
        try:
            head = png_header(pair.label)
            rule = _rule(dataset, pair.label)
            if head is None:
                msg = f"label files are not PNGs (expected {rule.expected})"
                encodings.setdefault(msg, []).append(str(pair.label))
                fixes[msg] = rule.fix
                continue
            if head.color_type not in rule.color_types or head.bit_depth != rule.bit_depth:
                what = rule.wrong.get(head.color_type, f"{head.describe()} PNGs")
                if head.color_type in rule.color_types:
                    what = f"{head.describe()} PNGs" + (" (8 bits: the 16-bit ids were truncated)"
                                                        if rule.bit_depth == 16 else "")
                msg = f"label files are {what}; expected {rule.expected}"
                encodings.setdefault(msg, []).append(f"{pair.label} ({head.describe()})")
                fixes[msg] = rule.fix
                continue
            iw, ih = _image_size(pair.image)
            if (iw, ih) != (head.width, head.height):
                sizes.append(f"{pair.image.name} is {iw}x{ih}, {pair.label.name} is {head.width}x{head.height}")
                continue
            good.append(pair)
        except (OSError, ValueError) as exc:
            unreadable.append(f"{pair.image} / {pair.label}: {exc}")
    for msg, examples in encodings.items():
        rep.problems.append(Problem("label_encoding", msg, len(examples), examples[:MAX_EXAMPLES], fixes[msg]))
    if sizes:
        rep.problems.append(Problem(
            "size_mismatch", "image and label sizes differ", len(sizes), sizes[:MAX_EXAMPLES],
            "re-extract these pairs from the official archives or drop them from the split (RobustNet skips such "
            "GTA5 pairs); build_dataset(..., size_mismatch='resize_image') resizes the image to the label instead"))
    # decode a sample of the well-formed labels for the id check
    bad_values: Counter[int] = Counter()
    bad_files: list[str] = []
    for i in _sample_indices(len(good), sample):
        pair = good[i]
        assert pair.label is not None
        try:
            ids = _raw_ids(dataset, pair.label)
        except (OSError, ValueError) as exc:
            unreadable.append(f"{pair.label}: {exc}")
            continue
        rep.num_decoded += 1
        values = np.unique(ids)
        bad = [int(v) for v in values if int(v) not in _rule(dataset, pair.label).valid_ids]
        if bad:
            bad_values.update(bad)
            bad_files.append(f"{pair.label} has ids {bad[:8]}")
    if bad_files:
        ids = ", ".join(str(v) for v, _ in bad_values.most_common(12))
        rule = _rule(dataset, good[0].label)  # type: ignore[arg-type]
        rep.problems.append(Problem(
            "unknown_ids", f"labels hold ids outside the table ({ids}); expected {rule.expected}",
            len(bad_files), bad_files[:MAX_EXAMPLES],
            "these pixels would silently become ignore (255); check that the labels are the official, unconverted "
            "files (" + rule.fix + ")"))
    if unreadable:
        rep.problems.append(Problem("unreadable", "files cannot be read (truncated or corrupt download?)",
                                    len(unreadable), unreadable[:MAX_EXAMPLES],
                                    "re-download / re-extract these files"))


def _enumerate(dataset: str, split: str, data_root: str | Path, rep: SplitReport, *,
               labels: bool = True) -> list[SamplePair] | None:
    """The split's pairs; images without labels (when ``labels``) and layout problems go into ``rep``.
    None when the split cannot be enumerated at all."""
    try:
        return list_pairs(dataset, split, data_root)
    except MissingLabelsError as exc:
        if not labels:  # an unlabelled split: every image counts
            return exc.pairs + [SamplePair(Path(img), None, Path(img).name) for img, _ in exc.missing]
        rep.problems.append(Problem(
            "missing_labels", "images without a label file (partial download?)", len(exc.missing),
            [f"{img} -> {lab}" for img, lab in exc.missing[:MAX_EXAMPLES]],
            str(exc).rsplit("fix: ", 1)[-1].strip()))
        return exc.pairs
    except DatasetLayoutError as exc:
        text = str(exc)
        fix = text.rsplit("fix: ", 1)[-1].strip() if "fix: " in text else ""
        rep.problems.append(Problem("layout", text.split("\n", 1)[0], 1, [], fix))
        return None


def check_dataset(dataset: str, data_root: str | Path, *, sample: int = 100) -> DatasetReport | None:
    """Check one dataset under ``data_root``; None when its folder is absent."""
    data_root = Path(data_root)
    root = next((data_root / d for d in DATASET_DIRS[dataset] if (data_root / d).is_dir()), None)
    if root is None:
        return None
    report = DatasetReport(dataset, str(root))
    splits = _candidate_splits(dataset, root)
    if not splits:
        report.problems.append(Problem("layout", "no split folder found", 1, [str(root)],
                                       "see the expected layout: python -c \"import datasets; "
                                       f"datasets.build_dataset('{dataset}', ...)\" prints it"))
    for split, check_contents in splits:
        rep = SplitReport(split)
        report.splits.append(rep)
        pairs = _enumerate(dataset, split, data_root, rep)
        if pairs is None:
            continue
        rep.num_pairs = len(pairs)
        if check_contents:
            _check_files(dataset, pairs, sample, rep)
    return report


def check_split_sample(dataset: str, split: str, data_root: str | Path, *, sample: int = 8,
                       labels: bool = True) -> SplitReport:
    """Quick check of one split (a run's preflight): enumerate its pairs, then check the encoding, the
    image/label sizes and the ids of ``sample`` evenly spread pairs only. ``labels=False`` (unlabelled
    export splits) checks that the images are there."""
    rep = SplitReport(split)
    pairs = _enumerate(dataset, split, data_root, rep, labels=labels)
    if pairs is None:
        return rep
    rep.num_pairs = len(pairs)
    if not rep.num_pairs:
        rep.problems.append(Problem("layout", f"split {dataset}/{split} has no images", 1, [str(data_root)],
                                    "check the layout with python -m datasets.check"))
    elif labels:
        chosen = [pairs[i] for i in _sample_indices(len(pairs), sample)]
        _check_files(dataset, chosen, -1, rep)
    return rep


def check_data_root(data_root: str | Path, *, datasets: Sequence[str] | None = None,
                    sample: int = 100) -> list[DatasetReport]:
    """Reports of every dataset (or ``datasets``) present under ``data_root``."""
    out = []
    for name in datasets or DATASET_NAMES:
        rep = check_dataset(name, data_root, sample=sample)
        if rep is not None:
            out.append(rep)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datasets.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("DGSS_DATA_ROOT"),
                        help="folder holding the datasets (default: $DGSS_DATA_ROOT)")
    parser.add_argument("--dataset", action="append", choices=DATASET_NAMES,
                        help="check only this dataset (repeatable)")
    parser.add_argument("--sample", type=int, default=100,
                        help="labels decoded per split for the id check (-1: all, 0: none; default 100)")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    args = parser.parse_args(argv)
    if not args.data_root:
        parser.error("--data-root is required (or set $DGSS_DATA_ROOT)")
    root = Path(args.data_root)
    if not root.is_dir():
        print(f"error: data root {root} does not exist", file=sys.stderr)
        return 2
    reports = check_data_root(root, datasets=args.dataset, sample=args.sample)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        if not reports:
            print(f"no dataset folder found under {root} (looked for: "
                  + ", ".join(d for name in DATASET_NAMES for d in DATASET_DIRS[name]) + ")")
        for r in reports:
            print(r.render())
        total = sum(r.num_problems for r in reports)
        print(f"\n{len(reports)} dataset(s) checked, {total} problem(s)")
    return 1 if any(r.num_problems for r in reports) or not reports else 0


if __name__ == "__main__":
    sys.exit(main())
