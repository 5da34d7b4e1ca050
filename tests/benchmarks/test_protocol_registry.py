"""The protocol registry rebuilt from scratch at test time (:func:`build_registry`) and checked, protocol by
protocol, against the evaluation geometry written out from datasets.md §8.1 / methods.md §7 and pinned hashes.

``get_protocol`` reads the registry built once at import; these tests build it again inside the test, so a
broken builder (a base protocol, a variant table, the variant derivation) turns them red, also under mutmut,
whose fork server imports the module before a mutant is switched on (tests/mutation_results.md, session 3).
"""

import dataclasses
import hashlib

import pytest

from benchmarks.protocols import Protocol, SplitSpec, apply_changes, build_registry, get_protocol


def _split(s: SplitSpec) -> str:
    """``[key=]dataset:split[@LONGxSHORT] [mapping] [halved] [cropH:HxW padL,I] [Ncls]`` (no resize = native)."""
    text = ("" if s.key == s.dataset else f"{s.key}=") + f"{s.dataset}:{s.split}"
    if s.test_resize is not None:
        text += f"@{s.test_resize[0]}x{s.test_resize[1]}"
    if s.mapillary_mapping is not None:
        text += f" {s.mapillary_mapping}"
    if s.prehalve:
        text += " halved"
    if s.center_crop is not None:
        c = s.center_crop
        text += f" crop{c.height}:{c.size[0]}x{c.size[1]} pad{c.label_pad},{c.image_pad}"
    if s.num_classes_reported != 19:
        text += f" {s.num_classes_reported}cls"
    return text


def _geometry(p: Protocol) -> tuple[str, ...]:
    """Sources, targets, reference, exports and inference of ``p`` in the notation of ``GEOMETRY``."""
    inf = p.inference
    mode = "whole" if inf.mode == "whole" else f"slide {inf.crop_size[0]}/{inf.stride[0]}"
    if inf.crop_size is not None and (inf.crop_size[0] != inf.crop_size[1] or inf.stride[0] != inf.stride[1]):
        mode += f" (h, w) {inf.crop_size}/{inf.stride}"
    if inf.flip or inf.scales != (1.0,):
        mode += f" flip={inf.flip} scales={inf.scales}"
    return ("+".join(_split(s) for s in p.sources), *(_split(t) for t in p.targets), f"ref {_split(p.reference)}",
            *(f"export {_split(e)}" for e in p.exports), mode)


