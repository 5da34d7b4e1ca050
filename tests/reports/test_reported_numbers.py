"""The published numbers shipped in the package and the harness -> paper name map."""

import csv
import re
from pathlib import Path

import pytest

from reports.reported import (
    NOTES_CSV,
    REPORTED_CSV,
    avg_label,
    backbone_display,
    harness_names,
    harness_protocol,
    load_reported,
    reference_text,
    reported_matches,
)

SHARED_CSV = Path(__file__).resolve().parents[3] / "shared" / "specs" / "reported.csv"


def test_package_copy_matches_shared_specs():
    if not SHARED_CSV.is_file():
        pytest.skip(f"{SHARED_CSV} not available")
    assert REPORTED_CSV.read_bytes() == SHARED_CSV.read_bytes(), "reports/reported.csv must be a verbatim copy"


def test_every_csv_row_is_loaded_with_its_line_and_exact_text():
    with open(REPORTED_CSV, newline="") as f:
        raw = list(csv.DictReader(f))
    rows = [c for c in load_reported() if c.origin == "row"]
    assert len(rows) == len(raw) == 101
    for cell, r in zip(rows, raw):
        assert (cell.method, cell.backbone, cell.source, cell.target, cell.text) == (
            r["method"], r["backbone"], r["source_dataset"], r["target_dataset"], r["miou"])
    assert rows[0].line == 2 and rows[0].text == "68.88"
    assert [c.text for c in rows if c.method == "Rein" and c.target == "Cityscapes" and c.source == "GTA5"
            and c.backbone == "DINOv2-L"] == ["66.40", "66.7"]


def test_note_transcriptions_quote_the_cited_note():
    lines = {i: r for i, r in enumerate(csv.DictReader(open(REPORTED_CSV, newline="")), start=2)}
    notes = [c for c in load_reported() if c.origin == "note"]
    assert len(notes) == sum(1 for _ in open(NOTES_CSV)) - 1
    for c in notes:
        src = lines[c.line]
        numbers = re.findall(r"\d+(?:\.\d+)?", src["note"]) + [src["miou"]]
        assert c.text in numbers, f"{c} not found in the note of line {c.line}: {src['note']!r}"
        assert c.source.split("+")[0] == src["source_dataset"].split("+")[0] or c.method.startswith("VLTSeg")


def test_name_maps():
    assert backbone_display("eva02_clip_vitl14", "rein") == "EVA02-L"
    assert backbone_display("eva02_clip_vitl14", "tqdm") == "EVA02-CLIP-L/14"
    assert backbone_display("clip_vitb16", "tqdm") == "CLIP ViT-B/16"
    assert backbone_display("dinov2_vitl14", "frozen_m2f") == "DINOv2-L"
    assert harness_names("Frozen backbone+M2F", "DINOv2-L") == ("frozen_m2f", "dinov2_vitl14")
    assert harness_names("WildNet", "RN101") is None
    assert harness_protocol("GTA5", "Mapillary") == "gta2cbm"
    assert harness_protocol("GTA5", "Avg(C/B/M)") == "gta2cbm"
    assert harness_protocol("Cityscapes", "BDD100K") == "city2bm"
    assert harness_protocol("Cityscapes", "ACDC-fog") == ""
    assert avg_label(["Cityscapes", "BDD100K", "Mapillary"]) == "Avg(C/B/M)"
    assert "tqdm" in reference_text("tqdmT1") and "#48" in reference_text("Rein#48")


def test_reported_matches_prefers_the_paper_table():
    hits = reported_matches("rein", "dinov2_vitl14", "GTA5", "Cityscapes")
    assert [(h.reference, h.text) for h in hits] == [("tqdmT1", "66.40"), ("ReinRD", "66.7")]
    assert reported_matches("rein", "eva02_clip_vitl14", "GTA5", "Avg(C/B/M)")[0].text == "63.60"
    assert reported_matches("tqdm", "eva02_clip_vitl14", "Cityscapes", "Avg(B/M)")[0].text == "70.44"
    assert reported_matches("vireo", "dinov2_vitl14", "GTA5", "Cityscapes") == []
