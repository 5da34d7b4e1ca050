"""Protocol lookups, defaults of a stored protocol file and error messages, written out in full."""

import dataclasses

import pytest

from benchmarks.protocols import (
    CenterCropSpec,
    GallerySpec,
    InferenceSpec,
    Protocol,
    SplitSpec,
    apply_changes,
    build_test_transform,
    get_protocol,
    load_split,
    miniature_twin,
    reported_classes,
    variant_changes,
)


def test_split_finds_targets_and_the_reference_by_key():
    p = get_protocol("gta2cbm")
    assert p.split("bdd100k") is p.targets[1] and p.split("mapillary") is p.targets[2]
    assert p.split("gta5") is p.reference
    with pytest.raises(KeyError) as err:
        p.split("acdc")
    assert err.value.args[0] == (
        "protocol 'gta2cbm' has no split 'acdc'; splits: ['cityscapes', 'bdd100k', 'mapillary', 'gta5']")


MINIMAL = {
    "name": "mine",
    "source": {"key": "gta5", "dataset": "gta5", "split": "all"},
    "targets": [{"key": "cityscapes", "dataset": "cityscapes", "split": "val", "test_resize": [2048, 1024]}],
    "reference": {"key": "gta5", "dataset": "gta5", "split": "val"},
}


def test_from_dict_fills_the_documented_defaults():
    p = Protocol.from_dict(MINIMAL)
    assert (p.description, p.aggregation, p.miniature, p.variant) == ("", "mean", False, "default")
    assert p.inference == InferenceSpec("slide", (512, 512), (341, 341), False, (1.0,))
    assert p.targets == (SplitSpec("cityscapes", "cityscapes", "val", (2048, 1024)),)
    assert (p.extra_sources, p.exports) == ((), ())
    with_scales = Protocol.from_dict({**MINIMAL, "inference": {"mode": "whole", "crop_size": None, "stride": None,
                                                                "scales": [0.5, 1.0]}})
    assert with_scales.inference == InferenceSpec("whole", None, None, False, (0.5, 1.0))


def test_from_dict_rejects_an_unknown_aggregation():
    with pytest.raises(ValueError, match="Protocol.aggregation must be one of"):
        Protocol.from_dict({**MINIMAL, "aggregation": "median"})


def test_variant_changes_of_the_default_is_empty():
    assert variant_changes("gta2cbm", "default") == {}
    assert variant_changes("city2bm", "tqdm") == {}  # tqdm's c2b-512 settings are the harmonised default


def test_apply_changes_replaces_a_whole_split_and_names_bad_paths():
    p = get_protocol("gta2cbm")
    bdd = SplitSpec("bdd100k", "bdd100k", "val", (1024, 512))
    q = apply_changes(p, {"targets[bdd100k]": bdd})
    assert q.targets == (p.targets[0], bdd, p.targets[2]) and q.reference == p.reference
    with pytest.raises(ValueError) as err:
        apply_changes(p, {"targets[bdd100k.test_resize": (1, 1)})
    assert err.value.args[0] == "bad setting path segment 'targets[bdd100k'"
    with pytest.raises(KeyError) as err:
        apply_changes(p, {"targets[kitti].test_resize": (1, 1)})
    assert err.value.args[0] == "no unique split 'kitti' in targets (['cityscapes', 'bdd100k', 'mapillary'])"


def test_center_crop_spec_validation_in_full():
    assert type(CenterCropSpec(10.0, (5, 5)).height) is int and CenterCropSpec(1, (1, 1)).height == 1
    for height in (0, -3, 1.5):
        with pytest.raises(ValueError) as err:
            CenterCropSpec(height, (5, 5))
        assert err.value.args[0] == f"CenterCropSpec.height must be a positive int, got {height!r}"
    with pytest.raises(ValueError) as err:
        CenterCropSpec(5, 5)
    assert err.value.args[0] == "CenterCropSpec.size (h, w) must be a pair of ints (h, w) or None, got 5"


