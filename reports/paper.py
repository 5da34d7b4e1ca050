"""Regenerate published DGSS tables from the published numbers: ``python -m reports.paper TABLE``.

``python -m reports.paper list`` names the tables. Each renders as Markdown and LaTeX with the best value of
a column in bold and the second underlined, a provenance mark on every cell (a letter per reference, ``*``
for an average computed here because the source printed none) and a per-cell provenance list (Markdown) or
per-row comment (LaTeX) naming the reference and the ``reported.csv`` line. ``--ours leaderboard.csv``
puts our reproduced numbers (mean ± std over seeds, protocol variant) and the delta to the paper beside each
cell, preceded by the released checkpoint re-evaluated (``kind=released`` rows, ``runners.released``) where
there is one: published | released | retrained, each delta beyond 1.0 mIoU marked ``[|Δ|>1]``;
best/second marks always refer to the published numbers.

The tables hold exactly the published cells of their reference (``reports/reported.csv`` and its note
transcriptions). ``reported.csv`` does not record the published row order, so rows are grouped by backbone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from reports.reported import ReportedCell, harness_names, load_reported, reference_text

__all__ = ["Column", "AvgColumn", "Row", "TableSpec", "Cell", "Table", "TABLES", "build_table", "render_markdown",
           "render_latex", "load_ours", "load_released", "main"]


@dataclass(frozen=True)
class Column:
    """A published (source -> target) column."""

    label: str
    source: str
    target: str


@dataclass(frozen=True)
class AvgColumn:
    """The papers' "Avg." column over earlier columns: the published average where the source printed one
    (``published_target`` of the same source), else the plain mean computed here (marked ``*``)."""

    label: str
    of: tuple[str, ...]
    source: str
    published_target: str


@dataclass(frozen=True)
class Row:
    """One table row: the ``reported.csv`` (method, backbone) and the references its cells may come from
    (first match wins). ``ours`` overrides the harness (method, backbone) used for reproduced numbers."""

    label: str
    method: str
    backbone: str
    refs: tuple[str, ...]
    group: str = ""
    ours: tuple[str, str] | None = None


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    columns: tuple[Column | AvgColumn, ...]
    rows: tuple[Row, ...]
    paper_variant: str | None = None
    footnotes: tuple[str, ...] = ()


@dataclass
class Cell:
    text: str = ""
    value: float | None = None
    kind: str = "missing"  # published | computed | missing
    provenance: str = ""
    ref: str = ""
    marker: str = ""  # e.g. "†" from the published note
    best: int = 0  # 1 = best (bold), 2 = second (underlined)
    ours: str = ""


@dataclass
class Table:
    spec: TableSpec
    cells: list[list[Cell]]
    letters: dict[str, str] = field(default_factory=dict)  # reference -> provenance letter

    def cell(self, row_label: str, column_label: str) -> Cell:
        i = [r.label for r in self.spec.rows].index(row_label)
        j = [c.label for c in self.spec.columns].index(column_label)
        return self.cells[i][j]


def _gc(t: str) -> str:
    return {"Cityscapes": "C", "BDD100K": "B", "Mapillary": "M", "GTA5": "G", "SYNTHIA": "S"}.get(t, t)


def _cols(source: str, targets: Sequence[str]) -> tuple[Column, ...]:
    return tuple(Column(f"{_gc(source)}→{_gc(t)}", source, t) for t in targets)


_G = _cols("GTA5", ("Cityscapes", "BDD100K", "Mapillary"))
_C = _cols("Cityscapes", ("BDD100K", "Mapillary"))
_AVG_G = AvgColumn("Avg. (G)", tuple(c.label for c in _G), "GTA5", "Avg(C/B/M)")
_AVG_C = AvgColumn("Avg. (C)", tuple(c.label for c in _C), "Cityscapes", "Avg(B/M)")

_T1 = ("tqdmT1",)
TABLES: dict[str, TableSpec] = {t.name: t for t in (
    TableSpec(
        "tqdm-table1",
        "tqdm (ECCV'24) Table 1: mIoU (%) trained on GTA5 (G) or Cityscapes (C), tested on C, BDD100K (B), "
        "Mapillary (M)",
        (*_G, _AVG_G, *_C, _AVG_C),
        (
            Row("TLDR", "TLDR", "RN101", _T1, "ResNet-101"),
            Row("WildNet", "WildNet", "RN101", _T1, "ResNet-101"),
            Row("SAN-SAW", "SAN-SAW", "RN101", _T1, "ResNet-101"),
            Row("SHADE", "SHADE", "RN101", _T1, "ResNet-101"),
            Row("FAMix", "FAMix", "CLIP RN101", _T1, "CLIP ResNet-101"),
            Row("SHADE", "SHADE", "MiT-B5", _T1, "MiT-B5 / Swin-L"),
            Row("IBAFormer", "IBAFormer", "MiT-B5", _T1, "MiT-B5 / Swin-L"),
            Row("HGFormer", "HGFormer", "Swin-L", _T1, "MiT-B5 / Swin-L"),
            Row("VLTSeg", "VLTSeg", "CLIP ViT-B/16", _T1, "CLIP ViT-B/16"),
            Row("tqdm", "tqdm", "CLIP ViT-B/16", _T1, "CLIP ViT-B/16"),
            Row("Rein", "Rein", "DINOv2-L", _T1, "ViT-L (DINOv2-L / EVA02-CLIP-L)"),
            Row("Rein", "Rein", "EVA02-L", _T1, "ViT-L (DINOv2-L / EVA02-CLIP-L)"),
            Row("VLTSeg", "VLTSeg", "EVA02-CLIP-L/14", _T1, "ViT-L (DINOv2-L / EVA02-CLIP-L)"),
            Row("tqdm", "tqdm", "EVA02-CLIP-L/14", _T1, "ViT-L (DINOv2-L / EVA02-CLIP-L)"),
        ),
        paper_variant="tqdm",
        footnotes=("† trained and tested at 1024x1024 (tqdm Table 1 caption).",),
    ),
    TableSpec(
        "rein-table",
        "Rein (CVPR'24): frozen vision foundation models + Mask2Former vs Rein, GTA5 -> C/B/M (Fig. 1(a) table; "
        "Rein rows as printed in tqdm Table 1)",
        (*_G, _AVG_G),
        (
            Row("CLIP-ViT-L (frozen)", "Frozen backbone+M2F", "CLIP-ViT-L", ("ReinF1",),
                "Frozen backbone + Mask2Former"),
            Row("SAM-H (frozen)", "Frozen backbone+M2F", "SAM-H", ("ReinF1",), "Frozen backbone + Mask2Former"),
            Row("MAE-L (frozen)", "Frozen backbone+M2F", "MAE-L", ("ReinF1",), "Frozen backbone + Mask2Former"),
            Row("EVA02-L (frozen)", "Frozen backbone+M2F", "EVA02-L", ("ReinF1",), "Frozen backbone + Mask2Former"),
            Row("DINOv2-L (frozen)", "Frozen backbone+M2F", "DINOv2-L", ("ReinF1", "Rein#48"),
                "Frozen backbone + Mask2Former"),
            Row("TLDR (RN101)", "TLDR", "RN101", ("ReinF1",), "Earlier DGSS"),
            Row("Rein (EVA02-L)", "Rein", "EVA02-L", _T1, "Rein"),
            Row("Rein (DINOv2-L)", "Rein", "DINOv2-L", _T1, "Rein"),
        ),
        paper_variant="rein",
    ),
    TableSpec(
        "rein-readme",
        "Rein README: GTA5 -> Cityscapes/BDD100K by backbone (released checkpoints)",
        _G[:2],
        tuple(Row(b, "Rein", b, ("ReinRD",), "Rein") for b in (
            "ResNet-50 (IN1k)", "ResNet-101 (IN1k)", "ConvNeXt-L (IN21k)", "DINOv2 ViT-S", "DINOv2 ViT-B", "DINOv2-L")),
        paper_variant="rein",
    ),
    TableSpec(
        "set-table",
        "SET (ACM MM'24) Cityscapes-source table (README): C -> BDD100K, Mapillary, GTA5, SYNTHIA",
        (*_cols("Cityscapes", ("BDD100K", "Mapillary", "GTA5", "SYNTHIA")),
         AvgColumn("Avg.", ("C→B", "C→M", "C→G", "C→S"), "Cityscapes", "Avg(B/M/G/S)")),
        (
            Row("SHADE", "SHADE", "RN?", ("SETrd",)),
            Row("WildNet", "WildNet", "RN?", ("SETrd",)),
            Row("SAW", "SAW", "RN?", ("SETrd",)),
            Row("HGFormer", "HGFormer", "Swin-?", ("SETrd",)),
            Row("CMFormer", "CMFormer", "Swin-?", ("SETrd",)),
            Row("Rein (DINOv2-L)", "Rein (as listed by SET)", "DINOv2-L", ("SETrd",), ours=("rein", "dinov2_vitl14")),
            Row("SET (DINOv2-L)", "SET", "DINOv2-L", ("SETrd",)),
        ),
        paper_variant="rein",
        footnotes=("Backbones marked ? are not stated in SET's table.",),
    ),
    TableSpec(
        "set-acdc",
        "SET (ACM MM'24) Cityscapes -> ACDC table (README; split not stated)",
        (*_cols("Cityscapes", ("ACDC-fog", "ACDC-night", "ACDC-rain", "ACDC-snow")),
         AvgColumn("Avg.", ("C→ACDC-fog", "C→ACDC-night", "C→ACDC-rain", "C→ACDC-snow"), "Cityscapes", "Avg(ACDC)")),
        (
            Row("ISW*", "ISW*", "RN?", ("SETrd",)),
            Row("CMFormer*", "CMFormer*", "Swin", ("SETrd",)),
            Row("Rein†", "Rein† (as listed by SET)", "DINOv2-L", ("SETrd",)),
            Row("SET", "SET", "DINOv2-L", ("SETrd",)),
        ),
        footnotes=("* and † as marked in SET's README.",),
    ),
    TableSpec(
        "famix-table",
        "FAMix (CVPR'24): GTA5 -> Cityscapes, BDD100K, Mapillary, ACDC val (README re-evaluation of the released "
        "checkpoints; paper row via tqdm Table 1)",
        (*_G, *_cols("GTA5", ("ACDC-night (val)", "ACDC-snow (val)", "ACDC-rain (val)", "ACDC-fog (val)"))),
        (
            Row("RN50, scale 1", "FAMix", "CLIP RN50", ("FAMixRD",), "CLIP ResNet-50 (README)"),
            Row("RN50, scale 0.5", "FAMix (test scale 0.5)", "CLIP RN50", ("FAMixRD",), "CLIP ResNet-50 (README)"),
            Row("RN50, ens. 1+0.5", "FAMix (ens. scales 1+0.5)", "CLIP RN50", ("FAMixRD",), "CLIP ResNet-50 (README)"),
            Row("RN101, scale 1", "FAMix", "CLIP RN101", ("FAMixRD",), "CLIP ResNet-101 (README)"),
            Row("RN101, scale 0.5", "FAMix (test scale 0.5)", "CLIP RN101", ("FAMixRD",), "CLIP ResNet-101 (README)"),
            Row("RN101, ens. 1+0.5", "FAMix (ens. scales 1+0.5)", "CLIP RN101", ("FAMixRD",),
                "CLIP ResNet-101 (README)"),
            Row("RN101 (paper, mean of 3 runs)", "FAMix", "CLIP RN101", _T1, "CLIP ResNet-101 (paper)"),
        ),
        paper_variant="famix",
    ),
)}
"""The regenerable tables, by name."""


# ---------------------------------------------------------------------------------------------- building
def _ref_ok(cell: ReportedCell, refs: tuple[str, ...]) -> int | None:
    for i, r in enumerate(refs):
        if cell.reference == r or cell.reference.split()[0] == r:
            return i
    return None


def _find(cells: Sequence[ReportedCell], row: Row, source: str, target: str) -> ReportedCell | None:
    hits = [(_ref_ok(c, row.refs), c.origin != "row", c.line, k, c) for k, c in enumerate(cells)
            if c.method == row.method and c.backbone == row.backbone and c.source == source and c.target == target]
    hits = [h for h in hits if h[0] is not None]
    return min(hits)[-1] if hits else None


def _decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def _mean_text(texts: list[str]) -> str:
    """Plain mean rounded half-up to the inputs' precision (what a paper would print)."""
    mean = sum(Decimal(t) for t in texts) / len(texts)
    q = Decimal(1).scaleb(-max(_decimals(t) for t in texts))
    return str(mean.quantize(q, rounding=ROUND_HALF_UP))