# Written out from datasets.md §8.1 (test-time resize and inference per codebase) and methods.md §7, in registry
# order: the harmonised default first, then each protocol's paper-faithful variants.
GEOMETRY = {
    ("gta2cbm", "default"): (
        "gta5:all", "cityscapes:val@2048x1024", "bdd100k:val@1280x720", "mapillary:validation@2048x1024 robustnet",
        "ref gta5:val", "slide 512/341",
    ),
    ("gta2cbm", "rein"): (
        "gta5:all", "cityscapes:val@1024x512", "bdd100k:val@1280x720", "mapillary:validation@1024x512 rein halved",
        "ref gta5:val@1280x720", "slide 512/341",
    ),
    ("gta2cbm", "vltseg"): (
        "gta5:all", "cityscapes:val@1024x512", "bdd100k:val@1024x512", "mapillary:validation@1024x512 robustnet",
        "ref gta5:val", "slide 512/426",
    ),
    ("gta2cbm", "tqdm"): (
        "gta5:train", "cityscapes:val@2048x1024", "bdd100k:val@1280x720", "mapillary:validation@2048x1024 robustnet",
        "ref gta5:val", "slide 512/341",
    ),
    ("gta2cbm", "famix"): (
        "gta5:train", "cityscapes:val", "bdd100k:val", "mapillary:validation robustnet crop1536:1536x1536 pad0,0",
        "ref gta5:val", "whole",
    ),
    ("city2bm", "default"): (
        "cityscapes:train", "bdd100k:val@1280x720", "mapillary:validation@2048x1024 robustnet",
        "ref cityscapes:val@2048x1024", "slide 512/341",
    ),
    ("city2bm", "rein"): (
        "cityscapes:train", "bdd100k:val@1280x720", "mapillary:validation@1024x512 rein halved",
        "ref cityscapes:val@1024x512", "slide 512/341",
    ),
    ("city2bm", "rein_1024"): (
        "cityscapes:train", "bdd100k:val@1280x720", "mapillary:validation@2048x1024 robustnet",
        "ref cityscapes:val@2048x1024", "slide 1024/683",
    ),
    ("city2bm", "vltseg_1024"): (
        "cityscapes:train", "bdd100k:val@2048x1024", "mapillary:validation@2048x1024 robustnet",
        "ref cityscapes:val@2048x1024", "slide 1024/768",
    ),
    ("city2bm", "tqdm"): (
        "cityscapes:train", "bdd100k:val@1280x720", "mapillary:validation@2048x1024 robustnet",
        "ref cityscapes:val@2048x1024", "slide 512/341",
    ),
    ("syn2cbm", "default"): (
        "synthia:all", "cityscapes:val@2048x1024", "bdd100k:val@1280x720", "mapillary:validation@2048x1024 robustnet",
        "ref synthia:val", "slide 512/341",
    ),
    ("syn2cbm", "rein"): (
        "synthia:all", "cityscapes:val@1024x512", "bdd100k:val@1280x720", "mapillary:validation@1024x512 rein halved",
        "ref synthia:val", "slide 512/341",
    ),
    ("syn2cbm", "vltseg"): (
        "synthia:all", "cityscapes:val@1024x512", "bdd100k:val@1024x512", "mapillary:validation@1024x512 robustnet",
        "ref synthia:val", "slide 512/426",
    ),
    ("syn2cbm", "tqdm"): (
        "synthia:train", "cityscapes:val@2048x1024 16cls", "bdd100k:val@1280x720 16cls",
        "mapillary:validation@2048x1024 robustnet 16cls", "ref synthia:val 16cls", "slide 512/341",
    ),
    ("syn2cbm", "famix"): (
        "synthia:train", "cityscapes:val", "bdd100k:val", "mapillary:validation robustnet crop1536:1536x1536 pad0,0",
        "ref synthia:val", "whole",
    ),
    ("gtasyn2cbm", "default"): (
        "gta5:all+synthia:all", "cityscapes:val@2048x1024", "bdd100k:val@1280x720",
        "mapillary:validation@2048x1024 robustnet", "ref gta5:val", "slide 512/341",
    ),
    ("gtasyn2cbm", "rein"): (
        "gta5:all+synthia:all", "cityscapes:val@1024x512", "bdd100k:val@1280x720",
        "mapillary:validation@1024x512 rein halved", "ref gta5:val@1280x720", "slide 512/341",
    ),
    ("gtasyn2cbm", "vltseg"): (
        "gta5:all+synthia:all", "cityscapes:val@1024x512", "bdd100k:val@1024x512",
        "mapillary:validation@1024x512 robustnet", "ref gta5:val", "slide 512/426",
    ),
    ("city2acdc", "default"): (
        "cityscapes:train", "acdc-fog=acdc:fog/val@1920x1080", "acdc-night=acdc:night/val@1920x1080",
        "acdc-rain=acdc:rain/val@1920x1080", "acdc-snow=acdc:snow/val@1920x1080", "ref cityscapes:val@2048x1024",
        "export acdc-test=acdc:test@1920x1080", "slide 512/341",
    ),
    ("city2acdc", "rein"): (
        "cityscapes:train", "acdc-fog=acdc:fog/val@960x540", "acdc-night=acdc:night/val@960x540",
        "acdc-rain=acdc:rain/val@960x540", "acdc-snow=acdc:snow/val@960x540", "ref cityscapes:val@1024x512",
        "export acdc-test=acdc:test@960x540", "slide 512/341",
    ),
    ("city2acdc", "rein_1024"): (
        "cityscapes:train", "acdc-fog=acdc:fog/val@1920x1080", "acdc-night=acdc:night/val@1920x1080",
        "acdc-rain=acdc:rain/val@1920x1080", "acdc-snow=acdc:snow/val@1920x1080", "ref cityscapes:val@2048x1024",
        "export acdc-test=acdc:test@1920x1080", "slide 1024/683",
    ),
    ("city2acdc", "vltseg_1024"): (
        "cityscapes:train", "acdc-fog=acdc:fog/val@1920x1080", "acdc-night=acdc:night/val@1920x1080",
        "acdc-rain=acdc:rain/val@1920x1080", "acdc-snow=acdc:snow/val@1920x1080", "ref cityscapes:val@2048x1024",
        "export acdc-test=acdc:test@1920x1080", "slide 1024/768",
    ),
    ("city2bmacdc", "default"): (
        "cityscapes:train", "bdd100k:val@1280x720", "mapillary:validation@2048x1024 robustnet", "acdc:val@1920x1080",
        "ref cityscapes:val@2048x1024", "export acdc-test=acdc:test@1920x1080", "slide 512/341",
    ),
    ("city2bmacdc", "rein"): (
        "cityscapes:train", "bdd100k:val@1280x720", "mapillary:validation@1024x512 rein halved", "acdc:val@960x540",
        "ref cityscapes:val@1024x512", "export acdc-test=acdc:test@960x540", "slide 512/341",
    ),
    ("city2bmacdc", "rein_1024"): (
        "cityscapes:train", "bdd100k:val@1280x720", "mapillary:validation@2048x1024 robustnet", "acdc:val@1920x1080",
        "ref cityscapes:val@2048x1024", "export acdc-test=acdc:test@1920x1080", "slide 1024/683",
    ),
    ("city2bmacdc", "vltseg_1024"): (
        "cityscapes:train", "bdd100k:val@2048x1024", "mapillary:validation@2048x1024 robustnet", "acdc:val@1920x1080",
        "ref cityscapes:val@2048x1024", "export acdc-test=acdc:test@1920x1080", "slide 1024/768",
    ),
}

