"""Evaluation protocols as data (decisions.md §2, §3; datasets.md §8.1; methods.md §7).

A :class:`Protocol` fixes everything that changes a DGSS number: the source training split, the target
splits (and the Mapillary 66->19 mapping), the keep-ratio test-time resize per split, the inference mode
(whole image or sliding window with its crop and stride), flips/scales, the aggregation over targets and
the split used as the rPD reference. Its :meth:`Protocol.content_hash` is stored with every result;
results with different hashes are never ranked together.

Protocols live in an immutable registry keyed by ``(name, variant)``. The harmonised default of each
protocol is the ``"default"`` variant; paper-faithful settings (``rein``, ``tqdm``, ``famix``,
``vltseg``, ...) are further variants, each declared as the list of settings it changes
(:func:`variant_changes`), so that a variant changes exactly the settings it names. Every protocol has a
*miniature twin* (:func:`miniature_twin`) for the built-in miniature benchmark: same structure,
native-size test images and a 256/170 sliding window, flagged ``miniature=True`` so its hash differs.

Registered protocols (``list_protocols()``):

=============  ===========================================  ================================================
name           source -> targets                            rPD reference
=============  ===========================================  ================================================
gta2cbm        GTA5 -> Cityscapes, BDD100K, Mapillary       GTA5 val (RobustNet list)
syn2cbm        SYNTHIA -> Cityscapes, BDD100K, Mapillary    SYNTHIA val (RobustNet list)
gtasyn2cbm     GTA5 + SYNTHIA -> C, B, M                    GTA5 val
city2bm        Cityscapes -> BDD100K, Mapillary             Cityscapes val
city2acdc      Cityscapes -> ACDC fog/night/rain/snow val;  Cityscapes val
               ACDC test exported for the server
city2bmacdc    Cityscapes -> BDD100K, Mapillary, ACDC val   Cityscapes val
=============  ===========================================  ================================================

Fields added after the first protocols (``SplitSpec.prehalve``/``center_crop``,
``Protocol.extra_sources``/``exports``/``gallery``) are left out of :meth:`Protocol.to_dict` (and so of the
hash) while they hold their defaults: protocols that do not use them keep their original content hash.
``Protocol.gallery`` (:class:`GallerySpec`: which test images every run saves colourised predictions of)
changes no number, so it is never part of the content hash, like ``description``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "CenterCropSpec",
    "GallerySpec",
    "REPORTED_CLASS_SETS",
    "build_test_transform",
    "load_split",
    "reported_classes",
    "variant_changes",
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
    "apply_changes",
    "build_registry",
    "ACDC_CONDITIONS",
]

DATASETS: tuple[str, ...] = ("gta5", "synthia", "cityscapes", "bdd100k", "mapillary", "acdc")
"""Loader names a :class:`SplitSpec` may refer to (the ``datasets`` package's loaders)."""

MAPILLARY_MAPPINGS: tuple[str, ...] = ("robustnet", "rein")
"""Mapillary Vistas 66->19 mappings (datasets.md §5.2); ``robustnet`` is the default (decisions.md §4)."""

INFERENCE_MODES: tuple[str, ...] = ("whole", "slide")
AGGREGATIONS: tuple[str, ...] = ("mean",)

MINIATURE_CROP: tuple[int, int] = (256, 256)
MINIATURE_STRIDE: tuple[int, int] = (170, 170)
MINIATURE_CENTER_CROP: int = 256
"""Height and square size a :class:`CenterCropSpec` becomes in a miniature twin (1536 at full scale)."""

_SYNTHIA_MISSING = (9, 14, 16)  # terrain, truck, train (datasets.md §2)
REPORTED_CLASS_SETS: Mapping[int, tuple[int, ...]] = MappingProxyType({
    19: tuple(range(19)),
    16: tuple(c for c in range(19) if c not in _SYNTHIA_MISSING),
    13: tuple(c for c in range(19) if c not in _SYNTHIA_MISSING + (3, 4, 5)),
})
"""``SplitSpec.num_classes_reported`` -> the train ids averaged: 19 (all), 16 (SYNTHIA convention: no terrain,
truck, train), 13 ("mIoU*": also no wall, fence, pole). IoUs always come from the full 19-class confusion."""


def reported_classes(num_classes_reported: int) -> tuple[int, ...]:
    """Train ids averaged for a split reported over ``num_classes_reported`` classes (19, 16 or 13)."""
    try:
        return REPORTED_CLASS_SETS[int(num_classes_reported)]
    except KeyError:
        raise ValueError(f"num_classes_reported must be one of {sorted(REPORTED_CLASS_SETS)}, "
                         f"got {num_classes_reported!r}") from None


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
class CenterCropSpec:
    """RobustNet's Mapillary test geometry (FAMix): resize the image *and label* to height ``height``
    (keep ratio; bicubic / nearest), then centre crop or pad both to ``size`` = (h, w). Scoring uses the
    cropped label. ``label_pad`` is the train id written into padded label pixels: RobustNet pads with 0,
    i.e. **road** (its 66->19 mapping runs before the transform; datasets.md §8.1), so portrait images get
    road-labelled borders; 255 would ignore them. ``image_pad`` fills padded image pixels (0..255 RGB)."""

    height: int
    size: tuple[int, int]
    label_pad: int = 255
    image_pad: int = 0

    def __post_init__(self) -> None:
        if int(self.height) != self.height or int(self.height) <= 0:
            raise ValueError(f"CenterCropSpec.height must be a positive int, got {self.height!r}")
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "size", _pair(self.size, "CenterCropSpec.size (h, w)"))
        for name in ("label_pad", "image_pad"):
            v = getattr(self, name)
            if int(v) != v or not 0 <= int(v) <= 255:
                raise ValueError(f"CenterCropSpec.{name} must be an int in 0..255, got {v!r}")
            object.__setattr__(self, name, int(v))


