"""Data loading against a plain cv2 baseline, and scoring at native label resolution.

**Loading** (:func:`bench_loading`): per image, on real-format files, our pipeline (the dataset's ``ds[(i, seed)]``:
its loader and transform, exactly what a DataLoader worker runs) against a *plain baseline* written straight with
cv2 / PIL / numpy for the same work: decode, label lookup (``cv2.LUT``), the same resize / crop / flip / padding,
uint8 CHW tensors. Both draw the same random numbers and share the steps that are the algorithm rather than
plumbing (``TrainTransform.target_size``, ``random_crop_box`` with its cat_max_ratio retries,
``photometric_distortion``, ``color_jitter``), so their outputs must be equal, which every case checks. The two
alternate image by image, ``reps`` times; the columns are medians of the CPU time each call used (what a loader
worker costs a core; unlike wall time it does not grow when other processes share the cores), wall-time medians
are kept in the record.

**Scoring** (:func:`bench_scoring`): ``resize_logits(...).argmax(1)`` (a full-size float32 [C,H,W] tensor) against
``resized_argmax`` (one class at a time) at the protocols' native label sizes: same labels, time (CPU time on a
CPU), and the peak memory the step adds (CUDA allocator peak; on a CPU the peak RSS growth of a fresh process).

**Loader throughput** (:func:`bench_loader`): images/s of a real DataLoader per worker count.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from datasets.base import TRAIN_ID_SANITIZE, SegmentationDataset
from datasets.batching import collate
from datasets.transforms import (TrainAugmentation, TrainTransform, color_jitter, photometric_distortion,
                                 random_crop_box, rescale_size)

from ..evaluate import resize_logits, resized_argmax

__all__ = ["GTA_SIZE", "LoadCase", "synthetic_photo", "synthetic_label_ids", "write_gta_like", "write_bdd_like",
           "fixture_roots", "plain_train_sample", "plain_eval_sample", "train_cases", "eval_cases",
           "bench_loading", "bench_scoring", "bench_loader"]

GTA_SIZE = (1052, 1914)
BDD_SIZE = (720, 1280)
GiB = float(1 << 30)


# ---------------------------------------------------------------------------------------------- real-format files
def synthetic_photo(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A street-photo-like uint8 RGB image: smooth colour regions, edges and sensor noise, so that PNG/JPEG
    files get realistic sizes and decode times (random noise would be much larger, flat colour much smaller)."""
    base = rng.integers(0, 256, (max(2, h // 48), max(2, w // 48), 3), dtype=np.uint8)
    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    detail = rng.integers(0, 256, (max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8)
    img += (cv2.resize(detail, (w, h), interpolation=cv2.INTER_NEAREST).astype(np.int16) - 128) // 6
    img += rng.normal(0, 4, (h, w, 3)).astype(np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_label_ids(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Cityscapes labelIds (GTA5's palette indices) in blocky regions."""
    ids = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33, 0, 1],
                   dtype=np.uint8)
    cells = ids[rng.integers(0, len(ids), (max(2, h // 64), max(2, w // 64)))]
    return cv2.resize(cells, (w, h), interpolation=cv2.INTER_NEAREST)


def write_gta_like(root: Path | str, n: int, size: tuple[int, int] = GTA_SIZE, *, seed: int = 0) -> Path:
    """Write ``n`` GTA5-layout pairs (``gta/images/NNNNN.png`` RGB, ``gta/labels/NNNNN.png`` 8-bit palette with
    Cityscapes labelIds) of ``size`` = (h, w) under ``root``; returns ``root``."""
    root = Path(root)
    img_dir, lab_dir = root / "gta" / "images", root / "gta" / "labels"
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = [int(x) for x in rng.integers(0, 256, 768)]
    h, w = size
    for i in range(n):
        name = f"{i + 1:05d}.png"
        cv2.imwrite(str(img_dir / name), cv2.cvtColor(synthetic_photo(h, w, rng), cv2.COLOR_RGB2BGR))
        lab = Image.frombytes("P", (w, h), synthetic_label_ids(h, w, rng).tobytes())
        lab.putpalette(palette)
        lab.save(lab_dir / name)
    return root


def write_bdd_like(root: Path | str, n: int, size: tuple[int, int] = BDD_SIZE, *, seed: int = 0) -> Path:
    """Write ``n`` BDD100K-10k val pairs (JPEG images, 8-bit gray train-id masks) of ``size`` = (h, w)."""
    root = Path(root)
    img_dir = root / "bdd100k" / "images" / "10k" / "val"
    lab_dir = root / "bdd100k" / "labels" / "sem_seg" / "masks" / "val"
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(n):
        photo = cv2.cvtColor(synthetic_photo(h, w, rng), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(img_dir / f"bench{i:04d}.jpg"), photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
        cv2.imwrite(str(lab_dir / f"bench{i:04d}.png"), TRAIN_ID_SANITIZE[synthetic_label_ids(h, w, rng)])
    return root


def fixture_roots(fixtures: Path | str, root: Path | str) -> dict[str, Path]:
    """Link the full-resolution fixtures (``shared/fixtures``) into official layouts under ``root``: Mapillary
    (3984x2988 JPEG, v1.2 palette label) and Cityscapes (2048x1024 PNG, labelTrainIds). Returns the datasets
    found, each mapped to ``root``."""
    fixtures, root = Path(fixtures), Path(root)
    found: dict[str, Path] = {}
    mapillary = fixtures / "mmseg_mapillary_fullres"
    if (mapillary / "images").is_dir():
        for src, dst in ((mapillary / "images", root / "mapillary" / "validation" / "images"),
                         (mapillary / "v1.2", root / "mapillary" / "validation" / "v1.2" / "labels")):
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                dst.symlink_to(src.resolve(), target_is_directory=True)
        found["mapillary"] = root
    cityscapes = fixtures / "vltseg_cityscapes_fullres"
    if (cityscapes / "leftImg8bit").is_dir():
        (root / "cityscapes").mkdir(parents=True, exist_ok=True)
        for sub in ("leftImg8bit", "gtFine"):
            if not (root / "cityscapes" / sub).exists():
                (root / "cityscapes" / sub).symlink_to((cityscapes / sub).resolve(), target_is_directory=True)
        found["cityscapes"] = root
    return found


# ---------------------------------------------------------------------------------------------- the plain baseline
def _plain_read(pair: Any, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cv2 image decode + BGR->RGB; label: cv2 for 8-bit gray, PIL for palettes (cv2 would expand them to
    colours); ``cv2.LUT``."""
    image = cv2.cvtColor(cv2.imread(str(pair.image), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION),
                         cv2.COLOR_BGR2RGB)
    with Image.open(pair.label) as im:
        raw = cv2.imread(str(pair.label), cv2.IMREAD_UNCHANGED) if im.mode == "L" else np.asarray(im)
    return image, cv2.LUT(raw, lut)


def _dataset_lut(ds: SegmentationDataset, pair: Any) -> np.ndarray:
    """The table the dataset applies to this label file (data, not code: the baseline applies it itself)."""
    if ds.label_lut is None or pair.label.name.endswith("labelTrainIds.png"):
        return TRAIN_ID_SANITIZE
    return ds.label_lut


def _chw(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(image.transpose(2, 0, 1).copy()), torch.from_numpy(np.ascontiguousarray(label))


def plain_train_sample(ds: SegmentationDataset, i: int, aug: TrainAugmentation, rng: np.random.Generator
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """One training sample written out plainly: decode, LUT, resize (linear / nearest), crop, flip, photometric,
    pad to the crop size (label 255), uint8 CHW."""
    pair = ds.pairs[i]
    image, label = _plain_read(pair, _dataset_lut(ds, pair))
    h, w = label.shape
    nw, nh = TrainTransform(aug).target_size(w, h, rng)
    if (nw, nh) != (w, h):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST)
    y0, y1, x0, x1 = random_crop_box(label, aug.crop_size, aug.cat_max_ratio, rng)
    image, label = image[y0:y1, x0:x1], label[y0:y1, x0:x1]
    if rng.random() < aug.hflip_prob:
        image, label = cv2.flip(image, 1), cv2.flip(label, 1)
    image = np.ascontiguousarray(image)
    if aug.photometric:
        image = photometric_distortion(image, rng)
    if aug.color_jitter is not None:
        image = color_jitter(image, aug.color_jitter, rng)
    ph, pw = max(aug.crop_size[0] - label.shape[0], 0), max(aug.crop_size[1] - label.shape[1], 0)
    if ph or pw:
        image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        label = cv2.copyMakeBorder(np.ascontiguousarray(label), 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=255)
    return _chw(image, label)


def plain_eval_sample(ds: SegmentationDataset, i: int, resize: tuple[int, int] | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One test sample written out plainly: decode, LUT, keep-ratio linear resize of the image, uint8 CHW."""
    pair = ds.pairs[i]
    image, label = _plain_read(pair, _dataset_lut(ds, pair))
    if resize is not None:
        nw, nh = rescale_size(image.shape[1], image.shape[0], resize)
        if (nw, nh) != (image.shape[1], image.shape[0]):
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return _chw(image, label)


# ---------------------------------------------------------------------------------------------- loading cases
@dataclass
class LoadCase:
    """Ours (``dataset[(i, seed)]``) against ``plain(i, rng)`` on the images of ``dataset``."""

    name: str
    dataset: Any
    plain: Callable[[int, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]
    detail: str = ""


def train_cases(roots: dict[str, Path], recipes: dict[str, tuple[TrainAugmentation, str]]) -> list[LoadCase]:
    """One case per (GTA5 root, recipe): ``recipes`` maps a name to (augmentation, what it is)."""
    from datasets import build_dataset

    cases = []
    for root_name, root in roots.items():
        for name, (aug, detail) in recipes.items():
            ds = build_dataset("gta5", "all", root, transform=TrainTransform(aug))
            cases.append(LoadCase(f"train {name} ({root_name})", ds,
                                  lambda i, rng, ds=ds, aug=aug: plain_train_sample(ds, i, aug, rng), detail))
    return cases


def eval_cases(roots: dict[str, dict[str, Path]], protocol: Any) -> list[LoadCase]:
    """One case per target split of ``protocol`` (its test transform) and data root holding that dataset
    (``roots`` = {root name: {dataset: root}})."""
    from ..protocols import build_test_transform, load_split

    cases = []
    for root_name, by_dataset in roots.items():
        for split in protocol.targets:
            root = by_dataset.get(split.dataset)
            if root is None:
                continue
            transform = build_test_transform(split)
            if transform.prehalve or transform.center_crop is not None:
                continue  # PIL-based protocol geometry: not a loading-speed question
            ds = load_split(split, root, transform)
            cases.append(LoadCase(f"eval {split.key} ({root_name})", ds,
                                  lambda i, rng, ds=ds, t=transform: plain_eval_sample(ds, i, t.resize),
                                  f"test resize {split.test_resize}"))
    return cases


def bench_loading(cases: Sequence[LoadCase], *, reps: int = 5, max_images: int = 4, min_samples: int = 15,
                  seed: int = 0) -> list[dict[str, Any]]:
    """Per case: median CPU seconds per image of ours and of the plain baseline (alternating, ``reps`` rounds over
    up to ``max_images`` images, more rounds when that gives fewer than ``min_samples`` timings), their ratio,
    wall-time medians, and whether both gave identical tensors."""
    rows = []
    for case in cases:
        n = min(len(case.dataset), max_images)
        rounds = max(reps, math.ceil(min_samples / max(n, 1)))
        cpu: dict[str, list[float]] = {"ours": [], "plain": []}
        wall: dict[str, list[float]] = {"ours": [], "plain": []}
        same = True
        shape = None
        for r in range(rounds):
            for i in range(n):
                aug_seed = seed * 1_000_003 + i
                timed = [("ours", lambda: case.dataset[(i, aug_seed)]),
                         ("plain", lambda: case.plain(i, np.random.default_rng(aug_seed)))]
                if (r + i) % 2:
                    timed.reverse()  # alternate who goes first (caches, a busy machine)
                results = {}
                for who, fn in timed:
                    c0, t0 = time.process_time(), time.perf_counter()
                    results[who] = fn()
                    wall[who].append(time.perf_counter() - t0)
                    cpu[who].append(time.process_time() - c0)
                if r == 0:
                    mine, base = results["ours"], results["plain"]
                    shape = tuple(mine["image"].shape)
                    same = same and torch.equal(mine["image"], base[0]) and torch.equal(mine["label"], base[1])
        o, p = statistics.median(cpu["ours"]), statistics.median(cpu["plain"])
        rows.append({"case": case.name, "detail": case.detail, "images": n, "reps": rounds, "out_shape": shape,
                     "ours_ms": o * 1e3, "plain_ms": p * 1e3, "ratio": o / p, "identical": same,
                     "ours_wall_ms": statistics.median(wall["ours"]) * 1e3,
                     "plain_wall_ms": statistics.median(wall["plain"]) * 1e3})
    return rows


# ---------------------------------------------------------------------------------------------- scoring
def _proc_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(key)), None)
    except OSError:
        return None


def score_peak_rss(how: str, logits_hw: Sequence[int], label_hw: Sequence[int], num_classes: int) -> float:
    """GiB by which this process's resident memory peaks above its level before scoring one random [1,C,h,w]
    score map at ``label_hw``; ``how`` = "full" (one-shot resize + argmax) or "tiled" (``resized_argmax``).
    Linux's VmHWM of the process's own memory map (``ru_maxrss`` would include the parent's at fork)."""
    torch.set_num_threads(1)
    logits = torch.randn(1, num_classes, *logits_hw, generator=torch.Generator().manual_seed(0))
    before = _proc_kib("VmRSS:")
    fallback = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if how == "full":
        resize_logits(logits, tuple(label_hw)).argmax(1)
    else:
        resized_argmax(logits, tuple(label_hw))
    peak = _proc_kib("VmHWM:")
    if before is None or peak is None:
        before, peak = fallback, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(0, peak - before) * 1024 / GiB


def _peak_gib(how: str, logits_hw: tuple[int, int], label_hw: tuple[int, int], num_classes: int,
              device: torch.device) -> float:
    """Peak memory the scoring adds: the CUDA allocator's peak, or on a CPU :func:`score_peak_rss` in a fresh
    process (a process's peak RSS never goes down, and freed memory may stay mapped, so each gets its own)."""
    if device.type == "cuda":
        logits = torch.randn(1, num_classes, *logits_hw, device=device)
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        if how == "full":
            resize_logits(logits, label_hw).argmax(1)
        else:
            resized_argmax(logits, label_hw)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / GiB
    code = ("from benchmarks.speed.data import score_peak_rss; "
            f"print(score_peak_rss({how!r}, {tuple(logits_hw)}, {tuple(label_hw)}, {num_classes}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    return float(done.stdout.strip().splitlines()[-1])


def bench_scoring(sizes: dict[str, tuple[tuple[int, int], tuple[int, int]]], *, device: torch.device,
                  num_classes: int = 19, reps: int = 3, memory: bool = True) -> list[dict[str, Any]]:
    """``sizes`` = {name: (scores (h, w), native label (H, W))}: one-shot resize + argmax against
    ``resized_argmax``: identical labels, median seconds, peak added memory (GiB)."""
    rows = []
    for name, (logits_hw, label_hw) in sizes.items():
        logits = torch.randn(1, num_classes, *logits_hw, generator=torch.Generator().manual_seed(1)).to(device)
        full = resize_logits(logits, label_hw).argmax(1)
        tiled = resized_argmax(logits, label_hw)
        identical = bool(torch.equal(full, tiled))
        del full, tiled
        times: dict[str, list[float]] = {"full": [], "tiled": []}
        clock = time.perf_counter if device.type == "cuda" else time.process_time  # CPU time: robust to load
        for _ in range(reps):
            for how in ("full", "tiled"):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = clock()
                out = (resize_logits(logits, label_hw).argmax(1) if how == "full"
                       else resized_argmax(logits, label_hw))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[how].append(clock() - t0)
                del out
        row = {"split": name, "scores_hw": list(logits_hw), "label_hw": list(label_hw), "identical": identical,
               "full_ms": statistics.median(times["full"]) * 1e3, "tiled_ms": statistics.median(times["tiled"]) * 1e3,
               "full_tensor_gib": num_classes * label_hw[0] * label_hw[1] * 4 / GiB}
        if memory:
            row["full_peak_gib"] = _peak_gib("full", logits_hw, label_hw, num_classes, device)
            row["tiled_peak_gib"] = _peak_gib("tiled", logits_hw, label_hw, num_classes, device)
        rows.append(row)
        del logits
    return rows


# ---------------------------------------------------------------------------------------------- loader throughput
def bench_loader(dataset: Any, *, batch_size: int, workers: Sequence[int], batches: int = 8,
                 pin_memory: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """Images/s of ``dataset`` through a DataLoader (the trainer's collate), per worker count;
    ``steady_img_per_s`` leaves out the batches made while the workers started."""
    rows = []
    for k in workers:
        n_batches = max(int(batches), 3 * k + 2)
        items = [(i % len(dataset), seed * 1_000_003 + i) for i in range(n_batches * batch_size)]
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=items, collate_fn=collate,
                                             num_workers=k, pin_memory=pin_memory, persistent_workers=False,
                                             drop_last=True, prefetch_factor=4 if k else None)
        t0 = time.perf_counter()
        stamps = []
        for batch in loader:
            assert batch["image"].shape[0] == batch_size
            stamps.append(time.perf_counter())
        skip = min(max(k, 1), len(stamps) - 1)
        steady = ((len(stamps) - skip) * batch_size / (stamps[-1] - stamps[skip - 1])
                  if len(stamps) > skip else math.nan)
        rows.append({"workers": k, "batches": len(stamps), "first_batch_s": stamps[0] - t0,
                     "img_per_s": len(stamps) * batch_size / (stamps[-1] - t0), "steady_img_per_s": steady,
                     "cpu_count": os.cpu_count()})
    return rows
