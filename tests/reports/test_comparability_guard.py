"""The comparability guard: rows of different protocol hashes are never ranked together."""

import pytest

from reports.aggregate import NotComparableError, comparability_groups, rank_rows, read_leaderboard


def rows_of(csv_path, **match):
    return [r for r in read_leaderboard(csv_path)
            if r["kind"] == "reproduced" and all(r[k] == v for k, v in match.items())]


def test_refuses_to_rank_mixed_protocol_hashes(fixture_csv):
    mixed = rows_of(fixture_csv, benchmark="real", protocol="gta2cbm", target="Cityscapes")
    assert len({r["protocol_hash"] for r in mixed}) == 2
    with pytest.raises(NotComparableError, match=r"not comparable.*inference\.flip: False vs True"):
        rank_rows(mixed)


def test_refuses_miniature_with_real_and_published_rows(fixture_csv):
    real = rows_of(fixture_csv, benchmark="real", protocol="gta2cbm", variant="default", target="Cityscapes")
    mini = rows_of(fixture_csv, benchmark="miniature", target="Cityscapes")
    with pytest.raises(NotComparableError, match="miniature"):
        rank_rows(real + mini)
    published = [r for r in read_leaderboard(fixture_csv) if r["kind"] == "reported"][:2]
    with pytest.raises(NotComparableError, match="without a protocol hash"):
        rank_rows(real + published)
    with pytest.raises(NotComparableError, match="different targets"):
        rank_rows(rows_of(fixture_csv, benchmark="real", protocol="gta2cbm", variant="default"))


def test_ranks_within_one_protocol_hash(fixture_csv):
    rows = rows_of(fixture_csv, benchmark="real", protocol="gta2cbm", variant="default", target="Avg(C/B/M)")
    ranked = rank_rows(rows)
    order = sorted(ranked, key=lambda t: t[0])
    values = [float(r["miou_mean"]) for _, r in order]
    assert [k for k, _ in order] == [1, 2, 3] and values == sorted(values, reverse=True)
    assert all(r["rank"] == str(k) for k, r in ranked)  # the CSV's rank column agrees
    flip = rows_of(fixture_csv, benchmark="real", variant="flip", target="Avg(C/B/M)")
    assert [r["rank"] for r in flip] == ["1"]  # ranked alone, not among the default-protocol rows


def test_ties_share_a_rank(fixture_csv):
    rows = [dict(r) for r in rows_of(fixture_csv, benchmark="real", variant="default", protocol="gta2cbm",
                                    target="Cityscapes")]
    rows[1]["miou_mean"] = rows[0]["miou_mean"]
    ranks = sorted(k for k, _ in rank_rows(rows))
    assert ranks in ([1, 1, 3], [1, 2, 2])


def test_groups_name_the_differing_settings(fixture_csv):
    groups = comparability_groups(read_leaderboard(fixture_csv))
    labels = [(g.benchmark, g.protocol, g.variant) for g in groups]
    assert labels == [("real", "city2bm", "default"), ("real", "gta2cbm", "default"), ("real", "gta2cbm", "flip"),
                      ("miniature", "gta2cbm", "default")]
    default, flip = groups[1], groups[2]
    diff = default.not_comparable_with[flip.label]
    assert diff["inference.flip"] == (False, True) and diff["variant"] == ("default", "flip")
    assert groups[0].not_comparable_with == {} and groups[3].not_comparable_with == {}
