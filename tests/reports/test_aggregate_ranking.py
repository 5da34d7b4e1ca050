"""reports.aggregate's ordering, ranks, comparability guard, CSV input/output and command line, on rows and
values written out by hand: the row order of leaderboard.csv, competition ranks, the rank groups, the groups of
comparable rows and their differences, every refusal message in full, byte-exact CSV text and the command's
output lines."""

from __future__ import annotations

import csv
import json
import locale
import os
from pathlib import Path

import pytest

import reports.aggregate as agg
from reports.aggregate import (
    COLUMNS,
    AggregateOptions,
    ComparabilityGroup,
    NotComparableError,
    _assign_ranks,
    _rank_group,
    _release_matches,
    _settings_diff,
    _sort_key,
    _target_position,
    comparability_groups,
    describe_diff,
    main,
    rank_rows,
    read_leaderboard,
    render_csv,
    write_leaderboard,
)
from reports.reported import ReportedCell, load_reported

SETTINGS = json.dumps({"targets": [{"key": "cityscapes"}, {"key": "bdd100k"}, {"key": "mapillary"}]})


def row(**kw) -> dict[str, str]:
    r = {c: "" for c in COLUMNS}
    r.update({"kind": "reproduced", "benchmark": "real", "protocol": "gta2cbm", "variant": "default",
              "profile": "harmonised", "protocol_hash": "h1", "method": "Rein", "backbone": "DINOv2-L",
              "config_hash": "c", "pretrained": "true", "target": "Cityscapes", "protocol_settings": SETTINGS})
    r.update(kw)
    return r


def test_rows_are_ordered_field_by_field():
    expected = [
        row(benchmark="real", target="Cityscapes"),
        row(benchmark="real", target="BDD100K"),  # the protocol's target order, not the alphabet
        row(benchmark="real", target="Mapillary"),
        row(benchmark="real", target="Avg(C/B/M)"),  # not a target of the protocol: after them
        row(benchmark="real", target="Zeta"),
        row(benchmark="real", pretrained="true2"),
        row(benchmark="real", config_hash="d"),
        row(benchmark="real", checkpoint="k"),
        row(benchmark="real", kind="reproduced2"),
        row(benchmark="real", backbone="EVA02-L"),
        row(benchmark="real", method="Tqdm"),
        row(benchmark="real", protocol_hash="h2"),
        row(benchmark="real", profile="released"),
        row(benchmark="real", variant="a"),  # the default variant first, then by name
        row(benchmark="real", variant="b"),
        row(benchmark="real", protocol="sg2cbm"),
        row(benchmark="a"),  # real data first, then the other benchmarks by name
        row(benchmark="miniature"),
    ]
    assert sorted(reversed(expected), key=_sort_key) == expected
    assert sorted(expected, key=_sort_key) == expected


def test_target_position_in_the_protocol():
    assert [_target_position(row(target=t)) for t in ("Cityscapes", "BDD100K", "Mapillary", "Avg(C/B/M)")] == [
        0, 1, 2, 3]
    for settings in ("", "not json", '{"targets": 5}', '{"targets": [{"name": "x"}]}', '{"other": 1}'):
        assert _target_position(row(target="Cityscapes", protocol_settings=settings)) == 0, settings
    assert _target_position({"target": "Cityscapes"}) == 0  # no settings column at all


def test_rank_groups():
    assert _rank_group(row()) == "real|gta2cbm|default|h1|Cityscapes"
    assert _rank_group(row(profile="")) == _rank_group({k: v for k, v in row().items() if k != "profile"}) \
        == "real|gta2cbm|default|h1|Cityscapes"
    assert _rank_group(row(profile="released", variant="rein", benchmark="miniature", protocol_hash="h9",
                           target="BDD100K")) == "miniature|gta2cbm|rein|h9|BDD100K|released"


