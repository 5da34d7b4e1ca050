"""methods.released: the registry of released checkpoints agrees with the harness (methods, backbones,
protocols, variants, official files) and with the published numbers it points to."""

from __future__ import annotations

import csv

import pytest
import torch

from benchmarks.protocols import list_protocols, list_variants
from methods.registry import get_method_class
from methods.released import NO_RELEASE, RELEASED_CHECKPOINTS, get_released
from reports.reported import REPORTED_CSV

SIX_METHODS = {"tqdm", "rein", "set", "famix", "vireo", "vltseg"}
CSV_METHOD = {"rein": "Rein", "tqdm": "tqdm", "famix": "FAMix", "vltseg": "VLTSeg"}


def csv_lines() -> dict[int, dict[str, str]]:
    """reports/reported.csv read with the csv module: line number (header = 1) -> row."""
    with open(REPORTED_CSV, newline="", encoding="utf-8") as f:
        return {i: row for i, row in enumerate(csv.DictReader(f), start=2)}


def test_each_of_the_six_methods_has_releases_or_a_sourced_statement_that_it_has_none():
    with_releases = {c.method for c in RELEASED_CHECKPOINTS.values()}
    assert with_releases == {"rein", "tqdm", "famix", "vltseg"}
    assert with_releases | set(NO_RELEASE) == SIX_METHODS and not with_releases & set(NO_RELEASE)
    assert "JingjunYi/SET" in NO_RELEASE["set"] and "anonymouse-9c53tp182bvz/Vireo" in NO_RELEASE["vireo"]
    with pytest.raises(KeyError, match="unknown released checkpoint 'nope'"):
        get_released("nope")


def test_entries_agree_with_the_harness():
    assert len({c.path for c in RELEASED_CHECKPOINTS.values()}) == len(RELEASED_CHECKPOINTS)  # no two in one place
    # Rein's releases all publish the same name: the release tag keeps them apart
    rein_names = [c.path for c in RELEASED_CHECKPOINTS.values() if c.file == "iter_40000_published.pth"]
    assert len(rein_names) == 10 and "rein/GTAV+EVA-L/iter_40000_published.pth" in rein_names
    for c in RELEASED_CHECKPOINTS.values():
        assert c.facts and c.url.startswith("https://"), c.id
        if c.backbone is None:
            assert not c.evaluable and c.why_not_evaluable() == "backbone not built by the harness"
            continue
        assert c.backbone in get_method_class(c.method).backbones, c.id
        for protocol, variant in c.evaluations:
            assert protocol in list_protocols(), c.id
            assert variant is None or variant in list_variants(protocol), (c.id, protocol, variant)
    assert RELEASED_CHECKPOINTS["rein-dinov2-gta5"].url == \
        "https://github.com/w1oves/Rein/releases/download/GTAV/iter_40000_published.pth"
    assert RELEASED_CHECKPOINTS["rein-dinov2-gta5syn"].url.endswith("/GTAV%2BSynthia/iter_40000_published.pth")
    assert RELEASED_CHECKPOINTS["vltseg-gta-1"].url == \
        "https://zenodo.org/records/14766160/files/vltseg_checkpoint_gta_1.pth?download=1"
    evaluable = sorted(c.id for c in RELEASED_CHECKPOINTS.values() if c.evaluable)
    assert len(evaluable) == 16  # Rein 4, tqdm 3, FAMix 3, VLTSeg 6


def test_reported_lines_point_at_the_numbers_each_release_names():
    lines = csv_lines()

    def cells(checkpoint_id):
        return [(lines[n]["source_dataset"], lines[n]["target_dataset"], lines[n]["miou"])
                for n in RELEASED_CHECKPOINTS[checkpoint_id].reported_lines]

    assert cells("rein-dinov2-gta5") == [("GTA5", "Cityscapes", "66.7"), ("GTA5", "BDD100K", "60.0")]
    assert cells("rein-dinov2-city-1024") == [("Cityscapes", "ACDC (test avg 4 cond.)", "77.56")]
    assert cells("tqdm-eva02-clip-vit-l-city") == [("Cityscapes", "BDD100K", "64.72"),
                                                   ("Cityscapes", "Mapillary", "76.15")]
    assert cells("famix-rn50-gta5") == [("GTA5", "Cityscapes", "48.51"), ("GTA5", "Mapillary", "52.39")]
    assert cells("vltseg-gta-1") == [("GTA5", "Cityscapes", "65.23")]
    for c in RELEASED_CHECKPOINTS.values():
        for n in c.reported_lines:
            assert lines[n]["method"].startswith(CSV_METHOD[c.method]), (c.id, n, lines[n]["method"])


def test_needs_are_the_official_files_the_harness_loads_first():
    """``needs`` equals the files the method built at paper scale (on the meta device) loads before a checkpoint."""
    seen = set()
    for c in RELEASED_CHECKPOINTS.values():
        if not c.evaluable or (c.method, c.backbone) in seen:
            continue
        seen.add((c.method, c.backbone))
        cls = get_method_class(c.method)
        with torch.device("meta"):
            model = cls(cls.default_config(c.backbone))
        assert set(c.needs) == set(model.pretrained_loaders()), c.id
    assert len(seen) == 8