def test_build_test_transform_carries_every_setting_of_the_split():
    from datasets.transforms import HeightCenterCrop

    crop = CenterCropSpec(1536, (1536, 1024), label_pad=0, image_pad=7)
    split = SplitSpec("mapillary", "mapillary", "validation", (2048, 1024), center_crop=crop)
    tf = build_test_transform(split)
    assert (tf.resize, tf.prehalve) == ((2048, 1024), False)
    assert tf.center_crop == HeightCenterCrop(height=1536, size=(1536, 1024), image_pad=7, label_pad=0)
    halved = build_test_transform(SplitSpec("mapillary", "mapillary", "validation", (1024, 512), prehalve=True))
    assert (halved.resize, halved.prehalve, halved.center_crop) == ((1024, 512), True, None)


def test_reported_classes_error_in_full():
    with pytest.raises(ValueError) as err:
        reported_classes(17)
    assert err.value.args[0] == "num_classes_reported must be one of [13, 16, 19], got 17"


def test_center_crop_pads_are_bytes():
    for name in ("label_pad", "image_pad"):
        assert getattr(CenterCropSpec(5, (5, 5), **{name: 255}), name) == 255
        assert getattr(CenterCropSpec(5, (5, 5), **{name: 0}), name) == 0
        for bad in (256, -1, 2.5):
            with pytest.raises(ValueError) as err:
                CenterCropSpec(5, (5, 5), **{name: bad})
            assert err.value.args[0] == f"CenterCropSpec.{name} must be an int in 0..255, got {bad!r}"
    assert type(CenterCropSpec(5, (5, 5), label_pad=3.0, image_pad=4.0).label_pad) is int


