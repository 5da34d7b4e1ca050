"""The three-column view: per cell, the published number, the released checkpoint re-evaluated, and our
retraining (mean ± std over seeds), with the deltas; ``|delta| > FLAG_MIOU`` is flagged.

One view row per ``kind=released`` leaderboard row (checkpoint x protocol x variant x profile x target).
The retraining is the ``kind=reproduced`` row of the same benchmark, method, backbone, protocol, variant,
protocol hash, profile and target (the most seeds when several training configs qualify), so the released
and the retrained numbers are always measured under one protocol. The published number is the one the
release names (``methods.released`` registry lines).

``python -m reports.released [--csv leaderboard.csv] [--format md|text]`` prints it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from reports.aggregate import read_leaderboard

__all__ = ["FLAG_MIOU", "ThreeColumnRow", "three_column_view", "format_three_column", "main"]

FLAG_MIOU = 1.0
"""A delta beyond this many mIoU points is flagged."""

_MATCH = ("benchmark", "method_id", "backbone_id", "protocol", "variant", "protocol_hash", "target")


def _num(s: str | None) -> float | None:
    return float(s) if s not in (None, "") else None


@dataclass(frozen=True)
class ThreeColumnRow:
    """Published / released / retrained numbers of one cell."""

    method: str
    backbone: str
    checkpoint: str
    protocol: str
    variant: str
    profile: str
    benchmark: str
    source: str
    target: str
    published: float | None
    published_ref: str
    released: float | None
    retrained: float | None
    retrained_std: float | None
    retrained_seeds: int
    retrained_runs: str

    @staticmethod
    def _delta(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(a - b, 2)

    @property
    def released_vs_published(self) -> float | None:
        return self._delta(self.released, self.published)

    @property
    def retrained_vs_published(self) -> float | None:
        return self._delta(self.retrained, self.published)

    @property
    def retrained_vs_released(self) -> float | None:
        return self._delta(self.retrained, self.released)

    def deltas(self) -> tuple[float | None, float | None, float | None]:
        return self.released_vs_published, self.retrained_vs_published, self.retrained_vs_released

    @property
    def flagged(self) -> bool:
        return any(d is not None and abs(d) > FLAG_MIOU for d in self.deltas())


def three_column_view(rows: Sequence[dict[str, str]]) -> list[ThreeColumnRow]:
    """The view rows of a leaderboard, in leaderboard order."""
    retrained: dict[tuple, list[dict[str, str]]] = {}
    for r in rows:
        if r.get("kind") == "reproduced":
            retrained.setdefault(tuple(r[f] for f in _MATCH) + (r.get("profile") or "harmonised",), []).append(r)
    out = []
    for r in rows:
        if r.get("kind") != "released":
            continue
        profile = r.get("profile") or "harmonised"
        ours = retrained.get(tuple(r[f] for f in _MATCH) + (profile,), [])
        best = max(ours, key=lambda o: (int(o["n_seeds"] or 0), o["run_ids"]), default=None)
        out.append(ThreeColumnRow(
            r["method"], r["backbone"], r["checkpoint"], r["protocol"], r["variant"], profile, r["benchmark"],
            r["source"], r["target"], _num(r["reported_miou"]), r["reported_ref"], _num(r["miou_mean"]),
            _num(best["miou_mean"]) if best else None, _num(best["miou_std"]) if best else None,
            int(best["n_seeds"] or 0) if best else 0, best["run_ids"] if best else ""))
    return out


def _f(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _retrained_text(v: ThreeColumnRow) -> str:
    if v.retrained is None:
        return "–"
    std = f" ± {v.retrained_std:.2f}" if v.retrained_std is not None else ""
    return f"{v.retrained:.2f}{std} (n={v.retrained_seeds})"


HEADER = ("checkpoint", "protocol [variant, profile]", "target", "published", "released", "Δ rel−pub",
          "retrained (mean ± std)", "Δ ret−pub", "Δ ret−rel", "flag")


def table_rows(view: Sequence[ThreeColumnRow]) -> list[tuple[str, ...]]:
    """The view as strings, one tuple per row in :data:`HEADER` order."""
    out = []
    for v in view:
        pub = _f(v.published) + (f" [{v.published_ref}]" if v.published_ref else "")
        d1, d2, d3 = v.deltas()
        out.append((v.checkpoint, f"{v.protocol} [{v.variant}, {v.profile}]", v.target, pub, _f(v.released),
                    _f(d1, True), _retrained_text(v), _f(d2, True), _f(d3, True),
                    f"|Δ| > {FLAG_MIOU:g}" if v.flagged else ""))
    return out


def format_three_column(view: Sequence[ThreeColumnRow], fmt: str = "md") -> str:
    """Markdown (``md``) or aligned plain text (``text``)."""
    rows = table_rows(view)
    if fmt == "md":
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(r[i]) for r in (HEADER, *rows)) for i in range(len(HEADER))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in (HEADER, *rows)]
        lines.insert(1, "-" * len(lines[0]))
    n_flag = sum(v.flagged for v in view)
    lines.append("")
    lines.append(f"{len(view)} released-checkpoint cells, {n_flag} flagged (|Δ| > {FLAG_MIOU:g} mIoU). Δ rel−pub: "
                 "released checkpoint re-evaluated minus published; Δ ret−pub / ret−rel: our retraining minus "
                 "published / released, under the same protocol hash and profile.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.released", description=__doc__.splitlines()[0])
    p.add_argument("--csv", default="leaderboard.csv")
    p.add_argument("--format", choices=("md", "text"), default="text")
    args = p.parse_args(argv)
    print(format_three_column(three_column_view(read_leaderboard(args.csv)), args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