@dataclass(frozen=True)
class GallerySpec:
    """The fixed subset of test images whose colourised predictions every run saves (the papers' qualitative
    figures: image | ground truth | method A | method B), so that every method shows the same images.

    The rule is seeded and depends only on image *names*: the ``images_per_target`` names of a split with the
    smallest ``sha256("<seed>/<split key>/<name>")``, in that order. It does not depend on the order in which
    a loader lists the files, and adding images to a split changes a pick only when a new name hashes lower.
    The gallery changes no number, so it is not part of :meth:`Protocol.content_hash`.
    """

    images_per_target: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("images_per_target", "seed"):
            v = getattr(self, name)
            if int(v) != v or int(v) < 0:
                raise ValueError(f"GallerySpec.{name} must be an int >= 0, got {v!r}")
            object.__setattr__(self, name, int(v))

    def select(self, names: Sequence[str], key: str) -> list[str]:
        """The gallery images of split ``key`` among ``names``, in gallery order."""
        def rank(name: str) -> str:
            return hashlib.sha256(f"{self.seed}/{key}/{name}".encode("utf-8")).hexdigest()

        return sorted(dict.fromkeys(str(n) for n in names), key=rank)[:self.images_per_target]


@dataclass(frozen=True)
class SplitSpec:
    """One dataset split as used by a protocol.

    ``key`` is the display name ("cityscapes", "bdd100k", "mapillary", "gta5", "acdc-fog"); ``dataset`` the
    loader name; ``test_resize`` the mmseg ``Resize(scale=(long, short), keep_ratio=True)`` applied to the
    image before inference (None = native size). The label stays at its native size, except for the two
    label-space steps that papers apply offline to images *and* labels, before ``test_resize``:

    - ``prehalve``: Rein's Mapillary (``mapillary_resize.py``): both halved to (w // 2, h // 2), bicubic
      image, nearest label; scoring uses the half-resolution label;
    - ``center_crop``: RobustNet/FAMix's Mapillary, see :class:`CenterCropSpec`.

    ``num_classes_reported`` (19, 16 or 13, see :data:`REPORTED_CLASS_SETS`) is how many classes the
    reported mIoU averages.
    """

    key: str
    dataset: str
    split: str
    test_resize: tuple[int, int] | None = None
    mapillary_mapping: str | None = None
    num_classes_reported: int = 19
    prehalve: bool = False
    center_crop: CenterCropSpec | None = None

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
        if self.num_classes_reported not in REPORTED_CLASS_SETS:
            raise ValueError(f"SplitSpec.num_classes_reported must be one of {sorted(REPORTED_CLASS_SETS)}, "
                             f"got {self.num_classes_reported!r}")
        object.__setattr__(self, "num_classes_reported", int(self.num_classes_reported))
        object.__setattr__(self, "prehalve", bool(self.prehalve))
        if isinstance(self.center_crop, Mapping):
            object.__setattr__(self, "center_crop", CenterCropSpec(**dict(self.center_crop)))
        elif self.center_crop is not None and not isinstance(self.center_crop, CenterCropSpec):
            raise ValueError(f"SplitSpec.center_crop must be a CenterCropSpec or None, got {self.center_crop!r}")

    @property
    def reported_classes(self) -> tuple[int, ...]:
        """Train ids the reported mIoU averages."""
        return reported_classes(self.num_classes_reported)


