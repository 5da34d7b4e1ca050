import dataclasses
import json

import pytest

from benchmarks.protocols import (
    InferenceSpec,
    Protocol,
    SplitSpec,
    get_protocol,
    keep_ratio_size,
    list_protocols,
    list_variants,
    miniature_twin,
    protocol_diff,
)

# Computed once from the gta2cbm definition and pinned: if this changes, every stored gta2cbm result
# becomes incomparable. Change it only together with a deliberate protocol change.
GTA2CBM_HASH = "1fa9ab96dc2027eb"


def test_registry_lists_protocols_and_variants():
    assert {"gta2cbm", "city2bm"} <= set(list_protocols())
    assert "default" in list_variants("gta2cbm")
    with pytest.raises(KeyError, match="registered protocols"):
        get_protocol("nope")
    with pytest.raises(KeyError, match="variants"):
        get_protocol("gta2cbm", variant="nope")


def test_gta2cbm_definition():
    p = get_protocol("gta2cbm")
    assert (p.source.dataset, p.source.split) == ("gta5", "all")
    assert [(t.key, t.dataset, t.split, t.test_resize) for t in p.targets] == [
        ("cityscapes", "cityscapes", "val", (2048, 1024)),
        ("bdd100k", "bdd100k", "val", (1280, 720)),
        ("mapillary", "mapillary", "validation", (2048, 1024)),
    ]
    assert p.targets[2].mapillary_mapping == "robustnet"
    assert (p.reference.dataset, p.reference.split) == ("gta5", "val")
    assert p.inference == InferenceSpec("slide", (512, 512), (341, 341), False, (1.0,))
    assert p.aggregation == "mean" and not p.miniature and p.variant == "default"
    assert [s.key for s in p.evaluation_splits] == ["cityscapes", "bdd100k", "mapillary", "gta5"]


def test_city2bm_definition():
    p = get_protocol("city2bm")
    assert (p.source.dataset, p.source.split) == ("cityscapes", "train")
    assert [t.key for t in p.targets] == ["bdd100k", "mapillary"]
    assert (p.reference.dataset, p.reference.split) == ("cityscapes", "val")


def test_hash_is_pinned_and_stable():
    p = get_protocol("gta2cbm")
    assert p.content_hash() == GTA2CBM_HASH
    assert len(p.content_hash()) == 16
    assert Protocol.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert Protocol.from_dict(p.to_dict()).content_hash() == GTA2CBM_HASH


def test_hash_ignores_description_only():
    p = get_protocol("gta2cbm")
    assert dataclasses.replace(p, description="something else").content_hash() == p.content_hash()


@pytest.mark.parametrize("change", [
    lambda p: dataclasses.replace(p, name="x"),
    lambda p: dataclasses.replace(p, variant="rein"),
    lambda p: dataclasses.replace(p, miniature=True),
    lambda p: dataclasses.replace(p, source=dataclasses.replace(p.source, split="train")),
    lambda p: dataclasses.replace(p, reference=dataclasses.replace(p.reference, test_resize=(1280, 720))),
    lambda p: dataclasses.replace(p, targets=p.targets[:2]),
    lambda p: dataclasses.replace(p, targets=(p.targets[1], p.targets[0], p.targets[2])),
    lambda p: dataclasses.replace(p, targets=p.targets[:2] + (
        dataclasses.replace(p.targets[2], mapillary_mapping="rein"),)),
    lambda p: dataclasses.replace(p, targets=(dataclasses.replace(p.targets[0], test_resize=(1024, 512)),)
                                  + p.targets[1:]),
    lambda p: dataclasses.replace(p, targets=(dataclasses.replace(p.targets[0], num_classes_reported=16),)
                                  + p.targets[1:]),
    lambda p: dataclasses.replace(p, inference=dataclasses.replace(p.inference, stride=(426, 426))),
    lambda p: dataclasses.replace(p, inference=dataclasses.replace(p.inference, crop_size=(1024, 1024))),
    lambda p: dataclasses.replace(p, inference=dataclasses.replace(p.inference, flip=True)),
    lambda p: dataclasses.replace(p, inference=dataclasses.replace(p.inference, scales=(0.5, 1.0))),
    lambda p: dataclasses.replace(p, inference=InferenceSpec(mode="whole", crop_size=None, stride=None)),
])
def test_hash_changes_with_any_field(change):
    p = get_protocol("gta2cbm")
    q = change(p)
    assert q.content_hash() != p.content_hash()
    assert protocol_diff(p, q)


