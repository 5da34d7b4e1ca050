"""Merge result records into ``leaderboard.csv``: ``python -m reports.aggregate [RUNS ...] [--csv PATH]``.

The CSV has two kinds of rows (column ``kind``):

- ``reported``: one row per published number (``reports/reported.csv`` and the note transcriptions of
  ``reports/reported_notes.csv``), with its reference and the CSV line it came from. These rows are
  regenerated from the package files on every run. Their protocol is the paper's own (``variant=paper``,
  no protocol hash), so they are never ranked.
- ``reproduced``: one row per (benchmark, method, backbone, protocol, variant, protocol hash, training
  config, pretrained, target) aggregated over seeds: mean ± std mIoU, number of seeds, run ids, a
  bootstrap CI from the per-image confusion matrices, rPD, trainable parameters, GPU-hours, the matched
  paper number (real-data rows only) and the delta to it. A target ``Avg(C/B/M)`` row holds the plain mean
  over targets (the papers' Avg. column).
- ``released``: the same, for evaluations of a checkpoint the authors released (``runners.released``;
  column ``checkpoint`` holds its id, ``profile`` the profile). Its paper number is the one the release
  names (the registry's ``reported.csv`` lines). :func:`reports.released.three_column_view` puts published,
  released and retrained numbers side by side per cell.

Merging is idempotent and order-independent: each reproduced row keeps a ledger of its runs
(``seed_values``, one entry per run id with the values and the record/confusion paths relative to the CSV);
new records are merged into the ledgers by run id and every number is recomputed from the ledger. When one
seed has several runs (a re-run), the newest (``created``, then run id) counts. Nothing time-dependent is
written, so running twice gives the same bytes.

Comparability guard: rows are ranked (column ``rank``) only within one (benchmark, protocol, variant,
protocol hash, target); :func:`rank_rows` refuses rows of mixed protocol hashes and names the settings
that differ (:func:`comparability_groups`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datasets.labels import CITYSCAPES_CLASSES
from reports import bootstrap as bs
from reports.reported import (
    ReportedCell,
    avg_label,
    backbone_display,
    dataset_display,
    load_reported,
    method_display,
    reported_matches,
)
from runners.records import content_hash, load_records

__all__ = [
    "COLUMNS",
    "NotComparableError",
    "ComparabilityGroup",
    "AggregateOptions",
    "record_entries",
    "reported_rows",
    "aggregate_rows",
    "merge_into_csv",
    "read_leaderboard",
    "write_leaderboard",
    "render_csv",
    "rank_rows",
    "comparability_groups",
    "describe_diff",
    "group_key",
    "main",
]

COLUMNS: tuple[str, ...] = (
    "kind", "benchmark", "method", "backbone", "method_id", "backbone_id", "protocol", "variant", "profile",
    "protocol_hash", "config_hash", "pretrained", "source", "target",
    "reported_miou", "reported_ref", "reported_source", "reported_alternatives",
    "miou_mean", "miou_std", "n_seeds", "seeds", "miou_ci_low", "miou_ci_high", "ci_level", "ci_resamples",
    "delta_vs_reported", "rpd_mean", "rpd_std", "source_miou", "rank", "rank_group",
    "trainable_params", "total_params", "gpu_hours", "run_ids", "code_commits", "checkpoint",
    "per_class_iou", "protocol_settings", "seed_values",
)
"""Column order of leaderboard.csv (the last three hold JSON; ``per_class_iou`` in Cityscapes class order)."""

MINIATURE_CSV = "leaderboard_miniature.csv"
"""Default file of miniature-benchmark rows (next to ``--csv``; git-ignored), kept out of leaderboard.csv."""

RECIPE_BOOKKEEPING = ("checkpoint_interval", "log_interval", "source")
_CLASS_ORDER = {c: i for i, c in enumerate(CITYSCAPES_CLASSES)}
GROUP_FIELDS = ("kind", "benchmark", "method_id", "backbone_id", "protocol", "variant", "protocol_hash", "config_hash",
                "pretrained", "profile", "checkpoint")
ROW_KINDS = ("reproduced", "released")  # rows aggregated from result records (the others are "reported")


class NotComparableError(ValueError):
    """Rows of different protocols (hashes) or benchmarks were asked to be ranked together."""


@dataclass(frozen=True)
class AggregateOptions:
    """``resamples=0`` disables the bootstrap."""

    resamples: int = bs.DEFAULT_RESAMPLES
    level: float = bs.DEFAULT_LEVEL


# ---------------------------------------------------------------------------------------------- formatting
def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return ""
    x = float(x)
    if math.isnan(x):
        return ""
    s = f"{x:.{digits}f}"
    return "0." + "0" * digits if s == "-0." + "0" * digits else s


def _num(s: Any) -> float | None:
    if s is None or s == "":
        return None
    return float(s)


def _r(x: Any, digits: int = 6) -> float | None:
    """Round what goes into the ledger, so values read back from the CSV equal freshly loaded ones."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else round(x, digits)