@dataclass(frozen=True)
class Protocol:
    """A complete DGSS evaluation protocol (decisions.md §2).

    ``source`` is the (first) training split; ``extra_sources`` further training splits read together with
    it (GTA5 + SYNTHIA), see :attr:`sources`. ``reference`` is the rPD reference: the source domain's
    validation split evaluated under the same protocol (decisions.md §1; for several sources, the first
    one's). ``aggregation="mean"`` is the plain mean of target mIoUs (the papers' "Avg." column).
    ``exports`` are splits without public ground truth whose predictions are written in the benchmark
    server's submission format (ACDC test; :mod:`benchmarks.export`), never scored locally. ``gallery``
    picks the test images whose predictions every run saves (:class:`GallerySpec`; not hashed).
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
    extra_sources: tuple[SplitSpec, ...] = ()
    exports: tuple[SplitSpec, ...] = ()
    gallery: GallerySpec = field(default_factory=GallerySpec)

    def __post_init__(self) -> None:
        if isinstance(self.gallery, Mapping):
            object.__setattr__(self, "gallery", GallerySpec(**dict(self.gallery)))
        elif not isinstance(self.gallery, GallerySpec):
            raise ValueError(f"Protocol.gallery must be a GallerySpec, got {self.gallery!r}")
        object.__setattr__(self, "extra_sources", tuple(self.extra_sources))
        object.__setattr__(self, "exports", tuple(self.exports))
        source_keys = [s.key for s in self.sources]
        if len(set(source_keys)) != len(source_keys):
            raise ValueError(f"Protocol {self.name!r}: source keys must be unique, got {source_keys}")
        export_keys = [s.key for s in self.exports]
        if len(set(export_keys)) != len(export_keys):
            raise ValueError(f"Protocol {self.name!r}: export keys must be unique, got {export_keys}")
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
    def sources(self) -> tuple[SplitSpec, ...]:
        """Every training split: ``source`` then ``extra_sources``."""
        return (self.source,) + self.extra_sources

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
        """Plain JSON-able dict (tuples become lists). Later-added fields holding their defaults are left
        out (``_COMPAT_DEFAULTS``), so protocols that do not use them keep their dict and hash."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        for k, default in _COMPAT_DEFAULTS["protocol"].items():
            if d.get(k) == default:
                d.pop(k)
        for s in (d["source"], d["reference"], *d["targets"], *d.get("extra_sources", []), *d.get("exports", [])):
            for k, default in _COMPAT_DEFAULTS["split"].items():
                if s.get(k) == default:
                    s.pop(k)
        return d

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
            extra_sources=tuple(split(x) for x in d.get("extra_sources", ())),
            exports=tuple(split(x) for x in d.get("exports", ())),
            gallery=GallerySpec(**_check_keys(GallerySpec, dict(d.get("gallery") or {}))),
        )

    def canonical_json(self) -> str:
        """Canonical JSON of every field except ``description`` and ``gallery`` (what :meth:`content_hash`
        hashes): neither changes a number."""
        d = self.to_dict()
        d.pop("description")
        d.pop("gallery", None)
        return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    def content_hash(self) -> str:
        """sha256 of :meth:`canonical_json`, first 16 hex characters."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()[:16]


_COMPAT_DEFAULTS: dict[str, dict[str, Any]] = {
    "protocol": {"extra_sources": [], "exports": [], "gallery": dataclasses.asdict(GallerySpec())},
    "split": {"prehalve": False, "center_crop": None},
}
"""Fields added after the first registered protocols, with the JSON value they are omitted at."""


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


ACDC_CONDITIONS: tuple[str, ...] = ("fog", "night", "rain", "snow")


def _acdc_conditions(split: str = "val", resize: tuple[int, int] | None = (1920, 1080)) -> tuple[SplitSpec, ...]:
    return tuple(SplitSpec(f"acdc-{c}", "acdc", f"{c}/{split}", resize) for c in ACDC_CONDITIONS)


_ACDC_TEST_EXPORT = SplitSpec("acdc-test", "acdc", "test", (1920, 1080))
_HARMONISED = InferenceSpec(mode="slide", crop_size=(512, 512), stride=(341, 341), flip=False, scales=(1.0,))
_CBM_EVAL = ("Cityscapes at (2048,1024), BDD100K at (1280,720), Mapillary fit to (2048,1024), slide 512/341, "
             "no flip")

def _base_protocols() -> tuple[Protocol, ...]:
    """The harmonised default of every registered protocol (decisions.md §2, §3)."""
    return (
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
        Protocol(
            name="syn2cbm",
            description=(
                "SYNTHIA-RAND-CITYSCAPES (all 9,400 images) -> Cityscapes val, BDD100K val, Mapillary validation "
                f"(RobustNet mapping); {_CBM_EVAL}; 19-class mIoU (datasets.md §2: the DGSS codebases' output; "
                "16/13-class are variants); rPD reference = SYNTHIA val (RobustNet list) at native size."
            ),
            source=SplitSpec("synthia", "synthia", "all"),
            targets=(_cityscapes_val(), _bdd_val(), _mapillary_val()),
            reference=SplitSpec("synthia", "synthia", "val"),
            inference=_HARMONISED,
        ),
        Protocol(
            name="gtasyn2cbm",
            description=(
                "GTA5 (all) + SYNTHIA (all), read as one training set -> Cityscapes val, BDD100K val, Mapillary "
                f"validation (RobustNet mapping); {_CBM_EVAL}; rPD reference = GTA5 val (the first source's "
                "validation split) at native size."
            ),
            source=SplitSpec("gta5", "gta5", "all"),
            extra_sources=(SplitSpec("synthia", "synthia", "all"),),
            targets=(_cityscapes_val(), _bdd_val(), _mapillary_val()),
            reference=SplitSpec("gta5", "gta5", "val"),
            inference=_HARMONISED,
        ),
        Protocol(
            name="city2acdc",
            description=(
                "Cityscapes train -> ACDC val per condition (fog, night, rain, snow; the mean over the four is the "
                "papers' ACDC number), each at (1920,1080), slide 512/341, no flip; ACDC test (all conditions) is "
                "exported as labelIds PNGs for the official server (benchmarks.export); rPD reference = "
                "Cityscapes val at (2048,1024)."
            ),
            source=SplitSpec("cityscapes", "cityscapes", "train"),
            targets=_acdc_conditions(),
            reference=_cityscapes_val(),
            inference=_HARMONISED,
            exports=(_ACDC_TEST_EXPORT,),
        ),
        Protocol(
            name="city2bmacdc",
            description=(
                "Cityscapes train -> BDD100K val (1280,720), Mapillary validation fit to (2048,1024) (RobustNet "
                "mapping), ACDC val (all four conditions as one split) at (1920,1080); slide 512/341, no flip; ACDC "
                "test exported for the server; rPD reference = Cityscapes val at (2048,1024)."
            ),
            source=SplitSpec("cityscapes", "cityscapes", "train"),
            targets=(_bdd_val(), _mapillary_val(), SplitSpec("acdc", "acdc", "val", (1920, 1080))),
            reference=_cityscapes_val(),
            inference=_HARMONISED,
            exports=(_ACDC_TEST_EXPORT,),
        ),
    )

# ---------------------------------------------------------------------------------------------- variants
_REIN_MAPILLARY = {"prehalve": True, "test_resize": (1024, 512), "mapillary_mapping": "rein"}
_FAMIX_MAPILLARY = {"test_resize": None, "center_crop": CenterCropSpec(1536, (1536, 1536), label_pad=0)}
_WHOLE = {"inference.mode": "whole", "inference.crop_size": None, "inference.stride": None}


def _split_changes(where: str, changes: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{where}.{k}": v for k, v in changes.items()}


def _synthetic_variants(base: Protocol) -> dict[str, tuple[str, dict[str, Any]]]:
    """Variants of the synthetic-source protocols (targets C, B, M)."""
    two_sources = bool(base.extra_sources)
    source_lists = {"source.split": "train"}  # the RobustNet train list (decisions.md §5)
    out: dict[str, tuple[str, dict[str, Any]]] = {
        "rein": (
            "Rein / SET / Vireo (configs/_base_/datasets/*_512x512.py): Cityscapes at (1024,512); Mapillary "
            "pre-halved offline (images and labels) then fit to (1024,512), name-matched 'rein' 66->19 mapping"
            + ("; GTA5 val at (1280,720)" if base.reference.dataset == "gta5" else ""),
            {"targets[cityscapes].test_resize": (1024, 512), **_split_changes("targets[mapillary]", _REIN_MAPILLARY),
             **({"reference.test_resize": (1280, 720)} if base.reference.dataset == "gta5" else {})},
        ),
        "vltseg": (
            "VLTSeg re-implementation, synthetic source (512 models): every target fit to (1024,512) (BDD100K "
            "too: 910x512), slide 512/426",
            {"targets[cityscapes].test_resize": (1024, 512), "targets[bdd100k].test_resize": (1024, 512),
             "targets[mapillary].test_resize": (1024, 512), "inference.stride": (426, 426)},
        ),
    }
    if not two_sources:
        tqdm_changes: dict[str, Any] = dict(source_lists)
        note = ""
        if base.source.dataset == "synthia":  # tqdm reports S->X over 16 classes (methods.md §1.3)
            tqdm_changes.update({f"targets[{t.key}].num_classes_reported": 16 for t in base.targets})
            tqdm_changes["reference.num_classes_reported"] = 16
            note = "; 16-class mIoU (no terrain, truck, train)"
        out["tqdm"] = (
            "tqdm (configs/_base_/datasets/*-512): RobustNet train list as the source; full resolution (C "
            "2048x1024, B 1280x720, M fit to 2048x1024), slide 512/341, RobustNet mapping (as the default)" + note,
            tqdm_changes,
        )
        out["famix"] = (
            "FAMix: RobustNet train list as the source; whole-image inference at native resolution (C, B); "
            "Mapillary resized to height 1536 and centre-cropped/padded to 1536x1536, labels too, padded label "
            "pixels = 0 (road: RobustNet's quirk)",
            {**source_lists, **_WHOLE, "targets[cityscapes].test_resize": None, "targets[bdd100k].test_resize": None,
             **_split_changes("targets[mapillary]", _FAMIX_MAPILLARY)},
        )
    return out


def _real_variants(base: Protocol) -> dict[str, tuple[str, dict[str, Any]]]:
    """Variants of the Cityscapes-source protocols."""
    keys = {t.key for t in base.targets}
    acdc = [t.key for t in base.targets if t.dataset == "acdc"]
    rein: dict[str, Any] = {"reference.test_resize": (1024, 512)}
    if "mapillary" in keys:
        rein.update(_split_changes("targets[mapillary]", _REIN_MAPILLARY))
    rein.update({f"targets[{k}].test_resize": (960, 540) for k in acdc})
    rein.update({f"exports[{e.key}].test_resize": (960, 540) for e in base.exports})
    out: dict[str, tuple[str, dict[str, Any]]] = {
        "rein": (
            "Rein / SET / Vireo 512 configs (dg_citys2acdc_512x512, citys 512): Cityscapes val at (1024,512)"
            + ("; ACDC at (960,540)" if acdc else "")
            + ("; Mapillary pre-halved then fit to (1024,512), 'rein' mapping" if "mapillary" in keys else ""),
            rein,
        ),
        "rein_1024": (
            "Rein 1024 configs (dg_citys2acdc_1024x1024): full resolution (C 2048x1024, ACDC 1920x1080), "
            "slide 1024/683",
            {"inference.crop_size": (1024, 1024), "inference.stride": (683, 683)},
        ),
        "vltseg_1024": (
            "VLTSeg re-implementation, real source (1024 models): everything fit to (2048,1024) (BDD100K "
            "1820x1024), ACDC at (1920,1080), slide 1024/768",
            {**({"targets[bdd100k].test_resize": (2048, 1024)} if "bdd100k" in keys else {}),
             "inference.crop_size": (1024, 1024), "inference.stride": (768, 768)},
        ),
    }
    if base.name == "city2bm":
        out["tqdm"] = ("tqdm c2b-512 config: identical settings to the harmonised default (B 1280x720, M fit to "
                       "2048x1024, slide 512/341)", {})
    return out


def _set_path(obj: Any, parts: list[str], value: Any) -> Any:
    m = re.fullmatch(r"(\w+)(?:\[([^\]]+)\])?", parts[0])
    if m is None:
        raise ValueError(f"bad setting path segment {parts[0]!r}")
    name, key = m.groups()
    current = getattr(obj, name)
    if key is None:
        new = _set_path(current, parts[1:], value) if len(parts) > 1 else value
    else:
        items = list(current)
        idx = [i for i, item in enumerate(items) if item.key == key]
        if len(idx) != 1:
            raise KeyError(f"no unique split {key!r} in {name} ({[i.key for i in items]})")
        items[idx[0]] = _set_path(items[idx[0]], parts[1:], value) if len(parts) > 1 else value
        new = tuple(items)
    return dataclasses.replace(obj, **{name: new})


def apply_changes(protocol: Protocol, changes: Mapping[str, Any]) -> Protocol:
    """``protocol`` with each dotted setting path (as :func:`protocol_diff` names them, e.g.
    ``targets[mapillary].test_resize`` or ``inference.stride``) set to its value."""
    for path, value in changes.items():
        protocol = _set_path(protocol, path.split("."), value)
    return protocol


def _derive_variants(bases: tuple[Protocol, ...]) -> tuple[tuple[Protocol, ...], dict[tuple[str, str], dict[str, Any]]]:
    derived, changes = [], {}
    for base in bases:
        table = _real_variants(base) if base.source.dataset == "cityscapes" else _synthetic_variants(base)
        for variant, (what, settings) in table.items():
            p = apply_changes(base, settings)
            derived.append(dataclasses.replace(p, variant=variant,
                                               description=f"[{variant} variant: {what}] {base.description}"))
            changes[(base.name, variant)] = dict(settings)
    return tuple(derived), changes


def build_registry() -> tuple[Mapping[str, Mapping[str, Protocol]], Mapping[tuple[str, str], dict[str, Any]]]:
    """Every registered full-scale protocol, read-only, as ``name -> variant -> Protocol`` (the harmonised
    defaults, then the paper-faithful variants), and ``(name, variant) -> settings the variant changes``.

    Built once at import for :func:`get_protocol`; tests call it to rebuild the registry from scratch.
    Add protocols or variants to :func:`_base_protocols` / the variant tables.
    """
    bases = _base_protocols()
    variants, changes = _derive_variants(bases)
    every = bases + variants
    registry = MappingProxyType({
        name: MappingProxyType({p.variant: p for p in every if p.name == name})
        for name in dict.fromkeys(p.name for p in every)
    })
    return registry, MappingProxyType(changes)


_REGISTRY, _VARIANT_CHANGES = build_registry()


def variant_changes(name: str, variant: str) -> dict[str, Any]:
    """The settings variant ``variant`` of protocol ``name`` changes relative to its default, as
    ``{setting path: value}`` (empty for ``"default"``). ``protocol_diff(default, variant)`` differs in
    exactly these settings (and ``variant``)."""
    if variant not in _lookup(name):
        raise KeyError(f"protocol {name!r} has no variant {variant!r}; variants: {list_variants(name)}")
    return dict(_VARIANT_CHANGES.get((name, variant), {}))


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
    its native size (``test_resize=None``), a sliding window becomes 256x256 with stride 170 and a
    :class:`CenterCropSpec` becomes 256 (height and square size; pad values kept). Pre-halving, label
    mappings, class conventions, whole-image inference, flips and scales are kept. ``miniature=True``
    makes the content hash differ, so miniature results are never mixed with full-scale ones.
    """
    if protocol.miniature:
        return protocol

    def native(s: SplitSpec) -> SplitSpec:
        crop = s.center_crop
        if crop is not None:
            crop = dataclasses.replace(crop, height=MINIATURE_CENTER_CROP,
                                       size=(MINIATURE_CENTER_CROP, MINIATURE_CENTER_CROP))
        return dataclasses.replace(s, test_resize=None, center_crop=crop)

    inference = protocol.inference
    if inference.mode == "slide":
        inference = dataclasses.replace(inference, crop_size=MINIATURE_CROP, stride=MINIATURE_STRIDE)
    return dataclasses.replace(
        protocol,
        description=f"[miniature twin, native-size images, slide 256/170] {protocol.description}",
        source=native(protocol.source),
        extra_sources=tuple(native(s) for s in protocol.extra_sources),
        targets=tuple(native(t) for t in protocol.targets),
        reference=native(protocol.reference),
        exports=tuple(native(e) for e in protocol.exports),
        inference=inference,
        miniature=True,
    )


