"""Every protocol of the field as data: definitions, pinned hashes, paper-faithful variants that change
exactly the settings they name, miniature twins that load on the miniature benchmark."""

import dataclasses
import json

import pytest

from benchmarks.protocols import (
    CenterCropSpec,
    Protocol,
    SplitSpec,
    apply_changes,
    build_test_transform,
    get_protocol,
    list_protocols,
    list_variants,
    load_split,
    miniature_twin,
    protocol_diff,
    reported_classes,
    variant_changes,
)

# Pinned: a change here makes every stored result of that protocol incomparable (deliberate changes only).
# gta2cbm and city2bm kept their hashes when extra_sources / exports / prehalve / center_crop were added.
DEFAULT_HASHES = {
    "gta2cbm": "1fa9ab96dc2027eb",
    "city2bm": "27fc208018134e9f",
    "syn2cbm": "fb8e784f58f5f35b",
    "gtasyn2cbm": "ce12999c1fe855ab",
    "city2acdc": "65f90cdab52881fd",
    "city2bmacdc": "4fab935af28ffbb0",
}
ALL = [(n, v) for n in DEFAULT_HASHES for v in list_variants(n)]


def test_registry_and_pinned_default_hashes():
    assert set(list_protocols()) == set(DEFAULT_HASHES)
    for name, h in DEFAULT_HASHES.items():
        assert get_protocol(name).content_hash() == h, name
    assert {"rein", "tqdm", "famix", "vltseg"} <= set(list_variants("gta2cbm"))
    assert {"rein", "rein_1024", "vltseg_1024"} <= set(list_variants("city2acdc"))
    # recipe variant names of the methods resolve
    assert "tqdm" in list_variants("syn2cbm") and "vltseg" in list_variants("gtasyn2cbm")


def test_definitions_and_rpd_references():
    syn = get_protocol("syn2cbm")
    assert (syn.source.dataset, syn.source.split) == ("synthia", "all")
    assert (syn.reference.dataset, syn.reference.split) == ("synthia", "val")
    assert [t.key for t in syn.targets] == ["cityscapes", "bdd100k", "mapillary"]
    assert all(t.num_classes_reported == 19 for t in syn.targets)  # 19 by default (datasets.md §2)

    both = get_protocol("gtasyn2cbm")
    assert [(s.dataset, s.split) for s in both.sources] == [("gta5", "all"), ("synthia", "all")]
    assert (both.reference.dataset, both.reference.split) == ("gta5", "val")

    acdc = get_protocol("city2acdc")
    assert [(t.key, t.split, t.test_resize) for t in acdc.targets] == [
        (f"acdc-{c}", f"{c}/val", (1920, 1080)) for c in ("fog", "night", "rain", "snow")]
    assert acdc.reference.key == "cityscapes" and acdc.aggregation == "mean"
    assert [(e.key, e.dataset, e.split) for e in acdc.exports] == [("acdc-test", "acdc", "test")]

    bma = get_protocol("city2bmacdc")
    assert [t.key for t in bma.targets] == ["bdd100k", "mapillary", "acdc"] and bma.targets[2].split == "val"
    assert bma.exports == acdc.exports and bma.reference.key == "cityscapes"
    assert "exports" not in get_protocol("gta2cbm").to_dict()  # defaults left out: old hashes kept


@pytest.mark.parametrize("name,variant", [(n, v) for n, v in ALL if v != "default"])
def test_each_variant_changes_exactly_the_settings_it_names(name, variant):
    default, var = get_protocol(name), get_protocol(name, variant=variant)
    changes = variant_changes(name, variant)
    diff = protocol_diff(default, var)
    assert diff.pop("variant") == ("default", variant)
    # every differing setting is one the variant names, and every named setting differs
    assert all(any(k == c or k.startswith(c + ".") for c in changes) for k in diff), (sorted(diff), changes)
    assert all(any(k == c or k.startswith(c + ".") for k in diff) for c in changes), (sorted(diff), changes)
    assert var.content_hash() != default.content_hash()
    assert apply_changes(default, changes) == dataclasses.replace(var, variant="default",
                                                                  description=default.description)