def _json(obj: Any) -> str:
    return "" if obj is None else json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _bool(v: Any) -> str:
    return "" if v is None else str(bool(v)).lower()


# ---------------------------------------------------------------------------------------------- records
def _config_hash(record: dict[str, Any]) -> str:
    spec = record.get("spec") or {}
    recipe = {k: v for k, v in (spec.get("recipe") or {}).items() if k not in RECIPE_BOOKKEEPING}
    payload = {"model": spec.get("model"), "recipe": recipe, "scale": spec.get("scale")}
    if spec.get("profile", "harmonised") != "harmonised":  # harmonised hashes stay those of older records
        payload["profile"] = spec["profile"]
    return content_hash(payload, 8)


def _gpu_hours(record: dict[str, Any]) -> float | None:
    env = record.get("environment") or {}
    total = (record.get("timings") or {}).get("total_s")
    if env.get("device") != "cuda" or total is None:
        return None
    return float(total) / 3600.0 * int(env.get("gpu_count") or 1)


def _rel(path: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()
    except ValueError:  # pragma: no cover - other drive on Windows
        return path.resolve().as_posix()


def _protocol_targets(settings: dict[str, Any]) -> list[str]:
    return [t["key"] for t in settings.get("targets", [])]


def record_entries(record: dict[str, Any], csv_dir: Path) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """(row identity, ledger entry) for each target of a record and for its target average.

    The identity holds the group fields plus method/backbone/source/target display names and the
    protocol settings; the entry is what the ledger keeps for this run.
    """
    spec = record.get("spec") or {}
    settings = spec.get("protocol")
    if not settings:
        raise ValueError(f"{record.get('_path')}: record has no spec.protocol (written by an older runner?)")
    res = record["results"]
    benchmark = record_benchmark(record)
    folder = Path(record["_path"]).parent if record.get("_path") else None
    source_key = settings["source"]["key"]
    released = record.get("released") or {}
    base = {
        "kind": "released" if released else "reproduced", "checkpoint": released.get("id", ""),
        "profile": record.get("profile") or spec.get("profile") or "harmonised",  # older records: harmonised
        "reported_lines": ";".join(map(str, released.get("reported_lines", []))),
        "benchmark": benchmark, "method_id": record["method"], "backbone_id": record["backbone"],
        "protocol": record["protocol"], "variant": record.get("eval_variant", "default"),
        "protocol_hash": record["protocol_hash"], "config_hash": _config_hash(record),
        "pretrained": _bool(record.get("pretrained")),
        "method": method_display(record["method"]),
        "backbone": backbone_display(record["backbone"], record["method"]),
        "source": dataset_display(source_key),
        "protocol_settings": _json(settings),
    }
    params = record.get("params") or {}
    common = {
        "run_id": record["run_id"], "seed": record.get("seed"), "created": record.get("created", ""),
        "path": _rel(Path(record["_path"]), csv_dir) if record.get("_path") else "",
        "trainable": params.get("trainable"), "total": params.get("total"),
        "gpu_hours": _r(_gpu_hours(record)),
        "commit": ((record.get("environment") or {}).get("git") or {}).get("commit"),
    }
    if released:  # kept in the ledger: the published cells the release should reproduce
        common["reported_lines"] = list(released.get("reported_lines", []))
    ref_miou = _r((res.get("reference") or {}).get("miou"))
    out = []
    conf_paths: dict[str, str] = {}
    for key in _protocol_targets(settings) or list(res["targets"]):
        t = res["targets"].get(key)
        if t is None:
            continue
        conf = ""
        if t.get("confusion") and folder is not None:
            conf = _rel(folder / t["confusion"], csv_dir)
        conf_paths[key] = conf
        per_class = t.get("per_class_iou") or {}
        entry = {**common, "miou": _r(t["miou"]), "rpd": _r((res.get("rpd") or {}).get(key)),
                 "source_miou": ref_miou, "per_class": {k: _r(v, 4) for k, v in per_class.items()},
                 "confusion": conf}
        out.append(({**base, "target": dataset_display(key), "target_key": key}, entry))
    if out and res.get("mean_miou") is not None:
        label = avg_label([dataset_display(k) for k in conf_paths])
        entry = {**common, "miou": _r(res["mean_miou"]), "rpd": _r(res.get("mean_rpd")), "source_miou": ref_miou,
                 "per_class": {}, "confusion": conf_paths}
        out.append(({**base, "target": label, "target_key": "__avg__"}, entry))
    return out


# ---------------------------------------------------------------------------------------------- rows
def reported_rows(cells: Sequence[ReportedCell] | None = None) -> list[dict[str, str]]:
    """One ``kind=reported`` row per published number."""
    rows = []
    for c in (load_reported() if cells is None else cells):
        rows.append({
            "kind": "reported", "benchmark": "real", "method": c.method, "backbone": c.backbone,
            "protocol": c.protocol, "variant": "paper", "source": c.source, "target": c.target,
            "reported_miou": c.text, "reported_ref": c.reference, "reported_source": c.provenance(),
        })
    return rows


def group_key(row: dict[str, str]) -> tuple[str, ...]:
    """The seed-aggregation group of a reproduced / released row (everything but the target); rows written
    before the ``profile`` column existed are harmonised."""
    return tuple((row.get(f) or ("harmonised" if f == "profile" else "")) for f in GROUP_FIELDS)


def _row_key(row: dict[str, str]) -> tuple[str, ...]:
    return group_key(row) + (row.get("target", ""),)


def _pick_per_seed(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One run per seed: the newest (created, run_id); sorted by seed then run id."""
    best: dict[Any, dict[str, Any]] = {}
    for e in entries:
        k = e.get("seed")
        if k not in best or (e.get("created") or "", e["run_id"]) > (best[k].get("created") or "", best[k]["run_id"]):
            best[k] = e
    return sorted(best.values(), key=lambda e: (str(e.get("seed")), e["run_id"]))


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    mean = statistics.fmean(vals)
    return mean, (statistics.stdev(vals) if len(vals) > 1 else None)


class _ConfusionCache:
    def __init__(self, csv_dir: Path):
        self.csv_dir = csv_dir
        self.cache: dict[str, tuple[list[str], np.ndarray] | None] = {}

    def get(self, rel: str) -> tuple[list[str], np.ndarray] | None:
        if not rel:
            return None
        if rel not in self.cache:
            path = self.csv_dir / rel
            try:
                self.cache[rel] = bs.load_confusion_file(path) if path.is_file() else None
            except (OSError, ValueError) as exc:
                print(f"warning: {exc}", file=sys.stderr)
                self.cache[rel] = None
        return self.cache[rel]


def aggregate_rows(ledgers: dict[tuple, dict[str, Any]], previous: dict[tuple, dict[str, str]],
                   csv_dir: Path, options: AggregateOptions = AggregateOptions()) -> list[dict[str, str]]:
    """Reproduced rows from per-row ledgers ({row key: {"identity": ..., "entries": {run_id: entry}}})."""
    cache = _ConfusionCache(csv_dir)
    dists: dict[tuple, np.ndarray | None] = {}
    cells = load_reported()
    rows: dict[tuple, dict[str, str]] = {}

    def target_dist(rkey: tuple, chosen: list[dict[str, Any]]) -> np.ndarray | None:
        if rkey in dists:
            return dists[rkey]
        dist = None
        if options.resamples > 0:
            loaded = [cache.get(e.get("confusion") or "") for e in chosen]
            if loaded and all(x is not None for x in loaded):
                try:
                    aligned = bs.align_by_names(loaded)  # type: ignore[arg-type]
                    dist = bs.bootstrap_miou(aligned, resamples=options.resamples,
                                             seed=bs.seed_from_key("|".join(rkey)))
                except ValueError as exc:
                    print(f"warning: no bootstrap CI for {'/'.join(rkey)}: {exc}", file=sys.stderr)
        dists[rkey] = dist
        return dist

    # target rows first (the average rows reuse their bootstrap distributions)
    ordered = sorted(ledgers.items(), key=lambda kv: (kv[1]["identity"]["target_key"] == "__avg__", kv[0]))
    for rkey, ledger in ordered:
        ident = ledger["identity"]
        entries = sorted(ledger["entries"].values(), key=lambda e: e["run_id"])
        chosen = _pick_per_seed(entries)
        miou_mean, miou_std = _mean_std([e.get("miou") for e in chosen])
        rpd_mean, rpd_std = _mean_std([e.get("rpd") for e in chosen])
        src_mean, _ = _mean_std([e.get("source_miou") for e in chosen])
        gpu_mean, _ = _mean_std([e.get("gpu_hours") for e in chosen])
        run_ids = [e["run_id"] for e in chosen]
        row = {c: "" for c in COLUMNS}
        row.update({k: v for k, v in ident.items() if k in COLUMNS})
        row.update({
            "kind": ident.get("kind") or "reproduced", "miou_mean": _fmt(miou_mean), "miou_std": _fmt(miou_std),
            "n_seeds": str(len(chosen)), "seeds": ";".join(str(e.get("seed")) for e in chosen),
            "rpd_mean": _fmt(rpd_mean), "rpd_std": _fmt(rpd_std), "source_miou": _fmt(src_mean),
            "gpu_hours": _fmt(gpu_mean, 4), "run_ids": ";".join(run_ids),
            "code_commits": ";".join(sorted({str(e["commit"]) for e in chosen if e.get("commit")})),
            "seed_values": _json(entries),
        })
        trainable = [e["trainable"] for e in chosen if e.get("trainable") is not None]
        total = [e["total"] for e in chosen if e.get("total") is not None]
        row["trainable_params"] = str(max(trainable)) if trainable else ""
        row["total_params"] = str(max(total)) if total else ""
        if ident["target_key"] != "__avg__":
            classes = sorted({c for e in chosen for c in (e.get("per_class") or {})},
                             key=lambda c: (_CLASS_ORDER.get(c, len(_CLASS_ORDER)), c))
            per_class = {}
            for c in classes:
                m, _ = _mean_std([(e.get("per_class") or {}).get(c) for e in chosen])
                per_class[c] = _r(m, 2)
            row["per_class_iou"] = json.dumps(per_class, separators=(",", ":"), ensure_ascii=False) if per_class else ""
            dist = target_dist(rkey, chosen)
        else:
            parts = []
            for other_key, other in ledgers.items():
                if other_key[:-1] == rkey[:-1] and other["identity"]["target_key"] != "__avg__":
                    other_chosen = _pick_per_seed(sorted(other["entries"].values(), key=lambda e: e["run_id"]))
                    parts.append(target_dist(other_key, other_chosen)
                                 if [e["run_id"] for e in other_chosen] == run_ids else None)
            dist = np.mean(parts, axis=0) if parts and all(p is not None for p in parts) else None
        if dist is not None:
            low, high = bs.percentile_ci(dist, options.level)
            row.update({"miou_ci_low": _fmt(low), "miou_ci_high": _fmt(high),
                        "ci_level": _fmt(100 * options.level, 0), "ci_resamples": str(options.resamples)})
        else:
            prev = previous.get(rkey)
            if prev and prev.get("run_ids") == row["run_ids"] and prev.get("miou_ci_low"):
                for c in ("miou_ci_low", "miou_ci_high", "ci_level", "ci_resamples"):
                    row[c] = prev.get(c, "")
        if row["benchmark"] == "real":
            if row["kind"] == "released":  # the numbers the release itself names
                matches = _release_matches(ident.get("reported_lines", ""), row["target"], cells)
            else:
                matches = reported_matches(row["method_id"], row["backbone_id"], row["source"], row["target"], cells)
            if matches:
                best = matches[0]
                row["reported_miou"], row["reported_ref"] = best.text, best.reference
                row["reported_source"] = best.provenance()
                row["reported_alternatives"] = "; ".join(f"{c.reference} {c.text} (line {c.line})" for c in matches[1:])
                if miou_mean is not None:
                    row["delta_vs_reported"] = _fmt(float(row["miou_mean"]) - best.value)
        rows[rkey] = row
    _assign_ranks(list(rows.values()))
    return [rows[k] for k in sorted(rows, key=lambda k: _sort_key(rows[k]))]


def _release_matches(lines: str, target: str, cells: Sequence[ReportedCell]) -> list[ReportedCell]:
    """Published cells of a released checkpoint (its registry lines, in the registry's order) for ``target``."""
    order = [int(x) for x in lines.split(";") if x]
    hits = [c for c in cells if c.line in order and c.target == target]
    return sorted(hits, key=lambda c: (order.index(c.line), c.origin != "row"))


def _target_position(row: dict[str, str]) -> int:
    try:
        keys = _protocol_targets(json.loads(row["protocol_settings"]))
    except (ValueError, KeyError, TypeError):
        keys = []
    names = [dataset_display(k) for k in keys]
    return names.index(row["target"]) if row["target"] in names else len(names)


def _sort_key(row: dict[str, str]) -> tuple:
    return (row["benchmark"] != "real", row["benchmark"], row["protocol"], row["variant"] != "default",
            row["variant"], row.get("profile", ""), row["protocol_hash"], row["method"], row["backbone"], row["kind"],
            row["checkpoint"], row["config_hash"], row["pretrained"], _target_position(row), row["target"])


def _rank_group(row: dict[str, str]) -> str:
    profile = row.get("profile") or "harmonised"  # profiles are never ranked together (decisions.md)
    return "|".join((row["benchmark"], row["protocol"], row["variant"], row["protocol_hash"], row["target"])
                    + (() if profile == "harmonised" else (profile,)))


def _assign_ranks(rows: list[dict[str, str]]) -> None:
    groups: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        r["rank_group"] = _rank_group(r)
        groups[r["rank_group"]].append(r)
    for members in groups.values():
        for rank, r in rank_rows(members):
            r["rank"] = str(rank) if rank else ""


# ---------------------------------------------------------------------------------------------- guard
@dataclass
class ComparabilityGroup:
    """Reproduced rows sharing (benchmark, protocol, variant, protocol hash): rankable together.

    ``not_comparable_with`` maps the ``label`` of each other group of the same benchmark and protocol
    name to the settings that differ (``{"dotted.setting": (ours, theirs)}``).
    """

    benchmark: str
    protocol: str
    variant: str
    protocol_hash: str
    rows: list[dict[str, str]]
    settings: dict[str, Any] | None
    not_comparable_with: dict[str, dict[str, tuple]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.protocol} [{self.variant}] {self.protocol_hash}"


def _settings_diff(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, tuple]:
    from benchmarks.protocols import Protocol, protocol_diff

    if a is None or b is None:
        return {"protocol settings": ("unknown" if a is None else "known", "unknown" if b is None else "known")}
    try:
        return protocol_diff(Protocol.from_dict(a), Protocol.from_dict(b))
    except (ValueError, KeyError, TypeError):  # settings from another harness version: compare as plain data
        keys = sorted((set(a) | set(b)) - {"description"})
        return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def describe_diff(diff: dict[str, tuple]) -> str:
    """"inference.flip: False vs True; targets[mapillary].test_resize: [2048, 1024] vs None"."""
    return "; ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items()) or "same settings"


def comparability_groups(rows: Iterable[dict[str, str]]) -> list[ComparabilityGroup]:
    """Reproduced rows grouped by protocol hash, each group listing how it differs from the other groups
    of the same benchmark and protocol name (shown side by side, marked "not comparable")."""
    groups: dict[tuple, ComparabilityGroup] = {}
    for r in rows:
        if r.get("kind") not in ROW_KINDS:
            continue
        k = (r["benchmark"], r["protocol"], r["variant"], r["protocol_hash"])
        if k not in groups:
            settings = json.loads(r["protocol_settings"]) if r.get("protocol_settings") else None
            groups[k] = ComparabilityGroup(*k, rows=[], settings=settings)
        groups[k].rows.append(r)
    order = sorted(groups, key=lambda k: (k[0] != "real", k[0], k[1], k[2] != "default", k[2], k[3]))
    ordered = [groups[k] for k in order]
    for g in ordered:
        for h in ordered:
            if g is not h and g.benchmark == h.benchmark and g.protocol == h.protocol:
                g.not_comparable_with[h.label] = _settings_diff(g.settings, h.settings)
    return ordered


def rank_rows(rows: Sequence[dict[str, str]], value: str = "miou_mean") -> list[tuple[int | None, dict[str, str]]]:
    """Competition ranks (1, 2, 2, 4) by ``value``, best first; rows without a value get None.

    Refuses (:class:`NotComparableError`) rows that are not all reproduced rows of one benchmark, one
    protocol hash and one target; the message names the differing protocol settings.
    """
    rows = list(rows)
    if not rows:
        return []
    bad = [r for r in rows if r.get("kind") not in ROW_KINDS or not r.get("protocol_hash")]
    if bad:
        raise NotComparableError(
            f"cannot rank {len(bad)} row(s) without a protocol hash (published numbers use each paper's own "
            f"protocol), e.g. {bad[0].get('method')} {bad[0].get('target')} [{bad[0].get('reported_ref')}]")
    kinds = {(r["benchmark"], r["protocol_hash"]) for r in rows}
    if len(kinds) > 1:
        groups = comparability_groups(rows)
        lines = []
        for i, g in enumerate(groups):
            for h in groups[i + 1:]:
                if g.benchmark != h.benchmark:
                    lines.append(f"{g.benchmark} vs {h.benchmark} benchmark ({g.label} / {h.label})")
                else:
                    lines.append(f"{g.label} vs {h.label}: {describe_diff(_settings_diff(g.settings, h.settings))}")
        raise NotComparableError("refusing to rank rows of different protocols together (not comparable): "
                                 + " | ".join(lines))
    targets = {r["target"] for r in rows}
    if len(targets) > 1:
        raise NotComparableError(f"refusing to rank rows of different targets together: {sorted(targets)}")
    scored = sorted(((_num(r.get(value)), i) for i, r in enumerate(rows)),
                    key=lambda t: (t[0] is None, -(t[0] or 0.0), t[1]))
    ranks: dict[int, int | None] = {}
    prev, prev_rank = None, 0
    for pos, (v, i) in enumerate(scored, start=1):
        if v is None:
            ranks[i] = None
            continue
        if v != prev:
            prev, prev_rank = v, pos
        ranks[i] = prev_rank
    return [(ranks[i], rows[i]) for i in range(len(rows))]


# ---------------------------------------------------------------------------------------------- CSV I/O
def read_leaderboard(path: Path | str) -> list[dict[str, str]]:
    """Rows of a leaderboard.csv (missing file: no rows). Unknown columns are an error naming them."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        unknown = sorted(set(reader.fieldnames or []) - set(COLUMNS))
        if unknown:
            raise ValueError(f"{path}: unknown columns {unknown}; expected the columns of reports.aggregate.COLUMNS "
                             "(delete the file to rebuild it from the published numbers and your runs)")
        return [{c: (r.get(c) or "") for c in COLUMNS} for r in reader]


def render_csv(rows: Sequence[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: r.get(c, "") for c in COLUMNS})
    return buf.getvalue()


def write_leaderboard(path: Path | str, rows: Sequence[dict[str, str]]) -> bool:
    """Write atomically; returns whether the file changed."""
    path = Path(path)
    text = render_csv(rows)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return True


def _ledgers_from_rows(rows: Iterable[dict[str, str]]) -> dict[tuple, dict[str, Any]]:
    ledgers: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r.get("kind") not in ROW_KINDS or not r.get("seed_values"):
            continue
        ident = {k: r[k] for k in ("method", "backbone", "source", "target", "protocol_settings")}
        ident.update(zip(GROUP_FIELDS, group_key(r)))
        ident["reported_lines"] = ";".join(
            str(x) for x in ((json.loads(r["seed_values"]) or [{}])[-1].get("reported_lines") or []))
        try:
            keys = {dataset_display(k): k for k in _protocol_targets(json.loads(r["protocol_settings"]))}
        except (ValueError, TypeError):
            keys = {}
        ident["target_key"] = keys.get(r["target"], "__avg__" if r["target"].startswith("Avg(") else r["target"])
        entries = {e["run_id"]: e for e in json.loads(r["seed_values"])}
        ledgers[_row_key(r)] = {"identity": ident, "entries": entries}
    return ledgers


def record_benchmark(record: dict[str, Any]) -> str:
    """``real`` or ``miniature`` (the built-in benchmark; its rows never share a file with real-data rows)."""
    return record.get("benchmark") or ("miniature" if record.get("miniature") else "real")


def merge_into_csv(csv_path: Path | str, records: Sequence[dict[str, Any]],
                   options: AggregateOptions = AggregateOptions(), *,
                   benchmark: str | None = None) -> list[dict[str, str]]:
    """All rows of the leaderboard after merging ``records`` into the CSV at ``csv_path`` (not written).

    With ``benchmark`` ("real" or "miniature", as the command line does) the CSV holds that benchmark only:
    records and existing rows of the other one are left out (a warning counts the rows), and only the real
    one carries the published rows."""
    csv_path = Path(csv_path)
    csv_dir = csv_path.parent if str(csv_path.parent) else Path(".")
    existing = read_leaderboard(csv_path)
    if benchmark is not None:
        dropped = [r for r in existing if r.get("kind") in ROW_KINDS and r.get("benchmark") != benchmark]
        if dropped:
            print(f"warning: {csv_path}: dropping {len(dropped)} row(s) that are not {benchmark}-benchmark "
                  "results", file=sys.stderr)
            existing = [r for r in existing if r not in dropped]
        records = [r for r in records if record_benchmark(r) == benchmark]
    previous = {_row_key(r): r for r in existing if r.get("kind") in ROW_KINDS}
    ledgers = _ledgers_from_rows(existing)
    for record in sorted(records, key=lambda r: (r.get("run_id", ""), r.get("_path", ""))):
        try:
            pairs = record_entries(record, csv_dir)
        except (KeyError, TypeError, ValueError) as exc:
            print(f"warning: skipping record {record.get('_path') or record.get('run_id')}: {exc!r}", file=sys.stderr)
            continue
        for ident, entry in pairs:
            rkey = tuple(ident[f] for f in GROUP_FIELDS) + (ident["target"],)
            ledger = ledgers.setdefault(rkey, {"identity": ident, "entries": {}})
            ledger["identity"] = ident
            ledger["entries"][entry["run_id"]] = entry
    reproduced = aggregate_rows(ledgers, previous, csv_dir, options)
    out = []
    for r in reported_rows() if benchmark in (None, "real") else ():
        out.append({c: r.get(c, "") for c in COLUMNS})
    return out + reproduced


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.aggregate",
                                     description="Merge result records (result.json) into leaderboard.csv.")
    parser.add_argument("runs", nargs="*",
                        help="folders searched recursively for result.json (none: only refresh the published rows "
                             "and recompute the existing rows from their ledgers)")
    parser.add_argument("--csv", default="leaderboard.csv", help="leaderboard CSV to merge into (default: %(default)s)")
    parser.add_argument("--miniature-csv", default=None,
                        help="where records of the built-in miniature benchmark go (default: "
                             "leaderboard_miniature.csv next to --csv, git-ignored); they never enter --csv")
    parser.add_argument("--resamples", type=int, default=bs.DEFAULT_RESAMPLES,
                        help="bootstrap resamples for the CIs (0 = no CI; default %(default)s)")
    parser.add_argument("--level", type=float, default=bs.DEFAULT_LEVEL, help="CI level (default %(default)s)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the CSV would change")
    args = parser.parse_args(argv)
    roots = [Path(p) for p in args.runs]
    records: list[dict[str, Any]] = []
    for root in roots:
        if not root.is_dir():
            print(f"error: {root} is not a folder of runs (pass the --out folder(s) of runners.run)", file=sys.stderr)
            return 2
        records.extend(load_records(root))
    options = AggregateOptions(args.resamples, args.level)
    mini_csv = Path(args.miniature_csv) if args.miniature_csv else Path(args.csv).with_name(MINIATURE_CSV)
    outputs = [(Path(args.csv), merge_into_csv(args.csv, records, options, benchmark="real"))]
    if any(record_benchmark(r) == "miniature" for r in records) or mini_csv.is_file():
        outputs.append((mini_csv, merge_into_csv(mini_csv, records, options, benchmark="miniature")))
    if args.check:
        stale = [p for p, rows in outputs if not (p.is_file() and p.read_text(encoding="utf-8") == render_csv(rows))]
        for path, rows in outputs:
            print(f"{path}: {'would change' if path in stale else 'up to date'} ({len(rows)} rows)")
        return 1 if stale else 0
    for path, rows in outputs:
        n_rep = sum(r["kind"] == "reproduced" for r in rows)
        n_records = sum(record_benchmark(r) == ("real" if path == outputs[0][0] else "miniature") for r in records)
        changed = write_leaderboard(path, rows)
        print(f"{path}: {len(rows) - n_rep} published rows, {n_rep} reproduced rows from {n_records} record(s) "
              f"{'(updated)' if changed else '(unchanged)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