def _marker(cell: ReportedCell) -> str:
    return "†" if cell.note.strip().startswith("†") else ""


def build_table(name_or_spec: str | TableSpec, cells: Sequence[ReportedCell] | None = None,
                ours: dict[tuple, dict[str, str]] | None = None,
                released: dict[tuple, dict[str, str]] | None = None) -> Table:
    """Fill a table's cells from the published numbers (and optionally our reproduced rows)."""
    spec = TABLES[name_or_spec] if isinstance(name_or_spec, str) else name_or_spec
    cells = load_reported() if cells is None else list(cells)
    labels = [c.label for c in spec.columns]
    table_cells: list[list[Cell]] = []
    letters: dict[str, str] = {}
    for row in spec.rows:
        out: list[Cell] = []
        for col in spec.columns:
            if isinstance(col, Column):
                hit = _find(cells, row, col.source, col.target)
                if hit is None:
                    out.append(Cell(text="–"))
                    continue
                letters.setdefault(hit.reference, "abcdefghijklmnopqrstuvwxyz"[len(letters)])
                out.append(Cell(hit.text, hit.value, "published", hit.provenance(), hit.reference, _marker(hit)))
            else:
                hit = _find(cells, row, col.source, col.published_target)
                if hit is not None:
                    letters.setdefault(hit.reference, "abcdefghijklmnopqrstuvwxyz"[len(letters)])
                    out.append(Cell(hit.text, hit.value, "published", "published average: " + hit.provenance(),
                                    hit.reference))
                    continue
                parts = [out[labels.index(lbl)] for lbl in col.of]
                if all(p.kind == "published" for p in parts):
                    text = _mean_text([p.text for p in parts])
                    out.append(Cell(text, float(text), "computed",
                                    f"plain mean of {', '.join(col.of)} computed here (not printed in the source)"))
                else:
                    out.append(Cell(text="–"))
        table_cells.append(out)
    _mark_best(table_cells)
    table = Table(spec, table_cells, letters)
    if ours or released:
        _attach_ours(table, ours or {}, released or {})
    return table