# ---------------------------------------------------------------------------------------------- data
def build_test_transform(split: SplitSpec):
    """The ``datasets.TestTransform`` of a split: pre-halving, centre crop, then the keep-ratio resize."""
    from datasets.transforms import HeightCenterCrop, TestTransform

    crop = split.center_crop
    return TestTransform(
        split.test_resize, prehalve=split.prehalve,
        center_crop=None if crop is None else HeightCenterCrop(crop.height, crop.size, crop.image_pad, crop.label_pad),
    )


def load_split(split: SplitSpec, data_root: Any, transform: Any = None, **kwargs: Any):
    """``datasets.build_dataset`` for a split of a protocol (its loader, split and Mapillary mapping)."""
    from datasets import build_dataset

    return build_dataset(split.dataset, split.split, data_root,
                         mapillary_mapping=split.mapillary_mapping or MAPILLARY_MAPPINGS[0], transform=transform,
                         **kwargs)


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
    protocol shows up in ``targets.keys`` and with ``None`` on the missing side. ``description`` and
    ``gallery`` change no number and are ignored. An empty dict means the two protocols have the same content hash.
    """
    fa: dict[str, Any] = {}
    fb: dict[str, Any] = {}
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d.pop("description")
        d.pop("gallery", None)
    _flatten(da, "", fa)
    _flatten(db, "", fb)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}