# Pinned (content hash, first 12 hex of sha256(description)): a change makes every stored result of that protocol
# incomparable (content hash) or changes what reports print (description); deliberate changes only.
PINNED = {
    ("gta2cbm", "default"): ("1fa9ab96dc2027eb", "e68d695f37a8"),
    ("gta2cbm", "rein"): ("438cc3fcbed96f7d", "db8678fb5116"),
    ("gta2cbm", "vltseg"): ("161f680e886cce41", "031531865be1"),
    ("gta2cbm", "tqdm"): ("059bb1253104e336", "e3248bdd5c29"),
    ("gta2cbm", "famix"): ("50142317974bb41b", "ce451e0b7041"),
    ("city2bm", "default"): ("27fc208018134e9f", "1df5ec8d2fab"),
    ("city2bm", "rein"): ("80b3bcf7c1968cc4", "27a83302d3f4"),
    ("city2bm", "rein_1024"): ("6f411ce5745655f9", "0be8bad8e7c2"),
    ("city2bm", "vltseg_1024"): ("199680e95991979a", "41510150a054"),
    ("city2bm", "tqdm"): ("1d8e03181e565d12", "93c57b0ad8e4"),
    ("syn2cbm", "default"): ("fb8e784f58f5f35b", "4e451f4f2952"),
    ("syn2cbm", "rein"): ("f5306aae1b468155", "2d517298824e"),
    ("syn2cbm", "vltseg"): ("23f3c589298b26e5", "ad359df72ae3"),
    ("syn2cbm", "tqdm"): ("5a58ab61906ed185", "72303b4052ae"),
    ("syn2cbm", "famix"): ("f5b95183218489ff", "b41edd5bc0fb"),
    ("gtasyn2cbm", "default"): ("ce12999c1fe855ab", "e8fa0390be37"),
    ("gtasyn2cbm", "rein"): ("05f04a15668cd874", "821bc0009593"),
    ("gtasyn2cbm", "vltseg"): ("1131d2b5cdf01038", "8bf7f5367c87"),
    ("city2acdc", "default"): ("65f90cdab52881fd", "443a31524e2c"),
    ("city2acdc", "rein"): ("0001374cdea8bb3e", "51148682dc52"),
    ("city2acdc", "rein_1024"): ("fab5781d03cde351", "9217c5f65492"),
    ("city2acdc", "vltseg_1024"): ("2a533093b6ab8b0c", "e09cf4c17fe6"),
    ("city2bmacdc", "default"): ("4fab935af28ffbb0", "e5aed976b0cc"),
    ("city2bmacdc", "rein"): ("851652372e7343ec", "e1eb01e83eb2"),
    ("city2bmacdc", "rein_1024"): ("1250cf432a778bb1", "b7d34a9fc434"),
    ("city2bmacdc", "vltseg_1024"): ("2fb7094644cf1e50", "2f12821c07d6"),
}

