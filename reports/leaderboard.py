"""Print the results found under a folder as a table: ``python -m reports.leaderboard [RUNS_DIR]``.

Rows are grouped by (benchmark, protocol, protocol hash): miniature-benchmark results and real-data
results are never shown in one table, and results of different protocol hashes are never ranked together.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from runners.records import load_records


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def leaderboard_tables(records: list[dict[str, Any]]) -> list[str]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["benchmark"], r["protocol"], r["eval_variant"], r["protocol_hash"])].append(r)
    tables = []
    for (bench, protocol, variant, phash), rows in sorted(groups.items()):
        targets = list(rows[0]["results"]["targets"])
        header = ["method", "backbone", "seed", "pretrained", *targets, "mean", "rPD", "trainable", "run"]
        body = []
        for r in sorted(rows, key=lambda r: -r["results"]["mean_miou"]):
            res = r["results"]
            body.append([
                r["method"], r["backbone"], str(r["seed"]), str(r["pretrained"]).lower(),
                *[_fmt(res["targets"].get(t, {}).get("miou")) for t in targets],
                _fmt(res["mean_miou"]), _fmt(res.get("mean_rpd"), 1),
                f"{r['params']['trainable'] / 1e6:.2f}M", r["run_id"],
            ])
        widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
        line = lambda cells: "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths))  # noqa: E731
        title = (f"== {protocol} [{variant}] hash {phash} — "
                 f"{'MINIATURE benchmark' if bench == 'miniature' else 'real data'} "
                 f"(mIoU %, rPD = 100 x target / source mIoU)")
        tables.append("\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, body)]))
    return tables


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.leaderboard", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", default="runs", help="folder searched recursively for result.json")
    args = parser.parse_args(argv)
    root = Path(args.runs)
    if not root.is_dir():
        print(f"error: {root} is not a folder of runs (pass the --out folder(s) of runners.run)", file=sys.stderr)
        return 2
    records = load_records(root)
    if not records:
        print(f"no result records (result.json) under {root}")
        return 0
    print("\n\n".join(leaderboard_tables(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