def _mark_best(cells: list[list[Cell]]) -> None:
    for j in range(len(cells[0]) if cells else 0):
        values = sorted({c[j].value for c in cells if c[j].value is not None}, reverse=True)
        for row in cells:
            v = row[j].value
            if v is not None and len(values) > 1:
                row[j].best = 1 if v == values[0] else 2 if v == values[1] else 0


# ---------------------------------------------------------------------------------------------- ours
def load_ours(csv_path: Path | str, benchmark: str = "real", kind: str = "reproduced") -> dict[tuple, dict[str, str]]:
    """Reproduced (or ``kind``) rows of a leaderboard.csv keyed by (method_id, backbone_id, variant, source,
    target), the most seeds first."""
    from reports.aggregate import read_leaderboard

    out: dict[tuple, dict[str, str]] = {}
    rows = [r for r in read_leaderboard(csv_path) if r["kind"] == kind and r["benchmark"] == benchmark]
    for r in sorted(rows, key=lambda r: (-int(r["n_seeds"] or 0), r["protocol_hash"], r["config_hash"])):
        out.setdefault((r["method_id"], r["backbone_id"], r["variant"], r["source"], r["target"]), r)
    return out


def load_released(csv_path: Path | str, benchmark: str = "real") -> dict[tuple, dict[str, str]]:
    """Released-checkpoint rows (``kind=released``), keyed like :func:`load_ours`."""
    return load_ours(csv_path, benchmark, kind="released")


