"""Evaluation protocols as data (decisions.md §2, §3; datasets.md §8.1; methods.md §7).

A :class:`Protocol` fixes everything that changes a DGSS number: the source training split, the target
splits (and the Mapillary 66->19 mapping), the keep-ratio test-time resize per split, the inference mode
(whole image or sliding window with its crop and stride), flips/scales, the aggregation over targets and
the split used as the rPD reference. Its :meth:`Protocol.content_hash` is stored with every result;
results with different hashes are never ranked together.

Protocols live in an immutable registry keyed by ``(name, variant)``. The harmonised default of each
protocol is the ``"default"`` variant; paper-faithful settings (``rein``, ``tqdm``, ``famix``,
``vltseg``, ...) are added as further variants, as data. Every protocol has a *miniature twin*
(:func:`miniature_twin`) for the built-in miniature benchmark: same structure, native-size test images
and a 256/170 sliding window, flagged ``miniature=True`` so its hash differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "DATASETS",
    "MAPILLARY_MAPPINGS",
    "MINIATURE_CROP",
    "MINIATURE_STRIDE",
    "InferenceSpec",
    "SplitSpec",
    "Protocol",
    "get_protocol",
    "list_protocols",
    "list_variants",
    "miniature_twin",
    "protocol_diff",
    "keep_ratio_size",
]

DATASETS: tuple[str, ...] = ("gta5", "synthia", "cityscapes", "bdd100k", "mapillary", "acdc")
"""Loader names a :class:`SplitSpec` may refer to (the ``datasets`` package's loaders)."""

MAPILLARY_MAPPINGS: tuple[str, ...] = ("robustnet", "rein")
"""Mapillary Vistas 66->19 mappings (datasets.md §5.2); ``robustnet`` is the default (decisions.md §4)."""

INFERENCE_MODES: tuple[str, ...] = ("whole", "slide")
AGGREGATIONS: tuple[str, ...] = ("mean",)

MINIATURE_CROP: tuple[int, int] = (256, 256)
MINIATURE_STRIDE: tuple[int, int] = (170, 170)


def _pair(value: Any, what: str) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a pair of ints (h, w) or None, got {value!r}") from None
    if int(a) != a or int(b) != b or int(a) <= 0 or int(b) <= 0:
        raise ValueError(f"{what} must hold two positive ints, got {value!r}")
    return (int(a), int(b))


@dataclass(frozen=True)
class InferenceSpec:
    """How logits are produced for one test image (mmseg ``test_cfg``).

    ``mode="slide"`` is mmseg's sliding-window inference with ``crop_size``/``stride`` as (h, w);
    ``mode="whole"`` runs the model once on the full (test-resized) image. ``flip`` adds the
    horizontally flipped image, ``scales`` are multi-scale factors; all passes are averaged.
    """

    mode: str = "slide"
    crop_size: tuple[int, int] | None = (512, 512)
    stride: tuple[int, int] | None = (341, 341)
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.mode not in INFERENCE_MODES:
            raise ValueError(f"InferenceSpec.mode must be one of {INFERENCE_MODES}, got {self.mode!r}")
        object.__setattr__(self, "crop_size", _pair(self.crop_size, "InferenceSpec.crop_size"))
        object.__setattr__(self, "stride", _pair(self.stride, "InferenceSpec.stride"))
        if self.mode == "slide" and (self.crop_size is None or self.stride is None):
            raise ValueError("InferenceSpec(mode='slide') needs crop_size and stride, e.g. (512, 512) and (341, 341)")
        object.__setattr__(self, "flip", bool(self.flip))
        scales = tuple(float(s) for s in self.scales)
        if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
            raise ValueError(f"InferenceSpec.scales must be non-empty positive floats, got {self.scales!r}")
        object.__setattr__(self, "scales", scales)


@dataclass(frozen=True)
class SplitSpec:
    """One dataset split as used by a protocol.

    ``key`` is the display name ("cityscapes", "bdd100k", "mapillary", "gta5"); ``dataset`` the loader
    name; ``test_resize`` the mmseg ``Resize(scale=(long, short), keep_ratio=True)`` applied to the
    image before inference (None = native size). The label always stays at native size.
    """

    key: str
    dataset: str
    split: str
    test_resize: tuple[int, int] | None = None
    mapillary_mapping: str | None = None
    num_classes_reported: int = 19

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("SplitSpec.key must be a non-empty display name, e.g. 'cityscapes'")
        if self.dataset not in DATASETS:
            raise ValueError(f"SplitSpec.dataset must be one of {DATASETS}, got {self.dataset!r}")
        object.__setattr__(self, "test_resize", _pair(self.test_resize, "SplitSpec.test_resize (long, short)"))
        if self.dataset == "mapillary":
            mapping = self.mapillary_mapping or MAPILLARY_MAPPINGS[0]
            if mapping not in MAPILLARY_MAPPINGS:
                raise ValueError(f"SplitSpec.mapillary_mapping must be one of {MAPILLARY_MAPPINGS}, got {mapping!r}")
            object.__setattr__(self, "mapillary_mapping", mapping)
        elif self.mapillary_mapping is not None:
            raise ValueError(f"SplitSpec {self.key!r}: mapillary_mapping is only meaningful for dataset='mapillary'")
        if not 0 < int(self.num_classes_reported) <= 19:
            raise ValueError(f"SplitSpec.num_classes_reported must be in 1..19, got {self.num_classes_reported!r}")
        object.__setattr__(self, "num_classes_reported", int(self.num_classes_reported))


@dataclass(frozen=True)
class Protocol:
    """A complete DGSS evaluation protocol (decisions.md §2).

    ``reference`` is the rPD reference: the source domain's validation split evaluated under the same
    protocol (decisions.md §1). ``aggregation="mean"`` is the plain mean of target mIoUs (the papers'
    "Avg." column).
    """

    name: str
    description: str
    source: SplitSpec
    targets: tuple[SplitSpec, ...]
    reference: SplitSpec
    inference: InferenceSpec = field(default_factory=InferenceSpec)
    aggregation: str = "mean"
    miniature: bool = False
    variant: str = "default"

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if not self.targets:
            raise ValueError(f"Protocol {self.name!r} needs at least one target split")
        keys = [t.key for t in self.targets]
        if len(set(keys)) != len(keys):
            raise ValueError(f"Protocol {self.name!r}: target keys must be unique, got {keys}")
        if self.reference.key in keys:
            raise ValueError(f"Protocol {self.name!r}: reference key {self.reference.key!r} clashes with a target key")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"Protocol.aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        object.__setattr__(self, "miniature", bool(self.miniature))

    # ------------------------------------------------------------------ views
    @property
    def evaluation_splits(self) -> tuple[SplitSpec, ...]:
        """Every split a run evaluates: the targets, then the rPD reference."""
        return self.targets + (self.reference,)

    def split(self, key: str) -> SplitSpec:
        """The target or reference split with display name ``key``."""
        for s in self.evaluation_splits:
            if s.key == key:
                return s
        raise KeyError(f"protocol {self.name!r} has no split {key!r}; splits: {[s.key for s in self.evaluation_splits]}")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Protocol:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a file from another harness version)."""
        d = dict(d)
        _check_keys(cls, d)
        split = lambda s: SplitSpec(**_check_keys(SplitSpec, dict(s)))  # noqa: E731
        inf = dict(d.get("inference") or {})
        _check_keys(InferenceSpec, inf)
        if "scales" in inf:
            inf["scales"] = tuple(inf["scales"])
        return cls(
            name=d["name"],
            description=d.get("description", ""),
            source=split(d["source"]),
            targets=tuple(split(t) for t in d["targets"]),
            reference=split(d["reference"]),
            inference=InferenceSpec(**inf),
            aggregation=d.get("aggregation", "mean"),
            miniature=d.get("miniature", False),
            variant=d.get("variant", "default"),
        )

    def canonical_json(self) -> str:
        """Canonical JSON of every field except ``description`` (what :meth:`content_hash` hashes)."""
        d = self.to_dict()
        d.pop("description")
        return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    def content_hash(self) -> str:
        """sha256 of :meth:`canonical_json`, first 16 hex characters."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()[:16]