def test_paper_settings_of_the_variants():
    rein = get_protocol("gta2cbm", variant="rein")
    c, b, m = rein.targets
    assert c.test_resize == (1024, 512) and b.test_resize == (1280, 720)
    assert (m.prehalve, m.test_resize, m.mapillary_mapping) == (True, (1024, 512), "rein")
    assert rein.inference.stride == (341, 341) and rein.source.split == "all"

    tqdm = get_protocol("gta2cbm", variant="tqdm")
    assert tqdm.source.split == "train" and [t.test_resize for t in tqdm.targets] == [
        (2048, 1024), (1280, 720), (2048, 1024)] and tqdm.targets[2].mapillary_mapping == "robustnet"
    syn_tqdm = get_protocol("syn2cbm", variant="tqdm")
    assert {t.num_classes_reported for t in syn_tqdm.targets} == {16} and syn_tqdm.reference.num_classes_reported == 16

    famix = get_protocol("gta2cbm", variant="famix")
    assert (famix.inference.mode, famix.inference.crop_size) == ("whole", None)
    assert famix.targets[0].test_resize is None and famix.targets[1].test_resize is None
    assert famix.targets[2].center_crop == CenterCropSpec(1536, (1536, 1536), label_pad=0, image_pad=0)
    assert famix.targets[2].mapillary_mapping == "robustnet"

    vlt = get_protocol("gta2cbm", variant="vltseg")
    assert [t.test_resize for t in vlt.targets] == [(1024, 512)] * 3  # BDD100K too
    assert (vlt.inference.crop_size, vlt.inference.stride) == ((512, 512), (426, 426))

    acdc = get_protocol("city2acdc", variant="rein")
    assert {t.test_resize for t in acdc.targets} == {(960, 540)} and acdc.reference.test_resize == (1024, 512)
    assert acdc.exports[0].test_resize == (960, 540)
    big = get_protocol("city2acdc", variant="rein_1024")
    assert (big.inference.crop_size, big.inference.stride) == ((1024, 1024), (683, 683))
    v1024 = get_protocol("city2bm", variant="vltseg_1024")
    assert v1024.targets[0].test_resize == (2048, 1024) and v1024.inference.stride == (768, 768)


@pytest.mark.parametrize("name,variant", ALL)
def test_round_trip_and_miniature_twin(name, variant):
    p = get_protocol(name, variant=variant)
    for q in (p, miniature_twin(p)):
        assert Protocol.from_dict(json.loads(json.dumps(q.to_dict()))) == q
        assert Protocol.from_dict(q.to_dict()).content_hash() == q.content_hash()
    mini = get_protocol(name, miniature=True, variant=variant)
    assert mini.miniature and mini.content_hash() != p.content_hash()
    splits = (*mini.sources, *mini.targets, mini.reference, *mini.exports)
    assert all(s.test_resize is None for s in splits)
    for full, small in zip((*p.targets,), mini.targets):
        assert (small.prehalve, small.mapillary_mapping, small.num_classes_reported) == (
            full.prehalve, full.mapillary_mapping, full.num_classes_reported)
        if full.center_crop is not None:
            assert small.center_crop == CenterCropSpec(256, (256, 256), label_pad=full.center_crop.label_pad)


def test_reported_classes_and_validation():
    assert reported_classes(19) == tuple(range(19))
    assert set(range(19)) - set(reported_classes(16)) == {9, 14, 16}
    assert set(range(19)) - set(reported_classes(13)) == {3, 4, 5, 9, 14, 16}
    with pytest.raises(ValueError, match="num_classes_reported"):
        SplitSpec("c", "cityscapes", "val", num_classes_reported=17)
    with pytest.raises(ValueError, match="label_pad"):
        CenterCropSpec(10, (10, 10), label_pad=300)
    with pytest.raises(ValueError, match="source keys"):
        dataclasses.replace(get_protocol("gtasyn2cbm"), extra_sources=(SplitSpec("gta5", "gta5", "val"),))
    with pytest.raises(KeyError, match="variants"):
        variant_changes("city2acdc", "famix")


def test_miniature_twins_load_on_the_miniature_benchmark(tmp_path_factory):
    from datasets.miniature import MiniatureParams, generate_miniature

    root = tmp_path_factory.mktemp("mini") / "root"
    generate_miniature(root, MiniatureParams(seed=1, count_scale=0.05))
    seen = set()
    for name, variant in ALL:
        p = get_protocol(name, miniature=True, variant=variant)
        for s in (*p.sources, *p.targets, p.reference, *p.exports):
            sig = (s.dataset, s.split, s.prehalve, s.center_crop, s.mapillary_mapping)
            if sig in seen:
                continue
            seen.add(sig)
            ds = load_split(s, root, build_test_transform(s))
            assert len(ds) > 0, (name, variant, s.key)
            item = ds[0]
            h, w = item["ori_size"]
            if s.prehalve:
                raw = load_split(s, root)[0]["label"]
                assert (h, w) == (raw.shape[0] // 2, raw.shape[1] // 2)
            if s.center_crop is not None:
                assert (h, w) == (256, 256) and tuple(item["image"].shape[-2:]) == (256, 256)
            if s in p.exports:
                assert (item["label"] == 255).all()  # no public ground truth
    assert {d for d, *_ in seen} == {"gta5", "synthia", "cityscapes", "bdd100k", "mapillary", "acdc"}