def _delta_text(value: str, paper: float | None) -> str:
    if paper is None:
        return ""
    delta = float(value) - paper
    return f" (Δ {delta:+.2f}{' [|Δ|>1]' if abs(delta) > 1.0 else ''})"


def _attach_ours(table: Table, ours: dict[tuple, dict[str, str]],
                 released: dict[tuple, dict[str, str]] | None = None) -> None:
    """Beside each cell: the released checkpoint re-evaluated, then our retraining, each with its delta."""
    for row, out in zip(table.spec.rows, table.cells):
        names = row.ours or harness_names(row.method, row.backbone)
        if not names:
            continue
        for col, cell in zip(table.spec.columns, out):
            target = col.target if isinstance(col, Column) else col.published_target
            variants = [v for v in (table.spec.paper_variant, "default") if v]
            parts = []
            for label, rows in (("released", released or {}), ("ours", ours)):
                hit = next((rows[k] for v in variants
                            if (k := (names[0], names[1], v, col.source, target)) in rows), None)
                if hit is None or not hit.get("miou_mean"):
                    continue
                text = hit["miou_mean"] + (f"±{hit['miou_std']}" if hit.get("miou_std") else "")
                text += _delta_text(hit["miou_mean"], cell.value)
                what = hit["checkpoint"] if label == "released" else f"n={hit['n_seeds']}"
                parts.append(f"{label} {text} [{hit['variant']}, {what}]")
            cell.ours = "; ".join(parts)


