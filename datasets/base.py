"""Shared dataset machinery: sample pairs, image/label readers, the base ``SegmentationDataset``.

Every dataset is read in its *official* on-disk layout (shared/specs/datasets.md) and decoded to the
19 Cityscapes train ids (0-18, 255 = ignore). A dataset object only holds the list of
``SamplePair`` s (paths, no pixels), so building one never decodes an image.

Raw samples (``SegmentationDataset.load``) are ``dict(image=np.uint8[H,W,3] RGB,
label=np.uint8[H,W] train ids, name=str, dataset=str)``. ``__getitem__`` additionally runs the
transform with a seeded ``np.random.Generator`` so augmentation is a pure function of
``(index, aug_seed)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Container, Iterable, Literal, Sequence

import cv2
import numpy as np
import torch.utils.data
from PIL import Image

from .labels import IGNORE_INDEX, NUM_CLASSES, apply_lut

__all__ = [
    "ConcatSegmentationDataset",
    "DatasetLayoutError",
    "MissingLabelsError",
    "PngHeader",
    "SamplePair",
    "SegmentationDataset",
    "TRAIN_ID_SANITIZE",
    "find_dataset_dir",
    "layout_error",
    "read_image",
    "read_index_png",
    "image_size",
    "missing_labels_error",
    "png_header",
]


class DatasetLayoutError(Exception):
    """A dataset folder or file is missing or not in the official layout/encoding.

    The message always names the expected path, the expected layout and the fix.
    """


class MissingLabelsError(DatasetLayoutError):
    """Some images of a split have no label file (a partial download or extraction).

    ``missing`` lists (image, expected label path); ``pairs`` holds the complete pairs that were found,
    so a checker (``datasets.check``) can report the gap and still inspect the rest.
    """

    def __init__(self, message: str, missing: list[tuple[Path, Path]] | None = None,
                 pairs: list["SamplePair"] | None = None) -> None:
        super().__init__(message)
        self.missing = list(missing or [])
        self.pairs = list(pairs or [])


@dataclass(frozen=True)
class SamplePair:
    """One image and its label file (``label`` is None only for splits without ground truth)."""

    image: Path
    label: Path | None
    name: str


TRAIN_ID_SANITIZE: np.ndarray = np.full(256, IGNORE_INDEX, dtype=np.uint8)
"""Identity on train ids 0-18; every other value (19-254) becomes 255 (ignore)."""
TRAIN_ID_SANITIZE[:NUM_CLASSES] = np.arange(NUM_CLASSES, dtype=np.uint8)


def layout_error(problem: str, expected: Path | str, layout: str, fix: str) -> DatasetLayoutError:
    """Build a ``DatasetLayoutError`` whose message has the three mandatory parts."""
    return DatasetLayoutError(
        f"{problem}\n  expected: {expected}\n  expected layout:\n{_indent(layout, 4)}\n  fix: {fix}"
    )


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.strip("\n").splitlines())


def find_dataset_dir(data_root: Path, dirnames: Iterable[str], dataset: str, layout: str, fix: str) -> Path:
    """Return ``data_root/<first existing dirname>`` or raise a ``DatasetLayoutError`` drawing the layout."""
    dirnames = tuple(dirnames)
    for d in dirnames:
        if (data_root / d).is_dir():
            return data_root / d
    tried = ", ".join(str(data_root / d) for d in dirnames)
    if not data_root.is_dir():
        problem = f"{dataset}: data root {data_root} does not exist"
    else:
        problem = f"{dataset}: dataset folder not found under the data root {data_root} (looked for {tried})"
    raise layout_error(problem, data_root / dirnames[0], layout, fix)


def pair_with_labels(images: Iterable[tuple[Path, str]], label_dir: Path, label_names: Container[str],
                     suffixes: Sequence[str], pairs: list[SamplePair], missing: list[tuple[Path, Path]]) -> None:
    """Pair each ``(image path, stem)`` with the first label ``label_dir / (stem + suffix)`` present in
    ``label_names``, appending to ``pairs``; an image without one goes to ``missing`` as
    ``(image, label expected under the first suffix)``."""
    for image, stem in images:
        suffix = next((x for x in suffixes if stem + x in label_names), None)
        if suffix is None:
            missing.append((image, label_dir / (stem + suffixes[0])))
        else:
            pairs.append(SamplePair(image, label_dir / (stem + suffix), stem))


def missing_labels_error(dataset: str, missing: list[tuple[Path, Path]], layout: str, fix: str,
                         pairs: list[SamplePair] | None = None) -> MissingLabelsError:
    """Error for images whose label file is absent (a partial download must not be skipped silently)."""
    examples = "\n".join(f"    {img} -> {lab}" for img, lab in missing[:5])
    base = layout_error(
        f"{dataset}: {len(missing)} image(s) have no label file, e.g.\n{examples}",
        missing[0][1],
        layout,
        fix,
    )
    return MissingLabelsError(str(base), missing, pairs)


def read_image(path: Path) -> np.ndarray:
    """Decode an image to uint8 RGB [H, W, 3] (gray and palette files are expanded).

    EXIF orientation is ignored on purpose: label rasters are stored in the file's pixel order.
    """
    data = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if data is None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        with Image.open(path) as im:  # formats cv2 cannot read
            return np.asarray(im.convert("RGB"))
    return cv2.cvtColor(data, cv2.COLOR_BGR2RGB)


def read_index_png(path: Path, *, what: str = "label", hint: str = "") -> np.ndarray:
    """Read an 8-bit single-channel label PNG (mode P or L) as its raw index array [H, W] uint8.

    Palette PNGs are *never* converted to RGB: the index is the class id.
    """
    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise layout_error(
                f"{what} file {path} has PIL mode {im.mode!r}; expected an 8-bit single-channel "
                f"(palette 'P' or gray 'L') PNG whose pixel values are class ids. {hint}".rstrip(),
                path,
                "8-bit PNG, one class id per pixel (not a colour visualisation)",
                "use the official label files, not colour-rendered label images",
            )
        if im.mode == "L":  # 8-bit gray: libpng through cv2 decodes ~20 % faster than PIL (palettes need PIL)
            data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if data is not None and data.dtype == np.uint8 and data.shape == (im.height, im.width):
                return data
        return np.asarray(im, dtype=np.uint8)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header only."""
    with Image.open(path) as im:
        return im.size


