"""Dataset fingerprints: a stable hash of a split's sorted file list and label bytes.

Two results on "Cityscapes val" can be shown to be on the same files when their fingerprints are equal.
The fingerprint of a split is the sha256 (first 16 hex characters) of one line per sample, sorted::

    <sample name> TAB <image file name> TAB <label file name or -> TAB <sha256 of the label bytes or ->

File *names* (not paths) are used, so the fingerprint does not depend on where the data root is mounted
or on which package layout holds the same files (Mapillary v1.2 vs v2.0). Image bytes are not hashed
(re-encoding an image keeps the fingerprint); one changed label byte changes it.

Hashing 25k GTA5 labels takes minutes, so label digests are cached on disk by (absolute path, size,
mtime): ``<cache>/fingerprints/label_sha256.json``, where ``<cache>`` is ``cache_dir``, else
``$DGSS_CACHE_DIR``, else ``~/.cache/dgss``. The cache is only an accelerator: deleting it changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .base import SamplePair

__all__ = [
    "FINGERPRINT_VERSION",
    "LabelDigestCache",
    "default_cache_dir",
    "file_sha256",
    "fingerprint_pairs",
    "split_fingerprint",
    "dataset_fingerprints",
]

FINGERPRINT_VERSION = "dgss-fingerprint-v1"
_CACHE_FILE = "label_sha256.json"


def default_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$DGSS_CACHE_DIR``, else ``~/.cache/dgss`` (the miniature benchmark's cache)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("DGSS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dgss"


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class LabelDigestCache:
    """sha256 of label files keyed by (absolute path, size, mtime_ns), persisted as one JSON file.

    ``digest(path)`` returns the cached value when size and mtime are unchanged, else hashes the file.
    ``save()`` merges with what other processes wrote meanwhile and replaces the file atomically.
    """

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.path = default_cache_dir(cache_dir) / "fingerprints" / _CACHE_FILE
        self.entries: dict[str, list] = self._read()
        self.dirty = False
        self.hashed = 0  # files actually read (not served from the cache); for tests and logs

    def _read(self) -> dict[str, list]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def lookup(self, path: Path) -> tuple[str | None, list]:
        """(cached digest or None, current [size, mtime_ns])."""
        st = os.stat(path)
        key = [st.st_size, st.st_mtime_ns]
        entry = self.entries.get(str(Path(path).absolute()))
        if entry and entry[:2] == key:
            return entry[2], key
        return None, key

    def store(self, path: Path, stat_key: list, digest: str) -> None:
        self.entries[str(Path(path).absolute())] = [*stat_key, digest]
        self.dirty = True

    def digests(self, paths: Sequence[Path], workers: int = 4) -> list[str]:
        """Digests of ``paths`` (in order); uncached files are hashed in a small thread pool."""
        out: list[str | None] = []
        todo: list[tuple[int, Path, list]] = []
        for i, p in enumerate(paths):
            d, key = self.lookup(p)
            out.append(d)
            if d is None:
                todo.append((i, p, key))
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
                for (i, p, key), d in zip(todo, pool.map(lambda t: file_sha256(t[1]), todo)):
                    out[i] = d
                    self.store(p, key, d)
            self.hashed += len(todo)
        return [d for d in out if d is not None]

    def digest(self, path: Path) -> str:
        return self.digests([path])[0]

    def save(self) -> None:
        if not self.dirty:
            return
        merged = {**self._read(), **self.entries}
        with contextlib.suppress(OSError):  # a read-only cache only costs speed
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".label_sha256.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(merged, f, separators=(",", ":"))
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self.entries, self.dirty = merged, False


def fingerprint_pairs(pairs: Iterable[SamplePair], *, cache: LabelDigestCache | None = None,
                      cache_dir: str | Path | None = None) -> str:
    """Fingerprint (16 hex characters) of a list of sample pairs; see the module docstring."""
    pairs = list(pairs)
    own = cache is None
    cache = cache or LabelDigestCache(cache_dir)
    labelled = [p.label for p in pairs if p.label is not None]
    digests = iter(cache.digests(labelled))
    lines = []
    for p in pairs:
        if p.label is None:
            lines.append(f"{p.name}\t{p.image.name}\t-\t-\n")
        else:
            lines.append(f"{p.name}\t{p.image.name}\t{p.label.name}\t{next(digests)}\n")
    if own:
        cache.save()
    h = hashlib.sha256(FINGERPRINT_VERSION.encode() + b"\n")
    for line in sorted(lines):
        h.update(line.encode("utf-8"))
    return h.hexdigest()[:16]


def split_fingerprint(name: str, split: str, data_root: str | Path, *, cache_dir: str | Path | None = None,
                      cache: LabelDigestCache | None = None) -> str:
    """Fingerprint of split ``split`` of dataset ``name`` under ``data_root`` (raises the loaders' layout
    errors when the split is incomplete)."""
    from .loaders import list_pairs

    return fingerprint_pairs(list_pairs(name, split, data_root), cache=cache, cache_dir=cache_dir)


def dataset_fingerprints(splits: Iterable[tuple[str, str]], data_root: str | Path, *,
                         cache_dir: str | Path | None = None,
                         log: Callable[[str], None] | None = None) -> dict[str, str]:
    """``{"<dataset>/<split>": fingerprint}`` for each (dataset, split), in first-seen order. ``log`` hears
    about splits whose labels had to be hashed (the first time only)."""
    cache = LabelDigestCache(cache_dir)
    out: dict[str, str] = {}
    try:
        for name, split in splits:
            key = f"{name}/{split}"
            if key not in out:
                before = cache.hashed
                out[key] = split_fingerprint(name, split, data_root, cache=cache)
                if log is not None and cache.hashed > before:
                    log(f"fingerprint {key} = {out[key]} (hashed {cache.hashed - before} label files; cached in "
                        f"{cache.path})")
    finally:
        cache.save()
    return out