# ---------------------------------------------------------------------------------------------- rendering
def _md_cell(cell: Cell, table: Table) -> str:
    if cell.kind == "missing":
        text = cell.text
    else:
        text = cell.text + cell.marker
        text = f"**{text}**" if cell.best == 1 else f"<u>{text}</u>" if cell.best == 2 else text
        text += f"<sup>{table.letters[cell.ref]}</sup>" if cell.kind == "published" else "<sup>*</sup>"
    if cell.ours:
        text += f"<br>{cell.ours}"
    return text


def _legend(table: Table) -> list[str]:
    lines = [f"{letter}: {ref} — {reference_text(ref)}" for ref, letter in table.letters.items()]
    if any(c.kind == "computed" for row in table.cells for c in row):
        lines.append("*: plain mean of the row's cells, computed here (the source printed no average)")
    return lines


def render_markdown(table: Table, *, cell_notes: bool = True) -> str:
    """GitHub Markdown: bold = best, underlined = second (published numbers only), provenance letters."""
    spec = table.spec
    head = ["Method", "Backbone", *[c.label for c in spec.columns]]
    lines = [f"**{spec.title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * len(spec.columns)]
    group = None
    for row, cells in zip(spec.rows, table.cells):
        if row.group and row.group != group:
            group = row.group
            lines.append(f"| *{group}* |" + " |" * (len(head) - 1))
        lines.append("| " + " | ".join([row.label, row.backbone, *[_md_cell(c, table) for c in cells]]) + " |")
    lines.append("")
    lines.append("Bold = best, underlined = second best per column (published numbers). Provenance: "
                 + "; ".join(_legend(table)) + ".")
    lines.extend(f"{f}" for f in spec.footnotes)
    if cell_notes:
        lines += ["", "<details><summary>Cell provenance</summary>", ""]
        for row, cells in zip(spec.rows, table.cells):
            for col, cell in zip(spec.columns, cells):
                if cell.kind != "missing":
                    lines.append(f"- {row.label} ({row.backbone}), {col.label} = {cell.text}: {cell.provenance}"
                                 + (f"; {cell.ours}" if cell.ours else ""))
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                  "→": r"$\rightarrow$", "†": r"\dag{}", "±": r"$\pm$", "Δ": r"$\Delta$", "–": "--", "—": "---"}