def test_competition_ranks_by_hand():
    values = ["50", "60.5", "60.5", "", "0.5", "0", "-1", ""]
    rows = [row(miou_mean=v, rpd_mean=str(10 - i)) for i, v in enumerate(values)]
    assert [(k, r["miou_mean"]) for k, r in rank_rows(rows)] == [
        (3, "50"), (1, "60.5"), (1, "60.5"), (None, ""), (4, "0.5"), (5, "0"), (6, "-1"), (None, "")]
    assert [k for k, _ in rank_rows(rows, "rpd_mean")] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [k for k, _ in rank_rows([row(miou_mean="0"), row(miou_mean="0")])] == [1, 1]
    assert rank_rows([]) == []
    released = [row(kind="released", miou_mean="1"), row(miou_mean="2")]
    assert [k for k, _ in rank_rows(released)] == [2, 1]


def test_assign_ranks_per_group():
    rows = [row(miou_mean="50"), row(miou_mean="60"), row(miou_mean=""), row(miou_mean="40", target="BDD100K"),
            row(miou_mean="70", profile="released")]
    _assign_ranks(rows)
    assert [(r["rank"], r["rank_group"]) for r in rows] == [
        ("2", "real|gta2cbm|default|h1|Cityscapes"), ("1", "real|gta2cbm|default|h1|Cityscapes"),
        ("", "real|gta2cbm|default|h1|Cityscapes"), ("1", "real|gta2cbm|default|h1|BDD100K"),
        ("1", "real|gta2cbm|default|h1|Cityscapes|released")]


def test_refusals_in_full():
    published = {"kind": "reported", "method": "Rein", "target": "Cityscapes", "reported_ref": "tqdmT1"}
    with pytest.raises(NotComparableError) as err:
        rank_rows([row(), published, row(protocol_hash="", method="Other", target="BDD100K")])
    assert str(err.value) == ("cannot rank 2 row(s) without a protocol hash (published numbers use each paper's own "
                              "protocol), e.g. Rein Cityscapes [tqdmT1]")
    with pytest.raises(NotComparableError) as err:
        rank_rows([row(), row(protocol_settings="", protocol_hash="h2"),
                   row(benchmark="miniature", protocol_hash="h3", protocol_settings="")])
    assert str(err.value) == (
        "refusing to rank rows of different protocols together (not comparable): "
        "gta2cbm [default] h1 vs gta2cbm [default] h2: protocol settings: 'known' vs 'unknown' | "
        "real vs miniature benchmark (gta2cbm [default] h1 / gta2cbm [default] h3) | "
        "real vs miniature benchmark (gta2cbm [default] h2 / gta2cbm [default] h3)")
    with pytest.raises(NotComparableError) as err:  # same hash, other benchmark
        rank_rows([row(), row(benchmark="miniature")])
    assert str(err.value).endswith(": real vs miniature benchmark (gta2cbm [default] h1 / gta2cbm [default] h1)")
    with pytest.raises(NotComparableError) as err:
        rank_rows([row(target="Mapillary"), row(), row(target="Mapillary")])
    assert str(err.value) == "refusing to rank rows of different targets together: ['Cityscapes', 'Mapillary']"
    assert issubclass(NotComparableError, ValueError)


