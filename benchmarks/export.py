"""Prediction export in a benchmark server's submission format (ACDC test; ``Protocol.exports``).

ACDC's test ground truth is withheld: results come from its evaluation server, which takes one PNG per
test image, holding Cityscapes **labelIds** (not train ids), named like the input image. The export mirrors
the input tree below ``rgb_anon/``::

    <out>/<cond>/test/<seq>/<seq>_frame_<NNNNNN>_rgb_anon.png     8-bit gray, labelIds (7 = road, ...)

Predictions come from the protocol's inference (test-time resize, slide/whole) and are upsampled to the
native image size before argmax, exactly as in :func:`benchmarks.evaluate.evaluate_split`. Files are written
atomically and existing ones are skipped, so an interrupted export resumes; a failing image raises
:class:`ExportError` naming it.

Writing needs a model, so it runs from the runner: ``python -m runners.run --method M --protocol city2acdc
--eval-only --checkpoint CKPT --export`` (or ``--export`` on a training run). This module's CLI checks an
export folder against the test images and zips it for upload::

    python -m benchmarks.export --data-root DATA --protocol city2acdc RUN/export [--zip]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from datasets.base import png_header
from datasets.labels import CITYSCAPES_LABELS, TRAIN_ID_TO_LABEL_ID

from .evaluate import _as_predict_fn, infer_logits, resized_argmax
from .numerics import Numerics
from .protocols import InferenceSpec, get_protocol, list_protocols, load_split

__all__ = [
    "ID_FORMATS",
    "ExportError",
    "ExportResult",
    "submission_relpath",
    "encode_prediction",
    "export_predictions",
    "check_submission",
    "zip_submission",
    "main",
]

ID_FORMATS = ("labelIds", "trainIds")
"""``labelIds``: Cityscapes label ids (what the ACDC and Cityscapes servers take); ``trainIds``: 0-18."""

_VALID_IDS = {
    "labelIds": frozenset(l.id for l in CITYSCAPES_LABELS if l.train_id != 255),
    "trainIds": frozenset(range(19)),
}
_IMAGE_ROOTS = {"acdc": "rgb_anon", "cityscapes": "leftImg8bit", "bdd100k": "images/10k"}


class ExportError(RuntimeError):
    """Exporting one test image failed; the message names it and how many files are already written."""


@dataclass
class ExportResult:
    key: str
    out_dir: str
    num_images: int
    num_written: int
    id_format: str
    seconds: float


def submission_relpath(dataset: Any, index: int) -> Path:
    """Where the prediction of sample ``index`` goes, relative to the export folder: the input's path below
    the dataset's image root (``rgb_anon/`` for ACDC), with a ``.png`` suffix."""
    pair = dataset.pairs[index]
    base = Path(dataset.root) / _IMAGE_ROOTS.get(getattr(dataset, "name", ""), "")
    try:
        rel = Path(pair.image).relative_to(base)
    except ValueError:
        rel = Path(pair.image.name)
    return rel.with_suffix(".png")


def encode_prediction(train_ids: np.ndarray, id_format: str = "labelIds") -> np.ndarray:
    """uint8 [H,W] train ids (0-18) -> the submission's ids."""
    if id_format not in ID_FORMATS:
        raise ValueError(f"id_format must be one of {ID_FORMATS}, got {id_format!r}")
    train_ids = np.asarray(train_ids, dtype=np.uint8)
    return TRAIN_ID_TO_LABEL_ID[train_ids] if id_format == "labelIds" else train_ids


def _write_png(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8)).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def export_predictions(predict_fn: Any, dataset: Any, spec: InferenceSpec, out_dir: Path | str, *, key: str = "",
                       id_format: str = "labelIds", num_classes: int = 19, device: str | torch.device = "cpu",
                       autocast_dtype: torch.dtype | None = None, numerics: Numerics | None = None,
                       progress: bool = True, batch_windows: int = 1, overwrite: bool = False) -> ExportResult:
    """Write one submission PNG per item of ``dataset`` (a test split built with its test transform).

    Items are dicts with ``image`` [3,h,w] (uint8 or float, test-resized) and ``label`` at the native size (all
    255 for a split without ground truth): the scores are resized to that size before argmax. ``numerics`` /
    ``autocast_dtype``: the model's autocast, as in :func:`benchmarks.evaluate.evaluate_split`.
    """
    if id_format not in ID_FORMATS:
        raise ValueError(f"id_format must be one of {ID_FORMATS}, got {id_format!r}")
    start = time.perf_counter()
    predict = _as_predict_fn(predict_fn)
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0

    def autocast() -> contextlib.AbstractContextManager:
        if numerics is not None:
            return numerics.autocast(device.type)
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=autocast_dtype)

    bar = tqdm(total=len(dataset), desc=f"export {key}", disable=not progress, leave=False)
    index, target = -1, None
    try:
        for index in range(len(dataset)):
            target = out_dir / submission_relpath(dataset, index)
            if target.is_file() and not overwrite:
                bar.update(1)
                continue
            item = dataset[index]
            image = torch.as_tensor(item["image"]).to(device, non_blocking=True).float().unsqueeze(0)
            size = tuple(item.get("ori_size") or np.asarray(item["label"]).shape[-2:])
            with torch.inference_mode(), autocast():
                logits = infer_logits(predict, image, spec, num_classes, batch_windows=batch_windows)
            with torch.inference_mode():
                pred = resized_argmax(logits.float(), size)[0].to(torch.uint8).cpu().numpy()
            _write_png(target, encode_prediction(pred, id_format))
            written += 1
            bar.update(1)
    except Exception as exc:
        bar.close()
        done = sum(1 for _ in out_dir.rglob("*.png"))
        raise ExportError(
            f"export of {key or 'split'} failed on image #{index} (-> {target}): {type(exc).__name__}: {exc}. "
            f"{done} prediction file(s) are in {out_dir}; rerun to continue (existing files are kept)."
        ) from exc
    bar.close()
    return ExportResult(key, str(out_dir), len(dataset), written, id_format, time.perf_counter() - start)


