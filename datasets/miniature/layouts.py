"""Writing the miniature benchmark in the official dataset layouts and label encodings, and the cache
folder that holds it (``ensure_miniature``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
from PIL import Image

from ..labels import CITYSCAPES_PALETTE
from .elements import ELEMENT_CITYSCAPES_ID, ELEMENT_MAPILLARY_ID, ELEMENT_SYNTHIA_ID, ELEMENT_TRAIN_ID
from .scene import CONDITIONS, STYLES, render_scene

MINIATURE_VERSION = "3"
"""Bump whenever the generator's output changes (it is part of the cache folder name)."""

MINIATURE_DOMAINS: tuple[str, ...] = ("gta5", "cityscapes", "bdd100k", "mapillary", "acdc", "synthia")
MINIATURE_BASE_COUNTS: dict[str, dict[str, int]] = {
    "gta5": {"train": 160, "val": 40, "test": 40},
    "cityscapes": {"train": 80, "val": 40},
    "bdd100k": {"val": 40},
    "mapillary": {"validation": 40},
    "acdc": {"fog/val": 10, "night/val": 10, "rain/val": 10, "snow/val": 10},
    "synthia": {"train": 40, "val": 20},
}
"""Images per split at ``count_scale=1`` (gta5 'all' = train+val+test)."""

MINIATURE_TEST_COUNTS: dict[str, dict[str, int]] = {
    "acdc": {"fog/test": 5, "night/test": 5, "rain/test": 5, "snow/test": 5},
}
"""Splits without public ground truth (images only), as on the real benchmark: ACDC test is what a
server submission (``benchmarks.export``) is made of. Scaled like ``MINIATURE_BASE_COUNTS``."""

_MARKER = "MINIATURE.json"


def _write_rgb_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f"cannot write {path}")


def _write_jpg(path: Path, rgb: np.ndarray, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]):
        raise OSError(f"cannot write {path}")