def test_comparability_groups_by_hand():
    a1, a2 = row(protocol_hash="h1", method="A"), row(protocol_hash="h1", method="B", protocol_settings="")
    b = row(protocol_hash="h2", kind="released", protocol_settings="")
    c = row(protocol_hash="h3", variant="flip", protocol_settings="")
    d = row(protocol_hash="h4", protocol="city2bm")
    m = row(protocol_hash="h1", benchmark="miniature", protocol_settings="")
    published = row(kind="reported", protocol_hash="", variant="paper")
    groups = comparability_groups([m, c, published, b, a1, d, a2])
    assert [(g.benchmark, g.protocol, g.variant, g.protocol_hash, g.label) for g in groups] == [
        ("real", "city2bm", "default", "h4", "city2bm [default] h4"),
        ("real", "gta2cbm", "default", "h1", "gta2cbm [default] h1"),
        ("real", "gta2cbm", "default", "h2", "gta2cbm [default] h2"),
        ("real", "gta2cbm", "flip", "h3", "gta2cbm [flip] h3"),
        ("miniature", "gta2cbm", "default", "h1", "gta2cbm [default] h1")]
    city, g1, g2, flip, mini = groups
    assert g1.rows == [a1, a2] and g2.rows == [b] and mini.rows == [m]
    assert g1.settings == json.loads(SETTINGS) and g2.settings is None
    assert city.not_comparable_with == {} and mini.not_comparable_with == {}
    unknown = {"protocol settings": ("unknown", "unknown")}
    assert g1.not_comparable_with == {"gta2cbm [default] h2": {"protocol settings": ("known", "unknown")},
                                      "gta2cbm [flip] h3": {"protocol settings": ("known", "unknown")}}
    assert g2.not_comparable_with == {"gta2cbm [default] h1": {"protocol settings": ("unknown", "known")},
                                      "gta2cbm [flip] h3": unknown}
    assert list(flip.not_comparable_with) == ["gta2cbm [default] h1", "gta2cbm [default] h2"]
    assert ComparabilityGroup("real", "p", "v", "h", rows=[], settings=None).not_comparable_with == {}
    # benchmarks other than "real" and "miniature" sort by name after real data
    names = [g.benchmark for g in comparability_groups([row(benchmark="z"), row(benchmark="b"), row()])]
    assert names == ["real", "b", "z"]
    # the default variant first, then the variants by name (not by hash)
    variants = comparability_groups([row(variant="flip", protocol_hash="h0"), row(variant="a", protocol_hash="h9"),
                                     row(protocol_hash="h5")])
    assert [(g.variant, g.protocol_hash) for g in variants] == [("default", "h5"), ("a", "h9"), ("flip", "h0")]


def test_settings_diff_and_its_description():
    assert _settings_diff(None, {}) == {"protocol settings": ("unknown", "known")}
    assert _settings_diff({}, None) == {"protocol settings": ("known", "unknown")}
    # settings another harness version wrote: compared as plain data, descriptions left out on both sides
    a = {"name": "x", "description": "one", "k": 1, "same": [1]}
    b = {"name": "x", "description": "two", "k": 2, "same": [1], "extra": 3}
    assert _settings_diff(a, b) == {"extra": (None, 3), "k": (1, 2)}
    assert list(_settings_diff(b, a)) == ["extra", "k"]
    assert describe_diff({"inference.flip": (False, True), "targets[mapillary].test_resize": ([2048, 1024], None),
                          "name": ("a", "b")}) == (
        "inference.flip: False vs True; targets[mapillary].test_resize: [2048, 1024] vs None; name: 'a' vs 'b'")
    assert describe_diff({}) == "same settings"


def test_release_matches_follow_the_registry_order():
    def cell(line, target, origin="row", text="1.0"):
        return ReportedCell("Rein", "DINOv2-L", "GTA5", target, text, f"ref{line}", "", line, origin)

    cells = [cell(23, "Cityscapes"), cell(24, "Cityscapes", "note", "2.0"), cell(24, "Cityscapes", "row", "3.0"),
             cell(25, "Cityscapes"), cell(24, "BDD100K")]
    hits = _release_matches("24;23;", "Cityscapes", cells)
    assert [(c.line, c.origin, c.text) for c in hits] == [(24, "row", "3.0"), (24, "note", "2.0"), (23, "row", "1.0")]
    assert _release_matches("", "Cityscapes", cells) == []
    assert [c.target for c in _release_matches("24", "BDD100K", cells)] == ["BDD100K"]


def test_csv_text_byte_for_byte():
    rows = [{"kind": "reported", "method": "a,b", "target": "Δ \"q\"", "extra": "x"}, {"kind": "reproduced"}]
    expected_line = ",".join({"kind": "reported", "method": '"a,b"', "target": '"Δ ""q"""'}.get(c, "")
                             for c in COLUMNS)
    assert render_csv(rows) == (",".join(COLUMNS) + "\n" + expected_line + "\n"
                                + "reproduced" + "," * (len(COLUMNS) - 1) + "\n")
    assert render_csv([]) == ",".join(COLUMNS) + "\n"