def check_submission(out_dir: Path | str, dataset: Any, *, id_format: str = "labelIds",
                     decode: bool = True) -> list[str]:
    """Problems of an export folder for ``dataset``: missing or extra files, sizes that differ from the input
    images, non-8-bit-gray PNGs and (``decode``) ids outside the format. Empty list = ready to upload."""
    out_dir = Path(out_dir)
    problems: list[str] = []
    expected: set[Path] = set()
    missing, bad_size, bad_kind, bad_ids = [], [], [], []
    for i, pair in enumerate(dataset.pairs):
        rel = submission_relpath(dataset, i)
        expected.add(rel)
        path = out_dir / rel
        if not path.is_file():
            missing.append(str(rel))
            continue
        head = png_header(path)
        if head is None or head.color_type != 0 or head.bit_depth != 8:
            bad_kind.append(f"{rel} ({head.describe() if head else 'not a PNG'})")
            continue
        with Image.open(pair.image) as im:
            size = im.size
        if (head.width, head.height) != size:
            bad_size.append(f"{rel} is {head.width}x{head.height}, the image {size[0]}x{size[1]}")
            continue
        if decode:
            values = set(np.unique(np.asarray(Image.open(path))).tolist())
            if not values <= _VALID_IDS[id_format]:
                bad_ids.append(f"{rel} holds {sorted(values - _VALID_IDS[id_format])[:8]}")
    extra = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*.png") if p.relative_to(out_dir) not in expected)
    for what, items in (("missing prediction(s)", missing), ("unexpected file(s)", extra),
                        ("file(s) not 8-bit gray PNGs", bad_kind), ("size mismatch(es)", bad_size),
                        (f"file(s) with ids that are not {id_format}", bad_ids)):
        if items:
            problems.append(f"{len(items)} {what}, e.g. " + "; ".join(items[:5]))
    return problems


def zip_submission(out_dir: Path | str, zip_path: Path | str | None = None) -> Path:
    """Zip every PNG below ``out_dir`` (paths relative to it) into ``zip_path`` (default ``<out_dir>.zip``)."""
    out_dir = Path(out_dir)
    zip_path = Path(zip_path) if zip_path else out_dir.with_suffix(".zip")
    tmp = zip_path.with_name(zip_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(out_dir.rglob("*.png")):
            zf.write(p, p.relative_to(out_dir).as_posix())
    os.replace(tmp, zip_path)
    return zip_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", help="the run's export folder (holds one folder per export split key)")
    parser.add_argument("--data-root", default=os.environ.get("DGSS_DATA_ROOT"), help="datasets (or $DGSS_DATA_ROOT)")
    parser.add_argument("--protocol", default="city2acdc", choices=list_protocols())
    parser.add_argument("--id-format", default="labelIds", choices=ID_FORMATS)
    parser.add_argument("--no-decode", action="store_true", help="check names and sizes only")
    parser.add_argument("--zip", action="store_true", help="zip each complete export split for upload")
    args = parser.parse_args(argv)
    if not args.data_root:
        parser.error("--data-root is required (or set $DGSS_DATA_ROOT)")
    protocol = get_protocol(args.protocol)
    if not protocol.exports:
        print(f"protocol {protocol.name} exports nothing", file=sys.stderr)
        return 2
    failed = False
    for split in protocol.exports:
        dataset = load_split(split, args.data_root)
        folder = Path(args.export_dir) / split.key
        problems = check_submission(folder, dataset, id_format=args.id_format, decode=not args.no_decode)
        if problems:
            failed = True
            print(f"{split.key}: {folder} is NOT ready ({len(dataset)} test images):")
            for p in problems:
                print(f"  - {p}")
            continue
        print(f"{split.key}: {folder} holds all {len(dataset)} predictions ({args.id_format})")
        if args.zip:
            print(f"  zipped: {zip_submission(folder)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
