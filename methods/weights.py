"""The official pretrained files the methods start from, and the one folder that holds them.

The harness never downloads weights. Researchers place the official files, under their official names, in
one folder given by ``--weights-dir`` or the ``DGSS_WEIGHTS`` environment variable. This module knows
which files exist (``OFFICIAL_WEIGHTS``), finds them (``locate``), reports what a folder holds
(``weights_report``), reads a checkpoint file whatever its container (``read_state_dict``), and carries
the ``KeyReport`` every official-file loader returns.

sha256 cache: hashing a folder of GB files takes minutes, so ``weights_report`` caches digests in one
small JSON file in the user cache folder (``$DGSS_CACHE_DIR`` or ``$XDG_CACHE_HOME/dgss`` or
``~/.cache/dgss``; file ``sha256.json``), keyed by absolute path and valid while (size, mtime_ns) are
unchanged. The weights folder itself is never written to (it is often a read-only shared folder).
A cache that cannot be read or written is silently skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

WEIGHTS_ENV = "DGSS_WEIGHTS"
WEIGHTS_FLAG = "--weights-dir"
CACHE_ENV = "DGSS_CACHE_DIR"


# --------------------------------------------------------------------------- the registry of official files
@dataclass(frozen=True)
class OfficialWeights:
    """One official pretrained file, under the name its authors released it with."""

    file: str
    description: str
    source: str  # where researchers get it
    used_by: tuple[str, ...]  # method names
    sha256: str | None = None  # published digest, where the publisher gives one


def _openai_url(digest: str, name: str) -> str:
    # OpenAI's CLIP release puts the file's sha256 in the download path (and its loader checks it).
    return f"https://openaipublic.azureedge.net/clip/models/{digest}/{name}"


_OPENAI_DIGESTS = {
    "ViT-B-16.pt": "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
    "ViT-L-14-336px.pt": "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
    "RN50.pt": "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
    "RN101.pt": "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599",
}

OFFICIAL_WEIGHTS: dict[str, OfficialWeights] = {
    w.file: w
    for w in (
        OfficialWeights(
            "dinov2_vitl14_pretrain.pth",
            "DINOv2 ViT-L/14 backbone (plain state dict, timm-convertible)",
            "facebookresearch/dinov2 release: "
            "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth",
            ("rein", "set", "vireo"),
        ),
        OfficialWeights(
            "EVA02_CLIP_L_336_psz14_s6B.pt",
            "EVA02-CLIP-L/14 at 336 px (image + text towers, `visual.*` / `text.*` keys)",
            "baaivision/EVA (EVA-CLIP) release: Hugging Face QuanSun/EVA-CLIP, file EVA02_CLIP_L_336_psz14_s6B.pt",
            ("tqdm",),
        ),
        OfficialWeights(
            "EVA02_CLIP_L_psz14_s4B.pt",
            "EVA02-CLIP-L/14 at 224 px (image + text towers, `visual.*` / `text.*` keys)",
            "baaivision/EVA (EVA-CLIP) release: Hugging Face QuanSun/EVA-CLIP, file EVA02_CLIP_L_psz14_s4B.pt",
            ("vltseg",),
        ),
        OfficialWeights(
            "ViT-B-16.pt",
            "OpenAI CLIP ViT-B/16 (TorchScript archive, fp16; image + text towers)",
            "openai/CLIP release: " + _openai_url(_OPENAI_DIGESTS["ViT-B-16.pt"], "ViT-B-16.pt"),
            ("tqdm", "vltseg"),
            _OPENAI_DIGESTS["ViT-B-16.pt"],
        ),
        OfficialWeights(
            "ViT-L-14-336px.pt",
            "OpenAI CLIP ViT-L/14@336px (TorchScript archive, fp16); Vireo uses its text tower",
            "openai/CLIP release: " + _openai_url(_OPENAI_DIGESTS["ViT-L-14-336px.pt"], "ViT-L-14-336px.pt"),
            ("vireo",),
            _OPENAI_DIGESTS["ViT-L-14-336px.pt"],
        ),
        OfficialWeights(
            "RN50.pt",
            "OpenAI CLIP ResNet-50 (TorchScript archive, fp16; image + text towers)",
            "openai/CLIP release: " + _openai_url(_OPENAI_DIGESTS["RN50.pt"], "RN50.pt"),
            ("famix",),
            _OPENAI_DIGESTS["RN50.pt"],
        ),
        OfficialWeights(
            "RN101.pt",
            "OpenAI CLIP ResNet-101 (TorchScript archive, fp16; image + text towers)",
            "openai/CLIP release: " + _openai_url(_OPENAI_DIGESTS["RN101.pt"], "RN101.pt"),
            ("famix",),
            _OPENAI_DIGESTS["RN101.pt"],
        ),
        OfficialWeights(
            "depth_anything_v2_vitl.pth",
            "Depth-Anything-V2 ViT-L (DINOv2-L encoder `pretrained.*` + DPT head); Vireo uses the encoder",
            "DepthAnything/Depth-Anything-V2 release: Hugging Face depth-anything/Depth-Anything-V2-Large, "
            "file depth_anything_v2_vitl.pth",
            ("vireo",),
        ),
    )
}


# --------------------------------------------------------------------------- key reports
@dataclass
class KeyReport:
    """What loading a checkpoint into a module did.

    ``missing``: module keys the checkpoint did not fill; ``unexpected``: checkpoint keys that matched
    nothing; ``converted``: keys that were renamed/reshaped on the way (with a note); ``ignored``:
    checkpoint keys skipped on purpose (e.g. the vision tower when loading a text tower).
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def summary(self, limit: int = 8) -> str:
        def few(keys: list[str]) -> str:
            shown = ", ".join(keys[:limit])
            return f"{shown}, ... (+{len(keys) - limit})" if len(keys) > limit else shown

        parts = [f"missing {len(self.missing)}" + (f" [{few(self.missing)}]" if self.missing else "")]
        parts.append(f"unexpected {len(self.unexpected)}" + (f" [{few(self.unexpected)}]" if self.unexpected else ""))
        parts.append(f"converted {len(self.converted)}" + (f" [{few(self.converted)}]" if self.converted else ""))
        if self.ignored:
            parts.append(f"ignored {len(self.ignored)}")
        return ("ok: " if self.ok() else "MISMATCH: ") + "; ".join(parts)