def _check_keys(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"{cls.__name__}.from_dict: unknown keys {unknown}; allowed: {sorted(allowed)}")
    return d


def keep_ratio_size(h: int, w: int, scale: tuple[int, int] | None) -> tuple[int, int]:
    """Size (h, w) after mmseg ``Resize(scale=(long, short), keep_ratio=True)`` (datasets.md §8.1).

    The factor is ``min(long / max(h, w), short / min(h, w))`` and each side is rounded half up, as in
    mmcv ``rescale_size``. ``scale=None`` keeps the native size.
    """
    if scale is None:
        return (int(h), int(w))
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return (int(h * factor + 0.5), int(w * factor + 0.5))


# ---------------------------------------------------------------------------------------------- registry
def _cityscapes_val(resize: tuple[int, int] | None = (2048, 1024)) -> SplitSpec:
    return SplitSpec("cityscapes", "cityscapes", "val", resize)


def _bdd_val(resize: tuple[int, int] | None = (1280, 720)) -> SplitSpec:
    return SplitSpec("bdd100k", "bdd100k", "val", resize)


def _mapillary_val(resize: tuple[int, int] | None = (2048, 1024), mapping: str = "robustnet") -> SplitSpec:
    return SplitSpec("mapillary", "mapillary", "validation", resize, mapping)