# The setting paths each variant declares it changes (variant_changes); the values are in GEOMETRY.
CHANGED = {
    ("gta2cbm", "rein"): [
        "reference.test_resize", "targets[cityscapes].test_resize", "targets[mapillary].mapillary_mapping",
        "targets[mapillary].prehalve", "targets[mapillary].test_resize",
    ],
    ("gta2cbm", "vltseg"): [
        "inference.stride", "targets[bdd100k].test_resize", "targets[cityscapes].test_resize",
        "targets[mapillary].test_resize",
    ],
    ("gta2cbm", "tqdm"): ["source.split"],
    ("gta2cbm", "famix"): [
        "inference.crop_size", "inference.mode", "inference.stride", "source.split", "targets[bdd100k].test_resize",
        "targets[cityscapes].test_resize", "targets[mapillary].center_crop", "targets[mapillary].test_resize",
    ],
    ("city2bm", "rein"): [
        "reference.test_resize", "targets[mapillary].mapillary_mapping", "targets[mapillary].prehalve",
        "targets[mapillary].test_resize",
    ],
    ("city2bm", "rein_1024"): ["inference.crop_size", "inference.stride"],
    ("city2bm", "vltseg_1024"): ["inference.crop_size", "inference.stride", "targets[bdd100k].test_resize"],
    ("city2bm", "tqdm"): [],
    ("syn2cbm", "rein"): [
        "targets[cityscapes].test_resize", "targets[mapillary].mapillary_mapping", "targets[mapillary].prehalve",
        "targets[mapillary].test_resize",
    ],
    ("syn2cbm", "vltseg"): [
        "inference.stride", "targets[bdd100k].test_resize", "targets[cityscapes].test_resize",
        "targets[mapillary].test_resize",
    ],
    ("syn2cbm", "tqdm"): [
        "reference.num_classes_reported", "source.split", "targets[bdd100k].num_classes_reported",
        "targets[cityscapes].num_classes_reported", "targets[mapillary].num_classes_reported",
    ],
    ("syn2cbm", "famix"): [
        "inference.crop_size", "inference.mode", "inference.stride", "source.split", "targets[bdd100k].test_resize",
        "targets[cityscapes].test_resize", "targets[mapillary].center_crop", "targets[mapillary].test_resize",
    ],
    ("gtasyn2cbm", "rein"): [
        "reference.test_resize", "targets[cityscapes].test_resize", "targets[mapillary].mapillary_mapping",
        "targets[mapillary].prehalve", "targets[mapillary].test_resize",
    ],
    ("gtasyn2cbm", "vltseg"): [
        "inference.stride", "targets[bdd100k].test_resize", "targets[cityscapes].test_resize",
        "targets[mapillary].test_resize",
    ],
    ("city2acdc", "rein"): [
        "exports[acdc-test].test_resize", "reference.test_resize", "targets[acdc-fog].test_resize",
        "targets[acdc-night].test_resize", "targets[acdc-rain].test_resize", "targets[acdc-snow].test_resize",
    ],
    ("city2acdc", "rein_1024"): ["inference.crop_size", "inference.stride"],
    ("city2acdc", "vltseg_1024"): ["inference.crop_size", "inference.stride"],
    ("city2bmacdc", "rein"): [
        "exports[acdc-test].test_resize", "reference.test_resize", "targets[acdc].test_resize",
        "targets[mapillary].mapillary_mapping", "targets[mapillary].prehalve", "targets[mapillary].test_resize",
    ],
    ("city2bmacdc", "rein_1024"): ["inference.crop_size", "inference.stride"],
    ("city2bmacdc", "vltseg_1024"): ["inference.crop_size", "inference.stride", "targets[bdd100k].test_resize"],
}


def test_rebuilt_registry_lists_every_protocol_and_variant_in_order():
    registry, changes = build_registry()
    assert [(n, v) for n, variants in registry.items() for v in variants] == list(GEOMETRY)
    assert list(changes) == [key for key in GEOMETRY if key[1] != "default"]
    assert all(p.name == n and p.variant == v and not p.miniature
               for n, variants in registry.items() for v, p in variants.items())


def test_rebuilt_registry_is_read_only():
    registry, changes = build_registry()
    with pytest.raises(TypeError):
        registry["new"] = {}
    with pytest.raises(TypeError):
        registry["gta2cbm"]["new"] = registry["gta2cbm"]["default"]
    with pytest.raises(TypeError):
        changes[("gta2cbm", "new")] = {}


@pytest.mark.parametrize("name,variant", list(GEOMETRY))
def test_rebuilt_protocol_has_the_geometry_of_the_specs(name, variant):
    registry, _ = build_registry()
    assert _geometry(registry[name][variant]) == GEOMETRY[(name, variant)]


@pytest.mark.parametrize("name,variant", list(PINNED))
def test_rebuilt_protocol_matches_pinned_hashes_and_the_import_time_registry(name, variant):
    registry, _ = build_registry()
    p = registry[name][variant]
    assert (p.content_hash(), hashlib.sha256(p.description.encode("utf-8")).hexdigest()[:12]) == PINNED[(name, variant)]
    assert p == get_protocol(name, variant=variant)


@pytest.mark.parametrize("name,variant", list(CHANGED))
def test_rebuilt_variant_changes_name_exactly_what_differs_from_the_default(name, variant):
    registry, changes = build_registry()
    default, var = registry[name]["default"], registry[name][variant]
    assert sorted(changes[(name, variant)]) == CHANGED[(name, variant)]
    assert apply_changes(default, changes[(name, variant)]) == dataclasses.replace(
        var, variant="default", description=default.description)
    assert var.description.startswith(f"[{variant} variant: ") and var.description.endswith(f"] {default.description}")