@dataclass(frozen=True)
class PngHeader:
    """The IHDR fields of a PNG: size, bit depth per channel and colour type (0 gray, 2 RGB, 3 palette,
    4 gray+alpha, 6 RGBA)."""

    width: int
    height: int
    bit_depth: int
    color_type: int

    @property
    def channels(self) -> int:
        return {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(self.color_type, 0)

    def describe(self) -> str:
        kind = {0: "gray", 2: "RGB", 3: "palette", 4: "gray+alpha", 6: "RGBA"}.get(self.color_type, "?")
        return f"{self.bit_depth}-bit {kind}"


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_header(path: Path) -> PngHeader | None:
    """Read a PNG's IHDR (the first 29 bytes) without decoding; None when the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(29)
    if len(head) < 29 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return PngHeader(int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"), head[24], head[25])


class SegmentationDataset(torch.utils.data.Dataset):
    """A list of image/label pairs of one split of one dataset, decoded to Cityscapes train ids.

    Subclasses define ``decode_label``. ``label_lut`` (256 entries) maps the file's values to train
    ids; files whose name ends with ``labelTrainIds.png`` are read as train ids directly.

    ``size_mismatch``: "error" (default) raises when image and label sizes differ; "resize_image"
    resizes the image (bilinear) to the label size, the label being the reference.
    """

    label_lut: np.ndarray | None = None

    def __init__(
        self,
        name: str,
        split: str,
        root: Path,
        pairs: list[SamplePair],
        *,
        transform: Callable[[dict, np.random.Generator], dict] | None = None,
        size_mismatch: Literal["error", "resize_image"] = "error",
    ) -> None:
        if size_mismatch not in ("error", "resize_image"):
            raise ValueError(f"size_mismatch must be 'error' or 'resize_image', got {size_mismatch!r}")
        self.name = name
        self.split = split
        self.root = Path(root)
        self.pairs = list(pairs)
        self.transform = transform
        self.size_mismatch = size_mismatch

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, root={str(self.root)!r}, n={len(self)})"

    def __len__(self) -> int:
        return len(self.pairs)

    # -- decoding --------------------------------------------------------------------------
    def decode_label(self, path: Path) -> np.ndarray:
        """Label file -> np.uint8[H, W] train ids (255 ignore)."""
        raw = read_index_png(path)
        if path.name.endswith("labelTrainIds.png") or self.label_lut is None:
            return apply_lut(raw, TRAIN_ID_SANITIZE)
        return apply_lut(raw, self.label_lut)

    def load(self, i: int) -> dict[str, Any]:
        """Raw sample i: image uint8[H,W,3] RGB, label uint8[H,W] train ids, name, dataset."""
        pair = self.pairs[i]
        image = read_image(pair.image)
        if pair.label is None:
            label = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        else:
            label = self.decode_label(pair.label)
            if label.shape != image.shape[:2]:
                if self.size_mismatch == "resize_image":
                    image = cv2.resize(image, (label.shape[1], label.shape[0]), interpolation=cv2.INTER_LINEAR)
                else:
                    raise DatasetLayoutError(
                        f"{self.name}: image and label sizes differ for sample {pair.name!r}:\n"
                        f"    image {pair.image} is {image.shape[1]}x{image.shape[0]}\n"
                        f"    label {pair.label} is {label.shape[1]}x{label.shape[0]}\n"
                        "  expected: both files of a pair at the same resolution\n"
                        "  fix: re-extract the pair from the official archive, drop it from the split, "
                        "or build the dataset with size_mismatch='resize_image'"
                    )
        return {"image": image, "label": label, "name": pair.name, "dataset": self.name}

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        """``ds[i]`` or ``ds[(i, aug_seed)]``.

        The transform is called as ``transform(sample, np.random.default_rng(seed))`` with
        ``seed = aug_seed`` (or ``i``, counted from 0, for a plain index), so augmentation is deterministic and a
        resumed training run needs no data replay. Without a transform the raw sample is returned.
        """
        i, seed = index if isinstance(index, tuple) else (index, None)
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {index} out of range for {self!r}")
        if seed is None:
            seed = i  # ds[-1] seeds like ds[len(ds) - 1]
        sample = self.load(i)
        if self.transform is None:
            return sample
        return self.transform(sample, np.random.default_rng(seed))


class ConcatSegmentationDataset(torch.utils.data.Dataset):
    """Several training splits read as one (e.g. GTA5 + SYNTHIA), indexed like a ``SegmentationDataset``.

    ``ds[(i, aug_seed)]`` goes to the part holding global index ``i``; ``load(i)`` / ``transform`` /
    ``pairs`` behave as for a single dataset. All parts share one transform.
    """

    def __init__(self, parts: list[SegmentationDataset]) -> None:
        if not parts:
            raise ValueError("ConcatSegmentationDataset needs at least one dataset")
        self.parts = list(parts)
        self.name = "+".join(p.name for p in self.parts)
        self.split = "+".join(p.split for p in self.parts)
        self.transform = self.parts[0].transform
        self._offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __repr__(self) -> str:
        return f"ConcatSegmentationDataset({self.parts!r})"

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def pairs(self) -> list[SamplePair]:
        return [pair for p in self.parts for pair in p.pairs]

    def locate(self, i: int) -> tuple[SegmentationDataset, int]:
        """(part, index inside the part) of global index ``i``."""
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {self!r}")
        k = int(np.searchsorted(self._offsets, i, side="right")) - 1
        return self.parts[k], i - int(self._offsets[k])

    def load(self, i: int) -> dict[str, Any]:
        part, j = self.locate(i)
        return part.load(j)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(index, tuple):
            part, j = self.locate(index[0])
            return part[(j, *index[1:])]
        part, j = self.locate(index)
        i = int(index)
        return part[(j, i + len(self) if i < 0 else i)]  # seeded by the global index, counted from 0
