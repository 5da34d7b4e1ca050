"""Released checkpoints: which exist, which the weights folder holds, and one command that re-evaluates them.

    python -m runners.released list [--weights-dir W] [--json] [--facts]
    python -m runners.released eval --weights-dir W --data-root D [--profile released|harmonised|both]
        [--only ID,ID] [--executor local|slurm --partition ... --max-parallel N] [--out DIR] [--dry-run]

``list`` prints :data:`methods.released.RELEASED_CHECKPOINTS` as a table with, per file, ``found``,
``missing`` or ``CHECKSUM MISMATCH`` (against a published sha256), the local sha256 (cached, see
:mod:`methods.weights`), the official backbone files it needs, the protocols it is evaluated on and the
``reports/reported.csv`` lines it should reproduce; then the methods that released nothing, with the source.

``eval`` evaluates every found checkpoint on the protocols its source reports, under the ``released``
profile (the repository's own evaluation variant, fp32: to get the published number) and the
``harmonised`` one (the default variant: to rank it with every other run), as ``runners.run --released
ID`` cells of a sweep folder (``runners.sweep``): cells are keyed by spec hash and skipped when done, run
locally or as one Slurm job array, and ``python -m runners.sweep status DIR`` follows them.
``python -m reports.aggregate DIR`` then adds them to the leaderboard as ``kind=released`` rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from methods.released import NO_RELEASE, RELEASED_CHECKPOINTS, ReleasedCheckpoint
from methods.weights import cached_sha256, default_hash_cache, locate, weights_dir_from
from runners.preflight import UserError, report_error
from runners.profiles import PROFILES
from runners.run import DATA_ROOT_ENV
from runners.sweep import (Cell, ExecutorSettings, _add_executor_options, _settings_from, add_control_options,
                           add_passthrough_options, cell_from_argv, load_manifest, log_once, passthrough_args,
                           run_cells)

DEFAULT_OUT = Path("runs") / "released"
EVAL_PASSTHROUGH = ("--device", "--workers", "--no-reference", "--allow-random-init")


# ============================================================================================== list
@dataclass
class FileStatus:
    """What the weights folder holds of one released checkpoint."""

    entry: ReleasedCheckpoint
    state: str  # "found" | "missing" | "CHECKSUM MISMATCH" | "SIZE MISMATCH"
    path: str | None = None
    size: int | None = None
    sha256: str | None = None
    needs_missing: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        e = self.entry
        return {"id": e.id, "method": e.method, "backbone": e.backbone, "source": e.source, "file": e.file,
                "path": e.path, "url": e.url, "state": self.state, "local_path": self.path, "size": self.size,
                "sha256": self.sha256, "sha256_published": e.sha256, "size_published": e.size,
                "name_confirmed": e.name_confirmed, "needs": list(e.needs), "needs_missing": list(self.needs_missing),
                "evaluations": [list(x) for x in e.evaluations], "evaluable": e.evaluable,
                "reported_lines": list(e.reported_lines), "facts": list(e.facts), "note": e.note}


def file_statuses(weights_dir: Path | None, entries: Sequence[ReleasedCheckpoint] | None = None, *,
                  hash_files: bool = True) -> list[FileStatus]:
    """Found / missing / checksum mismatch of each released file under ``weights_dir``."""
    cache = default_hash_cache()
    out = []
    for e in (RELEASED_CHECKPOINTS.values() if entries is None else entries):
        needs_missing = tuple(f for f in e.needs if locate(weights_dir, f) is None)
        path = e.locate(weights_dir)
        if path is None:
            out.append(FileStatus(e, "missing", needs_missing=needs_missing))
            continue
        size = path.stat().st_size
        digest = cached_sha256(path, cache) if hash_files or e.sha256 else None
        state = "found"
        if e.size is not None and size != e.size:
            state = "SIZE MISMATCH"
        elif e.sha256 is not None and digest != e.sha256:
            state = "CHECKSUM MISMATCH"
        out.append(FileStatus(e, state, str(path), size, digest, needs_missing))
    return out


def _evaluations(e: ReleasedCheckpoint) -> str:
    if not e.evaluable:
        return f"- ({e.why_not_evaluable()})"
    return ", ".join(f"{p}[{v or 'harmonised only'}]" for p, v in e.evaluations)


def format_list(statuses: Sequence[FileStatus], *, facts: bool = False) -> str:
    """The registry as a table, then the methods without releases, then (``facts``) the sources."""
    header = ("id", "backbone", "source", "file (under the weights folder)", "state", "sha256", "needs",
              "evaluated on", "reported.csv lines")
    rows = []
    for s in statuses:
        e = s.entry
        needs = ", ".join(f + (" (missing)" if f in s.needs_missing else "") for f in e.needs) or "-"
        digest = (s.sha256[:16] if s.sha256 else "-") + ("" if e.sha256 else (" (unpublished)" if s.sha256 else ""))
        name = e.path + ("" if e.name_confirmed else " *")
        rows.append((e.id, e.backbone or "(not in harness)", e.source, name, s.state, digest, needs,
                     _evaluations(e), ",".join(map(str, e.reported_lines)) or "-"))
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if any(not s.entry.name_confirmed for s in statuses):
        lines.append("* published name not stated by the source: save the download under this name")
    missing = [s for s in statuses if s.state == "missing"]
    if missing:
        lines.append("")
        lines.append(f"{len(missing)} missing; download each to <weights-dir>/<file>:")
        lines += [f"  {s.entry.path}  <-  {s.entry.url}" for s in missing]
    lines.append("")
    lines.append("methods without released checkpoints:")
    lines += [f"  {m}: {why}" for m, why in NO_RELEASE.items()]
    if facts:
        lines.append("")
        lines.append("sources:")
        for s in statuses:
            e = s.entry
            lines.append(f"  {e.id}: " + "; ".join(e.facts) + (f". {e.note}" if e.note else ""))
    counts = {st: sum(s.state == st for s in statuses) for st in ("found", "missing")}
    bad = len(statuses) - counts["found"] - counts["missing"]
    lines.append("")
    lines.append(f"{len(statuses)} released checkpoints of {len({s.entry.method for s in statuses})} methods: "
                 f"{counts['found']} found, {counts['missing']} missing" + (f", {bad} MISMATCH" if bad else ""))
    return "\n".join(lines)


def list_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m runners.released list",
                                description="Released checkpoints: found / missing / checksum mismatch per file.")
    p.add_argument("--weights-dir", default=None, help="folder of official files (or $DGSS_WEIGHTS)")
    p.add_argument("--method", default=None, help="only this method's checkpoints")
    p.add_argument("--no-hash", action="store_true", help="skip the local sha256 of files without a published one")
    p.add_argument("--facts", action="store_true", help="also print where each fact comes from")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    folder = weights_dir_from(args.weights_dir)
    entries = [e for e in RELEASED_CHECKPOINTS.values() if args.method in (None, e.method)]
    if args.method and not entries and args.method not in NO_RELEASE:
        raise UserError(f"--method {args.method}: no released checkpoints; methods with releases: "
                          f"{', '.join(sorted({e.method for e in RELEASED_CHECKPOINTS.values()}))}")
    statuses = file_statuses(folder, entries, hash_files=not args.no_hash)
    if args.json:
        print(json.dumps({"weights_dir": str(folder) if folder else None,
                          "checkpoints": [s.to_dict() for s in statuses], "no_release": NO_RELEASE}, indent=2))
    else:
        print(f"weights folder: {folder if folder else '(none: pass --weights-dir or set DGSS_WEIGHTS)'}")
        print(format_list(statuses, facts=args.facts))
    return 1 if any(s.state not in ("found", "missing") for s in statuses) else 0


# ============================================================================================== eval
def eval_argvs(statuses: Sequence[FileStatus], profiles: Sequence[str], weights_dir: Path,
               run_args: Sequence[str], log=print) -> list[tuple[list[str], ReleasedCheckpoint, str]]:
    """``runners.run`` arguments of every (found checkpoint, protocol, profile) evaluation."""
    out = []
    for s in statuses:
        e = s.entry
        if s.state != "found" or not e.evaluable:
            continue
        for protocol, variant in e.evaluations:
            for profile in profiles:
                if profile == "released" and variant is None:
                    log(f"{e.id}: {protocol} has no {e.method} variant in the harness; released profile skipped")
                    continue
                argv = ["--method", e.method, "--backbone", str(e.backbone), "--protocol", protocol,
                        "--eval-variant", variant if profile == "released" else "default", "--profile", profile,
                        "--released", e.id, "--weights-dir", str(weights_dir.absolute()), *run_args]
                out.append((argv, e, profile))
    return out


def build_eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runners.released eval",
                                description="Evaluate every found released checkpoint on its protocols (sweep cells).")
    p.add_argument("--weights-dir", default=None, help="folder with the released and official files ($DGSS_WEIGHTS)")
    p.add_argument("--data-root", default=None,
                   help=f"datasets in their official layouts (or ${DATA_ROOT_ENV}); none: the miniature benchmark")
    p.add_argument("--profile", default="both", choices=(*PROFILES, "both"),
                   help="released (the repository's own evaluation, fp32), harmonised (the default protocol "
                        "variant), or both (default)")
    p.add_argument("--only", default=None, help="comma list of checkpoint ids (default: every found one)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="sweep folder (default: %(default)s)")
    add_passthrough_options(p, EVAL_PASSTHROUGH)
    _add_executor_options(p)
    add_control_options(p)
    return p


def plan_released_cells(args: argparse.Namespace, log=print) -> list[Cell]:
    """The sweep cells of ``eval``; user mistakes exit with code 2 before anything is built or submitted."""
    weights_dir = weights_dir_from(args.weights_dir)
    if weights_dir is None or not weights_dir.is_dir():
        raise UserError(f"weights folder {weights_dir or '(none)'} not found: pass --weights-dir DIR "
                          "(or set $DGSS_WEIGHTS) holding the released files (python -m runners.released list)")
    entries = list(RELEASED_CHECKPOINTS.values())
    if args.only:
        ids = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [i for i in ids if i not in RELEASED_CHECKPOINTS]
        if unknown:
            raise UserError(f"--only: unknown checkpoint ids {', '.join(unknown)} (python -m runners.released list)")
        entries = [RELEASED_CHECKPOINTS[i] for i in ids]
    statuses = file_statuses(weights_dir, entries, hash_files=False)
    bad = [s for s in statuses if s.state not in ("found", "missing")]
    if bad:
        raise UserError(f"{bad[0].path}: {bad[0].state.lower()} against the published file; download it again "
                          f"from {bad[0].entry.url}")
    found = [s for s in statuses if s.state == "found" and s.entry.evaluable]
    if not found:
        raise UserError(f"no evaluable released checkpoint found under {weights_dir} (python -m runners.released "
                          f"list --weights-dir {weights_dir} shows where each file goes)")
    run_args = passthrough_args(args, ("--data-root", *EVAL_PASSTHROUGH))
    profiles = PROFILES if args.profile == "both" else (args.profile,)
    once = log_once(log)
    cells: dict[str, Cell] = {}
    for argv, entry, profile in eval_argvs(found, profiles, weights_dir, run_args, log=once):
        cell = cell_from_argv(argv, log=once, released=entry.id, profile=profile)
        missing = [f for f in entry.needs if locate(weights_dir, f) is None]
        if missing and not cell.labels["miniature"] and "--allow-random-init" not in argv:
            once(f"{entry.id}: skipped, needs {', '.join(missing)} in {weights_dir}")
            continue
        cells.setdefault(cell.key, cell)
    return list(cells.values())


def eval_main(argv: Sequence[str]) -> int:
    args = build_eval_parser().parse_args(argv)
    sweep_dir = Path(args.out).absolute()
    manifest = load_manifest(sweep_dir)
    stored = ExecutorSettings().merged(manifest["executor"]) if manifest["executor"] else None
    settings = _settings_from(args, stored)
    cells = plan_released_cells(args)
    return run_cells(sweep_dir, cells, settings, ["released", "eval", *argv], dry_run=args.dry_run,
                     resubmit_failed=args.resubmit_failed, wait=args.wait, poll_s=args.poll_s)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"list": list_main, "eval": eval_main}
    if not argv or argv[0] not in commands:
        print(__doc__.split("\n\n")[0] + "\n" + __doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        return commands[argv[0]](argv[1:])
    except UserError as exc:  # a mistake: one line, exit code 2, before anything is built or submitted
        return report_error(exc)


if __name__ == "__main__":
    sys.exit(main())