# --------------------------------------------------------------------------- locating files
def weights_dir_from(flag: str | os.PathLike | None) -> Path | None:
    """The weights folder: the ``--weights-dir`` value, else ``$DGSS_WEIGHTS``, else None."""
    if flag:
        return Path(flag).expanduser()
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env).expanduser() if env else None


def locate(weights_dir: Path | str | None, file: str) -> Path | None:
    """``weights_dir/file`` if it is a file, else None (the folder is flat: official names, no subfolders)."""
    if weights_dir is None:
        return None
    path = Path(weights_dir).expanduser() / file
    return path if path.is_file() else None


def _where_to_get(file: str) -> str:
    entry = OFFICIAL_WEIGHTS.get(file)
    return entry.source if entry else "the method's official release"


class MissingWeightsError(FileNotFoundError):
    """An official weights file is not in the weights folder (or no folder was given)."""

    def __init__(self, file: str, weights_dir: Path | str | None, *, used_by: Iterable[str] | None = None):
        self.file = file
        self.weights_dir = None if weights_dir is None else Path(weights_dir)
        entry = OFFICIAL_WEIGHTS.get(file)
        users = tuple(used_by) if used_by is not None else (entry.used_by if entry else ())
        if self.weights_dir is None:
            where = (f"no weights folder was given (pass {WEIGHTS_FLAG} DIR or set the {WEIGHTS_ENV} "
                     f"environment variable)")
        elif not self.weights_dir.is_dir():
            where = (f"the weights folder {self.weights_dir} does not exist (it comes from {WEIGHTS_FLAG} "
                     f"or ${WEIGHTS_ENV})")
        else:
            where = (f"it is not in the weights folder {self.weights_dir} (from {WEIGHTS_FLAG} or "
                     f"${WEIGHTS_ENV}); expected the file {self.weights_dir / file}")
        lines = [
            f"official weights file {file!r} not found: {where}.",
            f"Get it from {_where_to_get(file)} and put it, under exactly this name, directly in the "
            f"weights folder (no subfolders).",
        ]
        if users:
            lines.append(f"Needed by: {', '.join(users)}. To run without it (random initialisation, results "
                         f"not comparable to the paper) allow random initialisation explicitly.")
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- hashing and the folder report
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte pieces (no caching)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_hash_cache() -> Path:
    """``$DGSS_CACHE_DIR/sha256.json``, else ``$XDG_CACHE_HOME/dgss/sha256.json``, else ``~/.cache/dgss/...``."""
    base = os.environ.get(CACHE_ENV)
    if base:
        return Path(base).expanduser() / "sha256.json"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return root / "dgss" / "sha256.json"