def test_read_leaderboard_fills_columns_and_keeps_field_text(tmp_path):
    assert read_leaderboard(tmp_path / "missing.csv") == []
    path = tmp_path / "lb.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\r\n")
        writer.writerow(["kind", "method", "target"])
        writer.writerow(["reproduced", "Δ a\r\nb", "Cityscapes"])
        writer.writerow(["reported"])  # a short line: the missing fields are empty
    rows = read_leaderboard(str(path))
    assert rows == [{c: {"kind": "reproduced", "method": "Δ a\r\nb", "target": "Cityscapes"}.get(c, "")
                     for c in COLUMNS}, {c: "reported" if c == "kind" else "" for c in COLUMNS}]
    path.write_text("kind,zed,foo\nreported,1,2\n")
    with pytest.raises(ValueError) as err:
        read_leaderboard(path)
    assert str(err.value) == (f"{path}: unknown columns ['foo', 'zed']; expected the columns of "
                              "reports.aggregate.COLUMNS (delete the file to rebuild it from the published numbers "
                              "and your runs)")


def test_write_leaderboard_is_atomic_and_reports_changes(tmp_path, monkeypatch):
    path = tmp_path / "a" / "b" / "lb.csv"
    rows = [row(miou_mean="1.00", method="Réin")]
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append((Path(src).name, Path(dst))),
                                                         real_replace(src, dst)))
    assert write_leaderboard(str(path), rows) is True
    assert path.read_bytes() == render_csv(rows).encode("utf-8")
    assert replaced == [(f"lb.csv.tmp{os.getpid()}", path)] and os.listdir(path.parent) == ["lb.csv"]
    assert write_leaderboard(path, rows) is False and len(replaced) == 1  # same text: not rewritten
    assert write_leaderboard(path, [row(miou_mean="2.00")]) is True and len(replaced) == 2
    assert os.listdir(path.parent) == ["lb.csv"] and "2.00" in path.read_text()


@pytest.fixture
def ascii_locale():
    """An ASCII locale (as on a bare server or a Windows code page): files must not depend on it."""
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    yield
    locale.setlocale(locale.LC_CTYPE, before)


def test_csv_files_are_utf8_under_any_locale(tmp_path, ascii_locale, capsys):
    path = tmp_path / "lb.csv"
    rows = [row(method="Réin Δ")]
    assert write_leaderboard(path, rows) is True
    assert path.read_bytes() == render_csv(rows).encode("utf-8")
    assert write_leaderboard(path, rows) is False
    assert read_leaderboard(path)[0]["method"] == "Réin Δ"
    published = tmp_path / "published.csv"  # the published rows' notes hold "C→S"
    assert main(["--csv", str(published), "--resamples", "0"]) == 0
    assert "→" in published.read_text(encoding="utf-8")
    assert main(["--csv", str(published), "--resamples", "0", "--check"]) == 0


# ---------------------------------------------------------------------------------------------- command line
@pytest.fixture
def runs(tmp_path, write_run):
    """Two real records (seeds 0 and 1) and one miniature record."""
    for seed in (0, 1):
        write_run(tmp_path / "runs" / "real", "rein", "dinov2_vitl14", seed=seed, n_images=2)
    write_run(tmp_path / "runs" / "mini", "rein", "dinov2_vitl14", benchmark="miniature", device="cpu", n_images=2)
    return tmp_path / "runs"