def test_miniature_twin():
    full = get_protocol("gta2cbm")
    mini = get_protocol("gta2cbm", miniature=True)
    assert mini.miniature and mini.name == full.name
    assert mini.content_hash() != full.content_hash()
    assert all(s.test_resize is None for s in (mini.source, *mini.targets, mini.reference))
    assert (mini.inference.crop_size, mini.inference.stride) == ((256, 256), (170, 170))
    assert [t.key for t in mini.targets] == [t.key for t in full.targets]
    assert mini.targets[2].mapillary_mapping == "robustnet"
    assert miniature_twin(mini) == mini
    assert get_protocol("gta2cbm", miniature=True).content_hash() == mini.content_hash()
    whole = dataclasses.replace(full, inference=InferenceSpec(mode="whole", crop_size=None, stride=None))
    assert miniature_twin(whole).inference.mode == "whole"


def test_protocol_diff_names_settings():
    a = get_protocol("gta2cbm")
    assert protocol_diff(a, dataclasses.replace(a, description="x")) == {}
    b = dataclasses.replace(a, targets=(dataclasses.replace(a.targets[0], test_resize=(1024, 512)),) + a.targets[1:],
                            inference=dataclasses.replace(a.inference, stride=(426, 426)))
    d = protocol_diff(a, b)
    assert d == {"targets[cityscapes].test_resize": ((2048, 1024), (1024, 512)),
                 "inference.stride": ((341, 341), (426, 426))}
    d = protocol_diff(a, get_protocol("city2bm"))
    assert d["source.split"] == ("all", "train")
    assert d["targets.keys"] == (("cityscapes", "bdd100k", "mapillary"), ("bdd100k", "mapillary"))


def test_validation_errors():
    with pytest.raises(ValueError, match="mode"):
        InferenceSpec(mode="sliding")
    with pytest.raises(ValueError, match="crop_size"):
        InferenceSpec(mode="slide", crop_size=None)
    with pytest.raises(ValueError, match="dataset"):
        SplitSpec("x", "kitti", "val")
    with pytest.raises(ValueError, match="mapillary_mapping"):
        SplitSpec("m", "mapillary", "validation", mapillary_mapping="openseg")
    with pytest.raises(ValueError, match="only meaningful"):
        SplitSpec("c", "cityscapes", "val", mapillary_mapping="rein")
    assert SplitSpec("m", "mapillary", "validation").mapillary_mapping == "robustnet"
    d = get_protocol("gta2cbm").to_dict()
    d["extra"] = 1
    with pytest.raises(ValueError, match="unknown keys"):
        Protocol.from_dict(d)


def test_keep_ratio_size_matches_mmseg_examples():
    # datasets.md §8.1: (h, w) -> (h', w')
    assert keep_ratio_size(1024, 2048, (1024, 512)) == (512, 1024)
    assert keep_ratio_size(720, 1280, (1280, 720)) == (720, 1280)
    assert keep_ratio_size(1052, 1914, (1280, 720)) == (704, 1280)
    assert keep_ratio_size(3024, 4032, (2048, 1024)) == (1024, 1365)
    assert keep_ratio_size(1512, 2016, (1024, 512)) == (512, 683)
    assert keep_ratio_size(720, 1280, (2048, 1024)) == (1024, 1820)
    assert keep_ratio_size(300, 400, None) == (300, 400)


def test_gallery_rule_is_seeded_by_name_and_not_hashed():
    import hashlib

    from benchmarks.protocols import GallerySpec, list_protocols

    names = [f"frankfurt_{i:06d}_000019" for i in range(30)]
    rank = {n: hashlib.sha256(f"0/cityscapes/{n}".encode()).hexdigest() for n in names}
    expected = sorted(names, key=rank.get)[:4]  # the rule written out
    p = get_protocol("gta2cbm")
    assert p.gallery == GallerySpec(images_per_target=4, seed=0)
    assert p.gallery.select(names, "cityscapes") == expected
    assert p.gallery.select(list(reversed(names)), "cityscapes") == expected  # not the loader's order
    assert p.gallery.select(names, "bdd100k") != expected  # each target draws its own images
    assert GallerySpec(4, seed=1).select(names, "cityscapes") != expected
    assert get_protocol("gta2cbm", miniature=True).gallery == p.gallery
    # not part of the hash (it changes no number) and omitted from the dict at its default
    other = dataclasses.replace(p, gallery=GallerySpec(8, seed=3))
    assert other.content_hash() == p.content_hash() == GTA2CBM_HASH and protocol_diff(p, other) == {}
    assert "gallery" not in p.to_dict() and other.to_dict()["gallery"] == {"images_per_target": 8, "seed": 3}
    assert Protocol.from_dict(other.to_dict()) == other
    assert all("gallery" not in get_protocol(n, variant=v).to_dict() for n in list_protocols() for v in list_variants(n))
    with pytest.raises(ValueError, match="images_per_target"):
        GallerySpec(images_per_target=-1)
