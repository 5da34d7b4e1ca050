"""Rare-class sampling (RCS, DAFormer-style) as a deterministic training sampler.

What DAFormer calls rare-class sampling, as used by tqdm (``class_temp=100, min_pixels=3000,
min_crop_ratio=0.5``):

1. class frequencies ``f_c`` = pixels of class c / labelled pixels, over the whole training split, computed
   once from the labels (:func:`class_pixel_counts`, cached on disk keyed by the dataset fingerprint);
2. a class is drawn with ``P(c) = softmax((1 - f_c) / T)`` (``T = class_temp``; a large T is nearly
   uniform over classes, a small T favours rare classes);
3. an image is drawn uniformly among those holding at least ``min_pixels`` pixels of c;
4. its augmentation (random crop) is retried up to ``max_crop_tries`` times until the crop holds at least
   ``min_pixels * min_crop_ratio`` pixels of c (:class:`RareClassCropDataset`).

Classes no image holds ``min_pixels`` of are never drawn. The data order stays a pure function of
``(seed, global sample index)`` (as ``runners.train.DeterministicSampler``), so a resumed run sees exactly
the batches of an uninterrupted one and DDP ranks slice one stream.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch.utils.data

from .fingerprint import LabelDigestCache, default_cache_dir, fingerprint_pairs
from .labels import NUM_CLASSES

__all__ = [
    "RareClassSampling",
    "RareClassStats",
    "RareClassSampler",
    "RareClassCropDataset",
    "class_pixel_counts",
    "sample_seed",
]

_RCS_TAG = 0x5C5  # separates the RCS random stream from the augmentation seeds


@dataclass(frozen=True)
class RareClassSampling:
    """RCS settings (``TrainRecipe.rare_class_sampling`` as a dict holds these keys; ``temperature`` is
    accepted for ``class_temp``)."""

    class_temp: float = 0.01
    min_pixels: int = 3000
    min_crop_ratio: float = 0.5
    max_crop_tries: int = 10

    def __post_init__(self) -> None:
        if not self.class_temp > 0:
            raise ValueError(f"rare-class sampling: class_temp must be > 0, got {self.class_temp!r}")
        if self.min_pixels < 0 or not 0 <= self.min_crop_ratio <= 1 or self.max_crop_tries < 1:
            raise ValueError(f"rare-class sampling: bad settings {self}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RareClassSampling:
        d = dict(d)
        if "temperature" in d:
            d["class_temp"] = d.pop("temperature")
        unknown = sorted(set(d) - {"class_temp", "min_pixels", "min_crop_ratio", "max_crop_tries"})
        if unknown:
            raise ValueError(f"rare-class sampling: unknown keys {unknown}; expected class_temp, min_pixels, "
                             "min_crop_ratio, max_crop_tries")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def min_crop_pixels(self) -> float:
        return self.min_pixels * self.min_crop_ratio


def sample_seed(seed: int, g: int) -> int:
    """The augmentation seed of global sample ``g`` (the same as ``DeterministicSampler``'s)."""
    return int(np.random.SeedSequence([seed, g]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------- statistics
def _parts(dataset: Any) -> list[Any]:
    return list(getattr(dataset, "parts", None) or [dataset])


def _decoder_key(part: Any) -> str:
    """What turns label bytes into train ids for this part: class, dataset name and label table."""
    lut = getattr(part, "label_lut", None)
    lut_hash = hashlib.sha256(np.asarray(lut).tobytes()).hexdigest()[:12] if lut is not None else "none"
    return f"{type(part).__name__}-{part.name}-{lut_hash}"


def _count_one(part: Any, pair: Any) -> np.ndarray:
    if pair.label is None:
        return np.zeros(NUM_CLASSES, np.int64)
    label = part.decode_label(pair.label)
    return np.bincount(label.ravel(), minlength=256)[:NUM_CLASSES].astype(np.int64)


def class_pixel_counts(dataset: Any, *, cache_dir: str | Path | None = None, use_cache: bool = True,
                       workers: int = 4, log: Callable[[str], None] | None = None) -> np.ndarray:
    """int64 [N, 19]: pixels of each train id in each sample's label (``dataset.pairs`` order).

    Works for a ``SegmentationDataset`` or a ``ConcatSegmentationDataset`` (parts are counted, and cached,
    separately). Cached as ``<cache>/class_stats/<fingerprint>-<decoder>.npy``, so the labels of a split
    are decoded once per machine.
    """
    blocks = []
    digests = LabelDigestCache(cache_dir) if use_cache else None
    for part in _parts(dataset):
        path = None
        if use_cache:
            fp = fingerprint_pairs(part.pairs, cache=digests)
            path = default_cache_dir(cache_dir) / "class_stats" / f"{fp}-{_decoder_key(part)}.npy"
            if path.is_file():
                try:
                    counts = np.load(path, allow_pickle=False)
                    if counts.shape == (len(part.pairs), NUM_CLASSES):
                        blocks.append(counts)
                        continue
                except (OSError, ValueError):
                    pass
        if log is not None:
            log(f"rare-class sampling: counting class pixels of {part.name}/{part.split} ({len(part.pairs)} labels)")
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            rows = list(pool.map(lambda pair: _count_one(part, pair), part.pairs))
        counts = np.stack(rows) if rows else np.zeros((0, NUM_CLASSES), np.int64)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
                with os.fdopen(fd, "wb") as f:
                    np.save(f, counts)
                os.replace(tmp, path)
            except OSError:
                pass
        blocks.append(counts)
    if digests is not None:
        digests.save()
    return np.concatenate(blocks) if blocks else np.zeros((0, NUM_CLASSES), np.int64)


@dataclass(frozen=True)
class RareClassStats:
    """Class frequencies, sampling probabilities and candidate images of one training split."""

    frequencies: np.ndarray  # float64 [19]: share of labelled pixels
    classes: np.ndarray  # int64 [K]: classes that can be drawn
    probabilities: np.ndarray  # float64 [K]: P(class) for ``classes``
    candidates: tuple[np.ndarray, ...]  # per drawable class: indices of images with >= min_pixels of it
    config: RareClassSampling

    @classmethod
    def from_counts(cls, counts: np.ndarray, config: RareClassSampling) -> RareClassStats:
        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim != 2 or counts.shape[1] != NUM_CLASSES:
            raise ValueError(f"class pixel counts must be [N, {NUM_CLASSES}], got {counts.shape}")
        total = counts.sum(0).astype(np.float64)
        freq = total / total.sum() if total.sum() > 0 else np.zeros(NUM_CLASSES)
        classes, cands = [], []
        for c in range(NUM_CLASSES):
            idx = np.flatnonzero(counts[:, c] >= max(1, config.min_pixels))
            if idx.size:
                classes.append(c)
                cands.append(idx.astype(np.int64))
        if not classes:
            raise ValueError(
                f"rare-class sampling: no image holds >= {config.min_pixels} pixels of any class; lower "
                "min_pixels (it counts pixels at the label's native resolution)")
        logits = (1.0 - freq[classes]) / config.class_temp
        p = np.exp(logits - logits.max())
        return cls(freq, np.asarray(classes, np.int64), p / p.sum(), tuple(cands), config)

    @classmethod
    def from_dataset(cls, dataset: Any, config: RareClassSampling, **kwargs: Any) -> RareClassStats:
        return cls.from_counts(class_pixel_counts(dataset, **kwargs), config)

    def class_probabilities(self) -> dict[int, float]:
        return {int(c): float(p) for c, p in zip(self.classes, self.probabilities)}


# ---------------------------------------------------------------------------------------------- sampler
class RareClassSampler(torch.utils.data.Sampler):
    """Yields ``(index, aug_seed, class)`` for iterations ``start_iter .. iterations-1`` (this rank's share).

    Global sample ``g = it * batch * world + j`` draws its class and image from a generator seeded with
    ``(seed, g)`` only, and its augmentation seed is ``sample_seed(seed, g)``: the stream is a pure function
    of (seed, g), like ``runners.train.DeterministicSampler`` (same constructor after ``stats``).
    """

    def __init__(self, stats: RareClassStats, num_items: int, batch_size: int, iterations: int, seed: int,
                 start_iter: int = 0, rank: int = 0, world_size: int = 1):
        if num_items == 0:
            raise ValueError("the training split is empty")
        top = max(int(c.max()) for c in stats.candidates)
        if top >= num_items:
            raise ValueError(f"rare-class statistics refer to image {top}, but the dataset has {num_items} items")
        self.stats, self.num_items, self.batch_size, self.iterations = stats, num_items, batch_size, iterations
        self.seed, self.start_iter, self.rank, self.world_size = seed, start_iter, rank, world_size

    def draw(self, g: int) -> tuple[int, int, int]:
        """(image index, augmentation seed, class) of global sample ``g``."""
        rng = np.random.default_rng([self.seed, g, _RCS_TAG])
        k = int(rng.choice(len(self.stats.classes), p=self.stats.probabilities))
        cands = self.stats.candidates[k]
        return int(cands[int(rng.integers(len(cands)))]), sample_seed(self.seed, g), int(self.stats.classes[k])

    def global_batch(self, iteration: int) -> list[tuple[int, int, int]]:
        n = self.batch_size * self.world_size
        return [self.draw(iteration * n + j) for j in range(n)]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for it in range(self.start_iter, self.iterations):
            batch = self.global_batch(it)
            yield from batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def __len__(self) -> int:
        return (self.iterations - self.start_iter) * self.batch_size


class RareClassCropDataset(torch.utils.data.Dataset):
    """Wraps a training dataset so ``ds[(i, aug_seed, c)]`` retries the augmentation until the crop holds
    at least ``min_pixels * min_crop_ratio`` pixels of class ``c`` (at most ``max_crop_tries`` draws; the
    last draw is kept otherwise). Try k > 0 uses the seed ``SeedSequence([aug_seed, k])``. The image is
    decoded once. ``ds[(i, aug_seed)]`` and ``ds[i]`` pass through unchanged.
    """

    def __init__(self, dataset: Any, config: RareClassSampling) -> None:
        if getattr(dataset, "transform", None) is None:
            raise ValueError("RareClassCropDataset needs a dataset with a training transform")
        self.dataset, self.config = dataset, config
        self.name = getattr(dataset, "name", "")

    def __len__(self) -> int:
        return len(self.dataset)

    def __repr__(self) -> str:
        return f"RareClassCropDataset({self.dataset!r}, {self.config})"

    def __getitem__(self, index: Any) -> dict[str, Any]:
        if not (isinstance(index, tuple) and len(index) == 3):
            return self.dataset[index]
        i, seed, cls = (int(v) for v in index)
        raw = self.dataset.load(i)
        sample: dict[str, Any] = {}
        for k in range(self.config.max_crop_tries):
            s = seed if k == 0 else int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
            sample = self.dataset.transform(dict(raw), np.random.default_rng(s))
            if int((sample["label"] == cls).sum()) >= self.config.min_crop_pixels:
                break
        return sample