_HARMONISED = InferenceSpec(mode="slide", crop_size=(512, 512), stride=(341, 341), flip=False, scales=(1.0,))

_DEFAULTS: tuple[Protocol, ...] = (
    Protocol(
        name="gta2cbm",
        description=(
            "GTA5 (all images) -> Cityscapes val, BDD100K val, Mapillary validation (RobustNet 66->19 "
            "mapping); harmonised full-resolution evaluation: Cityscapes at (2048,1024), BDD100K at "
            "(1280,720), Mapillary fit to (2048,1024), slide 512/341, no flip; rPD reference = GTA5 val "
            "(RobustNet val list) at native size."
        ),
        source=SplitSpec("gta5", "gta5", "all"),
        targets=(_cityscapes_val(), _bdd_val(), _mapillary_val()),
        reference=SplitSpec("gta5", "gta5", "val"),
        inference=_HARMONISED,
    ),
    Protocol(
        name="city2bm",
        description=(
            "Cityscapes train -> BDD100K val, Mapillary validation (RobustNet mapping); BDD100K at "
            "(1280,720), Mapillary fit to (2048,1024), slide 512/341, no flip; rPD reference = "
            "Cityscapes val at (2048,1024)."
        ),
        source=SplitSpec("cityscapes", "cityscapes", "train"),
        targets=(_bdd_val(), _mapillary_val()),
        reference=_cityscapes_val(),
        inference=_HARMONISED,
    ),
)

_REGISTRY: Mapping[str, Mapping[str, Protocol]] = MappingProxyType({
    name: MappingProxyType({p.variant: p for p in _DEFAULTS if p.name == name})
    for name in dict.fromkeys(p.name for p in _DEFAULTS)
})
"""name -> variant -> full-scale Protocol. Read-only; add protocols/variants to ``_DEFAULTS`` as data."""


def list_protocols() -> list[str]:
    """Names of the registered protocols."""
    return sorted(_REGISTRY)


def list_variants(name: str) -> list[str]:
    """Variants registered for protocol ``name`` (always includes ``"default"``)."""
    return sorted(_lookup(name))


def _lookup(name: str) -> Mapping[str, Protocol]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown protocol {name!r}; registered protocols: {list_protocols()}") from None


def get_protocol(name: str, *, miniature: bool = False, variant: str = "default") -> Protocol:
    """The registered protocol ``name``/``variant``, or its miniature twin when ``miniature=True``."""
    variants = _lookup(name)
    if variant not in variants:
        raise KeyError(f"protocol {name!r} has no variant {variant!r}; variants: {sorted(variants)}")
    protocol = variants[variant]
    return miniature_twin(protocol) if miniature else protocol


def miniature_twin(protocol: Protocol) -> Protocol:
    """Same protocol at the built-in miniature benchmark's scale.

    Images of the miniature benchmark are already small (~512 px wide), so every split is evaluated at
    its native size (``test_resize=None``) and a sliding window becomes 256x256 with stride 170. Whole-
    image inference, flips and scales are kept. ``miniature=True`` makes the content hash differ, so
    miniature results are never mixed with full-scale ones.
    """
    if protocol.miniature:
        return protocol
    native = lambda s: dataclasses.replace(s, test_resize=None)  # noqa: E731
    inference = protocol.inference
    if inference.mode == "slide":
        inference = dataclasses.replace(inference, crop_size=MINIATURE_CROP, stride=MINIATURE_STRIDE)
    return dataclasses.replace(
        protocol,
        description=f"[miniature twin, native-size images, slide 256/170] {protocol.description}",
        source=native(protocol.source),
        targets=tuple(native(t) for t in protocol.targets),
        reference=native(protocol.reference),
        inference=inference,
        miniature=True,
    )


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else k, out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) and "key" in v for v in value):
        keys = [v["key"] for v in value]
        out[f"{prefix}.keys"] = tuple(keys)
        for v in value:
            _flatten(v, f"{prefix}[{v['key']}]", out)
    elif isinstance(value, list):
        out[prefix] = tuple(_freeze(v) for v in value)
    else:
        out[prefix] = value


def _freeze(v: Any) -> Any:
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


def protocol_diff(a: Protocol, b: Protocol) -> dict[str, tuple]:
    """Settings that differ between two protocols: ``{"dotted.path": (value_in_a, value_in_b)}``.

    Targets are matched by key (``targets[mapillary].test_resize``); a target present in only one
    protocol shows up in ``targets.keys`` and with ``None`` on the missing side. ``description`` is not
    a setting and is ignored. An empty dict means the two protocols have the same content hash.
    """
    fa: dict[str, Any] = {}
    fb: dict[str, Any] = {}
    da, db = a.to_dict(), b.to_dict()
    da.pop("description")
    db.pop("description")
    _flatten(da, "", fa)
    _flatten(db, "", fb)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}