def _tex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _tex_cell(cell: Cell, table: Table) -> str:
    if cell.kind == "missing":
        return "--"
    text = _tex(cell.text + cell.marker)
    text = rf"\textbf{{{text}}}" if cell.best == 1 else rf"\underline{{{text}}}" if cell.best == 2 else text
    text += rf"\textsuperscript{{{table.letters[cell.ref] if cell.kind == 'published' else '*'}}}"
    if cell.ours:
        text += rf" {{\scriptsize {_tex(cell.ours)}}}"
    return text


def render_latex(table: Table, *, cell_notes: bool = True) -> str:
    """A booktabs ``table`` environment; each row is followed by a comment naming its cells' sources."""
    spec = table.spec
    n = len(spec.columns) + 2
    lines = [r"% generated by python -m reports.paper " + spec.name + " (from reports/reported.csv)",
             r"\begin{table}[t]", r"\centering", r"\caption{" + _tex(spec.title) + "}",
             r"\begin{tabular}{ll" + "c" * len(spec.columns) + "}", r"\toprule",
             " & ".join(["Method", "Backbone", *[_tex(c.label) for c in spec.columns]]) + r" \\", r"\midrule"]
    group = None
    for row, cells in zip(spec.rows, table.cells):
        if row.group and row.group != group:
            if group is not None:
                lines.append(r"\midrule")
            group = row.group
            lines.append(rf"\multicolumn{{{n}}}{{l}}{{\textit{{{_tex(group)}}}}} \\")
        lines.append(" & ".join([_tex(row.label), _tex(row.backbone), *[_tex_cell(c, table) for c in cells]]) + r" \\")
        if cell_notes:
            for col, cell in zip(spec.columns, cells):
                if cell.kind != "missing":
                    lines.append(f"% {col.label} = {cell.text}: {cell.provenance}".replace("\n", " "))
    legend = "; ".join(_legend(table))
    lines += [r"\bottomrule", r"\end{tabular}",
              r"\par\footnotesize Bold: best, underlined: second best per column. " + _tex(legend) + ".",
              *[r"\par " + _tex(f) for f in spec.footnotes], r"\end{table}"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.paper",
                                     description="Regenerate a published DGSS table (Markdown and LaTeX).")
    parser.add_argument("table", help=f"one of {', '.join(TABLES)}; 'list' to list them; 'all' for every table")
    parser.add_argument("--format", choices=("md", "latex", "both"), default="both")
    parser.add_argument("--ours", metavar="CSV", help="leaderboard.csv whose reproduced rows go beside the cells")
    parser.add_argument("--ours-benchmark", choices=("real", "miniature"), default="real",
                        help="which reproduced rows --ours uses (miniature numbers are NOT comparable with papers)")
    parser.add_argument("--no-cell-notes", action="store_true", help="omit the per-cell provenance list/comments")
    parser.add_argument("--out", metavar="DIR", help="write <table>.md / <table>.tex there instead of printing")
    args = parser.parse_args(argv)
    if args.table == "list":
        for spec in TABLES.values():
            print(f"{spec.name:14s} {spec.title}")
        return 0
    names = list(TABLES) if args.table == "all" else [args.table]
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        print(f"error: unknown table {unknown[0]!r}; tables: {', '.join(TABLES)}", file=sys.stderr)
        return 2
    ours = released = None
    if args.ours:
        if not Path(args.ours).is_file():
            print(f"error: {args.ours} not found (build it with python -m reports.aggregate)", file=sys.stderr)
            return 2
        ours = load_ours(args.ours, args.ours_benchmark)
        released = load_released(args.ours, args.ours_benchmark)
    for name in names:
        table = build_table(name, ours=ours, released=released)
        outputs = []
        if args.format in ("md", "both"):
            outputs.append(("md", render_markdown(table, cell_notes=not args.no_cell_notes)))
        if args.format in ("latex", "both"):
            outputs.append(("tex", render_latex(table, cell_notes=not args.no_cell_notes)))
        for ext, text in outputs:
            if args.out:
                path = Path(args.out) / f"{name}.{ext}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
                print(f"wrote {path}")
            else:
                print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