def test_load_split_passes_loader_split_mapping_transform_and_options(monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "build_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or "ds")
    transform = object()
    rein = SplitSpec("mapillary", "mapillary", "validation", mapillary_mapping="rein")
    assert load_split(rein, "/data", transform, max_items=3) == "ds"
    assert load_split(SplitSpec("bdd100k", "bdd100k", "val"), "/data") == "ds"
    assert calls == [
        (("mapillary", "validation", "/data"), {"mapillary_mapping": "rein", "transform": transform, "max_items": 3}),
        (("bdd100k", "val", "/data"), {"mapillary_mapping": "robustnet", "transform": None}),
    ]


def test_miniature_twin_written_out_for_every_kind_of_split():
    base = get_protocol("city2acdc", variant="rein")
    p = dataclasses.replace(
        base, source=SplitSpec("cityscapes", "cityscapes", "train", (1024, 512)),
        extra_sources=(SplitSpec("gta5", "gta5", "all", (1280, 720)),),
        inference=InferenceSpec("slide", (1024, 1024), (683, 683), flip=True, scales=(0.75, 1.0)))
    expected = Protocol(
        name="city2acdc", variant="rein", miniature=True,
        description=f"[miniature twin, native-size images, slide 256/170] {base.description}",
        source=SplitSpec("cityscapes", "cityscapes", "train"), extra_sources=(SplitSpec("gta5", "gta5", "all"),),
        targets=tuple(SplitSpec(f"acdc-{c}", "acdc", f"{c}/val") for c in ("fog", "night", "rain", "snow")),
        reference=SplitSpec("cityscapes", "cityscapes", "val"), exports=(SplitSpec("acdc-test", "acdc", "test"),),
        inference=InferenceSpec("slide", (256, 256), (170, 170), flip=True, scales=(0.75, 1.0)))
    assert miniature_twin(p) == expected
    assert miniature_twin(expected) is expected


def test_miniature_twin_keeps_whole_image_inference_and_shrinks_the_centre_crop():
    famix = get_protocol("gta2cbm", variant="famix")
    crop = CenterCropSpec(1536, (1536, 1024), label_pad=0, image_pad=7)
    p = dataclasses.replace(famix, targets=famix.targets[:2] + (
        dataclasses.replace(famix.targets[2], center_crop=crop),))
    twin = miniature_twin(p)
    assert twin.inference == InferenceSpec("whole", None, None, False, (1.0,))
    assert twin.targets[2] == SplitSpec("mapillary", "mapillary", "validation", mapillary_mapping="robustnet",
                                        center_crop=CenterCropSpec(256, (256, 256), label_pad=0, image_pad=7))


@pytest.mark.parametrize("make,message", [
    (lambda: InferenceSpec(crop_size=5), "InferenceSpec.crop_size must be a pair of ints (h, w) or None, got 5"),
    (lambda: InferenceSpec(stride=(0, 5)), "InferenceSpec.stride must hold two positive ints, got (0, 5)"),
    (lambda: InferenceSpec(crop_size=(5.5, 5)), "InferenceSpec.crop_size must hold two positive ints, got (5.5, 5)"),
    (lambda: SplitSpec("c", "cityscapes", "val", (1, 2, 3)),
     "SplitSpec.test_resize (long, short) must be a pair of ints (h, w) or None, got (1, 2, 3)"),
])
def test_pair_messages_in_full(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert err.value.args[0] == message


def test_inference_spec_validation_in_full():
    assert InferenceSpec(flip=1).flip is True and InferenceSpec(scales=[1, 2]).scales == (1.0, 2.0)
    with pytest.raises(ValueError) as err:
        InferenceSpec(stride=(5, 0))
    assert err.value.args[0] == "InferenceSpec.stride must hold two positive ints, got (5, 0)"
    with pytest.raises(ValueError) as err:
        InferenceSpec(mode="slide", stride=None)
    assert err.value.args[0] == (
        "InferenceSpec(mode='slide') needs crop_size and stride, e.g. (512, 512) and (341, 341)")
    for scales in ((), (0.0,), (-1.0,), (float("inf"),), (1.0, float("nan"))):
        with pytest.raises(ValueError) as err:
            InferenceSpec(scales=scales)
        assert err.value.args[0] == f"InferenceSpec.scales must be non-empty positive floats, got {scales!r}"


def test_split_spec_validation_in_full():
    s = SplitSpec("c", "cityscapes", "val", num_classes_reported=16.0, prehalve=1)
    assert type(s.num_classes_reported) is int and s.prehalve is True
    with pytest.raises(ValueError) as err:
        SplitSpec("", "cityscapes", "val")
    assert err.value.args[0] == "SplitSpec.key must be a non-empty display name, e.g. 'cityscapes'"


def test_protocol_validation_and_normalisation_in_full():
    p = Protocol.from_dict(MINIMAL)
    city, bdd = SplitSpec("cityscapes", "cityscapes", "val"), SplitSpec("bdd100k", "bdd100k", "val")
    acdc = SplitSpec("acdc-test", "acdc", "test")
    q = dataclasses.replace(p, targets=[city, bdd], extra_sources=[SplitSpec("synthia", "synthia", "all")],
                            exports=[acdc], gallery={"images_per_target": 2, "seed": 5}, miniature=1)
    assert type(q.targets) is tuple and type(q.extra_sources) is tuple and type(q.exports) is tuple
    assert q.gallery == GallerySpec(2, 5) and q.miniature is True
    for change, message in (
        ({"gallery": "x"}, "Protocol.gallery must be a GallerySpec, got 'x'"),
        ({"exports": (acdc, acdc)}, "Protocol 'mine': export keys must be unique, got ['acdc-test', 'acdc-test']"),
        ({"targets": ()}, "Protocol 'mine' needs at least one target split"),
        ({"targets": (city, city)}, "Protocol 'mine': target keys must be unique, got ['cityscapes', 'cityscapes']"),
        ({"reference": city}, "Protocol 'mine': reference key 'cityscapes' clashes with a target key"),
    ):
        with pytest.raises(ValueError) as err:
            dataclasses.replace(p, **change)
        assert err.value.args[0] == message
    with pytest.raises(ValueError) as err:
        SplitSpec("m", "mapillary", "validation", center_crop=(5, 5))
    assert err.value.args[0] == "SplitSpec.center_crop must be a CenterCropSpec or None, got (5, 5)"


def test_canonical_json_is_ascii_compact_and_sorted():
    p = dataclasses.replace(Protocol.from_dict(MINIMAL), name="münchen", description="not hashed")
    text = p.canonical_json()
    assert text.startswith('{"aggregation":"mean","inference":{"crop_size":[512,512],"flip":false,"mode":"slide",')
    assert '"name":"m\\u00fcnchen"' in text and "description" not in text and text.isascii()