def _write_index_png(path: Path, ids: np.ndarray, palette: np.ndarray | None) -> None:
    """8-bit PNG of ids: palette mode (P) when a palette is given, else gray (L)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = np.ascontiguousarray(ids, dtype=np.uint8)
    im = Image.frombytes("P" if palette is not None else "L", (ids.shape[1], ids.shape[0]), ids.tobytes())
    if palette is not None:
        im.putpalette(palette.astype(np.uint8).ravel().tolist())
    im.save(path, compress_level=1)


def _mapillary_palette() -> np.ndarray:
    """A fixed 66-colour palette for the Mapillary label PNGs (only the indices carry meaning)."""
    pal = np.zeros((256, 3), np.uint8)
    g = np.random.default_rng(66)
    pal[:66] = g.integers(0, 256, (66, 3))
    pal[65] = 0
    return pal


_MAPILLARY_PALETTE = _mapillary_palette()
_MAPILLARY_PALETTE.setflags(write=False)


@dataclass(frozen=True)
class MiniatureParams:
    """What to generate: ``seed``; ``count_scale`` multiplies ``MINIATURE_BASE_COUNTS`` (min 1 per
    split); ``domains`` selects domains."""

    seed: int = 0
    count_scale: float = 1.0
    domains: tuple[str, ...] = MINIATURE_DOMAINS

    def __post_init__(self) -> None:
        bad = [d for d in self.domains if d not in MINIATURE_DOMAINS]
        if bad:
            raise ValueError(f"unknown miniature domain(s) {bad}; choose from {MINIATURE_DOMAINS}")
        if self.count_scale <= 0:
            raise ValueError("count_scale must be > 0")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["domains"] = list(self.domains)
        return d

    def hash(self) -> str:
        blob = json.dumps({"version": MINIATURE_VERSION, **self.to_json()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def miniature_counts(params: MiniatureParams | None = None) -> dict[str, dict[str, int]]:
    """Images per domain and split for ``params``."""
    p = params or MiniatureParams()
    return {d: {s: max(1, int(round(n * p.count_scale))) for s, n in MINIATURE_BASE_COUNTS[d].items()}
            for d in p.domains}


def miniature_test_counts(params: MiniatureParams | None = None) -> dict[str, dict[str, int]]:
    """Images per domain and ground-truth-less test split for ``params``."""
    p = params or MiniatureParams()
    return {d: {s: max(1, int(round(n * p.count_scale))) for s, n in MINIATURE_TEST_COUNTS[d].items()}
            for d in p.domains if d in MINIATURE_TEST_COUNTS}


def _seed(params: MiniatureParams, domain: str, split: str, i: int) -> list[int]:
    tag = int.from_bytes(hashlib.sha256(f"{domain}/{split}".encode()).digest()[:4], "little")
    return [params.seed, tag, i]


def _gen_gta5(root: Path, params: MiniatureParams, counts: dict[str, int]) -> None:
    base = root / "gta"
    total = sum(counts.values())
    order = np.random.default_rng([params.seed, 5]).permutation(total)
    names = [f"{i + 1:05d}" for i in range(total)]
    for i, name in enumerate(names):
        img, lab = render_scene(_seed(params, "gta5", "all", i), "gta5", feature=i)
        _write_rgb_png(base / "images" / f"{name}.png", img)
        _write_index_png(base / "labels" / f"{name}.png", ELEMENT_CITYSCAPES_ID[lab], CITYSCAPES_PALETTE)
    start = 0
    for split in ("train", "val", "test"):
        n = counts.get(split, 0)
        chosen = sorted(names[j] for j in order[start:start + n])
        start += n
        (base / f"gtav_split_{split}.txt").write_text("".join(f"{c}.png\n" for c in chosen))


_CS_CITIES = {"train": ("aachen", "bochum", "bremen", "cologne"), "val": ("frankfurt", "lindau", "munster")}


def _gen_cityscapes(root: Path, params: MiniatureParams, counts: dict[str, int]) -> None:
    base = root / "cityscapes"
    for split, n in counts.items():
        cities = _CS_CITIES[split]
        for i in range(n):
            city = cities[i % len(cities)]
            stem = f"{city}_{i // len(cities):06d}_000019"
            img, lab = render_scene(_seed(params, "cityscapes", split, i), "cityscapes", feature=i)
            _write_rgb_png(base / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", img)
            _write_index_png(base / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ELEMENT_CITYSCAPES_ID[lab], None)


def _gen_bdd100k(root: Path, params: MiniatureParams, counts: dict[str, int]) -> None:
    base = root / "bdd100k"
    st = STYLES["bdd100k"]
    for split, n in counts.items():
        g = np.random.default_rng([params.seed, 100, len(split)])
        for i in range(n):
            a, b = g.integers(0, 2**32, 2)
            stem = f"{int(a):08x}-{int(b):08x}"
            img, lab = render_scene(_seed(params, "bdd100k", split, i), st, feature=i)
            _write_jpg(base / "images" / "10k" / split / f"{stem}.jpg", img, st.jpeg_quality or 75)
            _write_index_png(base / "labels" / "sem_seg" / "masks" / split / f"{stem}.png", ELEMENT_TRAIN_ID[lab], None)


_KEY_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))


def _gen_mapillary(root: Path, params: MiniatureParams, counts: dict[str, int]) -> None:
    base = root / "mapillary"
    st = STYLES["mapillary"]
    for split, n in counts.items():
        g = np.random.default_rng([params.seed, 66, len(split)])
        for i in range(n):
            key = "".join(_KEY_ALPHABET[g.integers(0, len(_KEY_ALPHABET), 22)])
            img, lab = render_scene(_seed(params, "mapillary", split, i), st, feature=i)
            _write_jpg(base / split / "images" / f"{key}.jpg", img, st.jpeg_quality or 85)
            _write_index_png(base / split / "labels" / f"{key}.png", ELEMENT_MAPILLARY_ID[lab], _MAPILLARY_PALETTE)


def _gen_acdc(root: Path, params: MiniatureParams, counts: dict[str, int]) -> None:
    base = root / "acdc"
    for split_key, n in counts.items():
        cond, split = split_key.split("/")
        for i in range(n):
            seq = f"GOPR{400 + CONDITIONS.index(cond) * 100 + i // 5:04d}"
            stem = f"{seq}_frame_{(i % 5) * 37 + 1:06d}"
            img, lab = render_scene(_seed(params, "acdc", split_key, i), "acdc", feature=i + CONDITIONS.index(cond),
                                    condition=cond)
            _write_rgb_png(base / "rgb_anon" / cond / split / seq / f"{stem}_rgb_anon.png", img)
            gt = base / "gt" / cond / split / seq
            _write_index_png(gt / f"{stem}_gt_labelTrainIds.png", ELEMENT_TRAIN_ID[lab], None)
            _write_index_png(gt / f"{stem}_gt_labelIds.png", ELEMENT_CITYSCAPES_ID[lab], None)


def _gen_acdc_test(root: Path, params: MiniatureParams, counts: dict[str, int]) -> None:
    """ACDC test images (``rgb_anon/<cond>/test``) without ground truth, like the official release."""
    base = root / "acdc"
    for split_key, n in counts.items():
        cond, split = split_key.split("/")
        for i in range(n):
            seq = f"GOPR{900 + CONDITIONS.index(cond) * 10 + i // 5:04d}"
            stem = f"{seq}_frame_{(i % 5) * 41 + 3:06d}"
            img, _ = render_scene(_seed(params, "acdc", split_key, i), "acdc", feature=i + 2 * CONDITIONS.index(cond),
                                  condition=cond)
            _write_rgb_png(base / "rgb_anon" / cond / split / seq / f"{stem}_rgb_anon.png", img)


def _gen_synthia(root: Path, params: MiniatureParams, counts: dict[str, int]) -> None:
    base = root / "synthia"
    k = 0
    for split, n in counts.items():
        names = []
        for i in range(n):
            name = f"{k:07d}"
            k += 1
            names.append(name)
            img, lab = render_scene(_seed(params, "synthia", split, i), "synthia", feature=i)
            _write_rgb_png(base / "RGB" / f"{name}.png", img)
            gt = np.zeros(lab.shape + (3,), np.uint16)
            gt[..., 2] = ELEMENT_SYNTHIA_ID[lab]  # R channel of a BGR write = class id
            gt[..., 1] = (lab.astype(np.uint16) * 7) % 23  # stand-in for instance ids
            path = base / "GT" / "LABELS" / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), gt, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        (base / f"synthia_split_{split}.txt").write_text("".join(f"{x}.png\n" for x in names))


_GENERATORS: dict[str, Callable[[Path, MiniatureParams, dict[str, int]], None]] = {
    "gta5": _gen_gta5, "cityscapes": _gen_cityscapes, "bdd100k": _gen_bdd100k,
    "mapillary": _gen_mapillary, "acdc": _gen_acdc, "synthia": _gen_synthia,
}


def generate_miniature(out_dir: str | Path, params: MiniatureParams | None = None) -> dict[str, Any]:
    """Write the miniature benchmark into ``out_dir`` (created; must be empty) and return the
    manifest also written to ``out_dir/MINIATURE.json``. No caching; see ``ensure_miniature``."""
    p = params or MiniatureParams()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"miniature output folder {out} is not empty")
    counts = miniature_counts(p)
    test_counts = miniature_test_counts(p)
    for domain in p.domains:
        _GENERATORS[domain](out, p, counts[domain])
    if "acdc" in test_counts:
        _gen_acdc_test(out, p, test_counts["acdc"])
    manifest = {
        "benchmark": "dgss-miniature",
        "miniature": True,
        "version": MINIATURE_VERSION,
        "param_hash": p.hash(),
        "params": p.to_json(),
        "counts": counts,
        "test_counts": test_counts,
        "note": "procedurally generated street scenes in the official dataset layouts; "
                "not real data, scores are not comparable to papers",
    }
    (out / _MARKER).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _cache_base(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("DGSS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dgss"


def miniature_root(cache_dir: str | Path | None = None, params: MiniatureParams | None = None) -> Path:
    """Where the miniature benchmark lives: ``<cache>/miniature/<version>-<param hash>``; the cache is
    ``cache_dir``, else ``$DGSS_CACHE_DIR``, else ``~/.cache/dgss``. Nothing is generated."""
    p = params or MiniatureParams()
    return _cache_base(cache_dir) / "miniature" / f"{MINIATURE_VERSION}-{p.hash()}"


def is_miniature_root(path: str | Path) -> bool:
    """True when ``path`` holds a complete miniature benchmark (its ``MINIATURE.json`` marker)."""
    marker = Path(path) / _MARKER
    try:
        return bool(json.loads(marker.read_text()).get("miniature"))
    except (OSError, ValueError):
        return False


def _remove_stale_temps(root: Path, max_age_s: float = 6 * 3600) -> None:
    """Delete temp folders left behind by killed generations (older than ``max_age_s``)."""
    now = time.time()
    for prefix in (f".{root.name}.tmp-", f".{root.name}.old-"):
        for stale in root.parent.glob(prefix + "*"):
            try:
                if now - stale.stat().st_mtime > max_age_s:
                    shutil.rmtree(stale, ignore_errors=True)
            except OSError:
                pass


def ensure_miniature(cache_dir: str | Path | None = None, *, force: bool = False,
                     params: MiniatureParams | None = None) -> Path:
    """Return the miniature data root, generating it first if missing (or when ``force``).

    Generation goes to a temporary sibling folder that is renamed into place, so readers never see a
    half-written root and two concurrent processes cannot corrupt it (the loser discards its copy).
    """
    p = params or MiniatureParams()
    root = miniature_root(cache_dir, p)
    if is_miniature_root(root) and not force:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    os.chmod(tmp, 0o755)  # mkdtemp creates 0700; the cache may be shared
    try:
        generate_miniature(tmp, p)
        if root.exists() and (force or not is_miniature_root(root)):
            trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            try:
                os.replace(root, trash / "old")
            except FileNotFoundError:
                pass  # another process moved it first
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:
            if not is_miniature_root(root):  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