def _read_cache(cache_file: Path) -> dict[str, Any]:
    try:
        data = json.loads(cache_file.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(cache_file: Path, data: dict[str, Any]) -> None:
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=".sha256-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, cache_file)
    except OSError:
        pass


def cached_sha256(path: str | os.PathLike, cache_file: Path | None) -> str:
    """sha256 of ``path``, reusing ``cache_file``'s entry when (size, mtime_ns) are unchanged."""
    path = Path(path).resolve()
    if cache_file is None:
        return sha256_file(path)
    st = path.stat()
    data = _read_cache(cache_file)
    entry = data.get(str(path))
    if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return str(entry["sha256"])
    digest = sha256_file(path)
    data = _read_cache(cache_file)  # re-read: another process may have added entries meanwhile
    data[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    _write_cache(cache_file, data)
    return digest


@dataclass
class WeightsStatus:
    """One row of the weights-folder report."""

    file: str
    expected_by: tuple[str, ...]
    found: bool
    path: str | None = None
    size: int | None = None
    sha256: str | None = None
    sha256_ok: bool | None = None  # None: not hashed, or no published digest to compare with


_DEFAULT_CACHE = object()


def weights_report(weights_dir: Path | str | None, files: Iterable[str] | None = None, *, hash_files: bool = True,
                   cache_file: Path | None | object = _DEFAULT_CACHE) -> list[WeightsStatus]:
    """Which official files (default: all of ``OFFICIAL_WEIGHTS``) the folder holds, with size and sha256.

    ``cache_file``: the sha256 cache (default ``default_hash_cache()``; None hashes every time).
    """
    cache = default_hash_cache() if cache_file is _DEFAULT_CACHE else cache_file
    names = list(OFFICIAL_WEIGHTS) if files is None else list(files)
    rows = []
    for name in names:
        entry = OFFICIAL_WEIGHTS.get(name)
        used_by = entry.used_by if entry else ()
        path = locate(weights_dir, name)
        if path is None:
            rows.append(WeightsStatus(name, used_by, False))
            continue
        digest = cached_sha256(path, cache) if hash_files else None  # type: ignore[arg-type]
        ok = None if digest is None or entry is None or entry.sha256 is None else digest == entry.sha256
        rows.append(WeightsStatus(name, used_by, True, str(path), path.stat().st_size, digest, ok))
    return rows


def _human(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def format_weights_report(statuses: Iterable[WeightsStatus]) -> str:
    """A plain-text table: file, used by, found, size, sha256 (first 16 hex; ``MISMATCH`` when it differs
    from the published digest)."""
    header = ("file", "used by", "found", "size", "sha256")
    rows = []
    for s in statuses:
        digest = "-" if s.sha256 is None else s.sha256[:16] + ("  MISMATCH" if s.sha256_ok is False else "")
        rows.append((s.file, ",".join(s.expected_by) or "-", "yes" if s.found else "NO", _human(s.size), digest))
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------- reading checkpoint files
def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a TorchScript zip (OpenAI CLIP ``*.pt``): it carries ``code/`` and ``constants.pkl``."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names)


def unwrap_state_dict(obj: Any) -> dict[str, Tensor]:
    """The tensor dict inside common checkpoint wrappers (``state_dict``/``model``/``module``), without a
    ``module.`` prefix (DDP)."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
            inner = next((obj[k] for k in ("state_dict", "model", "module") if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of an official checkpoint file on the CPU: TorchScript archive (OpenAI CLIP), ``torch.save``
    zip (memory-mapped, so unused towers are never read), legacy pickle, or ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if is_torchscript_archive(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, but OpenAI ships archives
            archive = torch.jit.load(str(path), map_location="cpu")
        return dict(archive.state_dict())
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as err:  # noqa: BLE001 - name the file and the likely cause
        raise ValueError(f"cannot read checkpoint {path}: {err}. Expected an official weights file "
                         f"(state dict, TorchScript archive or safetensors).") from err
    return unwrap_state_dict(obj)