def test_command_line_arguments_reach_the_merge(tmp_path, runs, monkeypatch):
    calls = []
    real_merge = agg.merge_into_csv

    def spy(csv_path, records, options, *, benchmark):
        calls.append((Path(csv_path), len(records), options, benchmark))
        return real_merge(csv_path, records, AggregateOptions(resamples=0), benchmark=benchmark)

    monkeypatch.setattr(agg, "merge_into_csv", spy)
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    assert calls == [(Path("leaderboard.csv"), 0, AggregateOptions(1000, 0.95), "real")]
    assert not Path("leaderboard_miniature.csv").exists()
    calls.clear()
    assert main(["runs", "--csv", "out/lb.csv", "--resamples", "7", "--level", "0.9",
                 "--miniature-csv", "mini.csv"]) == 0
    assert calls == [(Path("out/lb.csv"), 3, AggregateOptions(7, 0.9), "real"),
                     (Path("mini.csv"), 3, AggregateOptions(7, 0.9), "miniature")]
    calls.clear()
    assert main(["runs/real", "--csv", "solo/lb.csv"]) == 0  # real records only: no miniature file
    assert [c[0] for c in calls] == [Path("solo/lb.csv")] and os.listdir("solo") == ["lb.csv"]
    calls.clear()
    assert main(["--csv", "out/lb.csv"]) == 0  # no miniature records, no miniature file next to the CSV
    assert [c[0] for c in calls] == [Path("out/lb.csv")]
    calls.clear()
    Path("out/leaderboard_miniature.csv").write_text("")
    assert main(["--csv", "out/lb.csv"]) == 0  # the default miniature file exists: it is refreshed too
    assert [c[0] for c in calls] == [Path("out/lb.csv"), Path("out/leaderboard_miniature.csv")]


def test_command_line_output_lines(tmp_path, runs, capsys):
    csv_path, mini = tmp_path / "lb.csv", tmp_path / "leaderboard_miniature.csv"
    n_pub = len(load_reported())
    args = ["--csv", str(csv_path), "--resamples", "0"]
    assert main([*args, "--check", str(runs)]) == 1
    assert capsys.readouterr().out == (f"{csv_path}: would change ({n_pub + 4} rows)\n"
                                       f"{mini}: would change (4 rows)\n")
    assert not csv_path.exists() and not mini.exists()
    assert main([*args, str(runs)]) == 0
    assert capsys.readouterr().out == (
        f"{csv_path}: {n_pub} published rows, 4 reproduced rows from 2 record(s) (updated)\n"
        f"{mini}: 0 published rows, 4 reproduced rows from 1 record(s) (updated)\n")
    assert main([*args, str(runs)]) == 0
    assert capsys.readouterr().out == (
        f"{csv_path}: {n_pub} published rows, 4 reproduced rows from 2 record(s) (unchanged)\n"
        f"{mini}: 0 published rows, 4 reproduced rows from 1 record(s) (unchanged)\n")
    assert main([*args, "--check"]) == 0
    assert capsys.readouterr().out == f"{csv_path}: up to date ({n_pub + 4} rows)\n{mini}: up to date (4 rows)\n"
    mini.write_text(mini.read_text() + "\n")
    assert main([*args, "--check"]) == 1
    assert capsys.readouterr().out == f"{csv_path}: up to date ({n_pub + 4} rows)\n{mini}: would change (4 rows)\n"


def test_command_line_refuses_a_missing_folder(tmp_path, capsys):
    csv_path = tmp_path / "lb.csv"
    assert main(["--csv", str(csv_path), str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'nowhere'} is not a folder of runs (pass the --out "
                                       "folder(s) of runners.run)\n")
    assert not csv_path.exists()


def test_command_line_help_in_full(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: python -m reports.aggregate [-h] [--csv CSV] [--miniature-csv MINIATURE_CSV] "
                           "[--resamples RESAMPLES] [--level LEVEL] [--check] [runs ...] "
                           "Merge result records (result.json) into leaderboard.csv. ")
    for line in (
        "runs folders searched recursively for result.json (none: only refresh the published rows and recompute "
        "the existing rows from their ledgers)",
        "--csv CSV leaderboard CSV to merge into (default: leaderboard.csv)",
        "--miniature-csv MINIATURE_CSV where records of the built-in miniature benchmark go (default: "
        "leaderboard_miniature.csv next to --csv, git-ignored); they never enter --csv",
        "--resamples RESAMPLES bootstrap resamples for the CIs (0 = no CI; default 1000)",
        "--level LEVEL CI level (default 0.95)",
        "--check write nothing; exit 1 if the CSV would change",
    ):
        assert line in text, line
