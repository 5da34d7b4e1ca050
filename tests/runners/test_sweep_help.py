"""The command lines of ``runners.sweep`` and ``runners.sweep status`` as their users read them: every option's
spelling, help text, metavar, default, choices and group, pinned in ``sweep_cli.json`` (Python-version
independent: taken from the parsers' actions, not from argparse's formatting). The README's commands table
documents these options: a changed help line must be a deliberate edit of both. After one, regenerate with
``DGSS_UPDATE_GOLDEN=1 python -m pytest tests/runners/test_sweep_help.py`` and review the diff."""

import argparse
import json
import os
from pathlib import Path

import pytest

from runners.sweep import build_parser, build_status_parser

GOLDEN = Path(__file__).with_name("sweep_cli.json")


def describe(parser: argparse.ArgumentParser) -> dict:
    """What ``--help`` shows, as data: prog, description, and per group its title and options."""
    def value(v):
        if v is argparse.SUPPRESS:
            return "==SUPPRESS=="
        return getattr(v, "__name__", v) if callable(v) else v

    groups = []
    for group in parser._action_groups:
        actions = [dict(options=list(a.option_strings), dest=a.dest, help=value(a.help), metavar=a.metavar,
                        default=value(a.default), choices=list(a.choices) if a.choices else None, nargs=a.nargs,
                        required=a.required, type=value(a.type), kind=type(a).__name__)
                   for a in group._group_actions]
        groups.append(dict(title=group.title, description=group.description, actions=actions))
    return dict(prog=parser.prog, description=parser.description, formatter=parser.formatter_class.__name__,
                groups=groups)


def current() -> dict:
    return {"sweep": describe(build_parser()), "status": describe(build_status_parser())}


def dump(commands: dict) -> str:
    """JSON with one line per option (a readable diff when a help line changes)."""
    lines = ["{"]
    for c, (command, d) in enumerate(commands.items()):
        lines.append(f' "{command}": {{"prog": {json.dumps(d["prog"])}, "formatter": {json.dumps(d["formatter"])},')
        lines.append(f'  "description": {json.dumps(d["description"])},')
        lines.append('  "groups": [')
        for i, g in enumerate(d["groups"]):
            lines.append(f'   {{"title": {json.dumps(g["title"])}, "description": {json.dumps(g["description"])}, '
                         '"actions": [')
            lines += [f"    {json.dumps(a)}" + ("," if j < len(g["actions"]) - 1 else "")
                      for j, a in enumerate(g["actions"])]
            lines.append("   ]}" + ("," if i < len(d["groups"]) - 1 else ""))
        lines.append("  ]}" + ("," if c < len(commands) - 1 else ""))
    return "\n".join(lines + ["}"]) + "\n"


def test_help_of_sweep_and_status_is_pinned():
    got = current()
    if os.environ.get("DGSS_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(dump(got), encoding="utf-8")
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    for command in ("sweep", "status"):
        assert got[command]["prog"] == want[command]["prog"]
        assert got[command]["description"] == want[command]["description"]
        assert got[command]["formatter"] == want[command]["formatter"]  # raw: the description's line break kept
        assert [g["title"] for g in got[command]["groups"]] == [g["title"] for g in want[command]["groups"]]
        for g_got, g_want in zip(got[command]["groups"], want[command]["groups"]):
            assert g_got == g_want, f"{command}, group {g_want['title']!r}: regenerate (module docstring) if deliberate"


@pytest.mark.parametrize("command,options", [
    ("sweep", ["--methods", "--protocols", "--seeds", "--executor", "--partition", "--time", "--max-parallel",
               "--dry-run", "--resubmit-failed", "--profile", "--precision", "--cfg-options"]),
    ("status", ["--resubmit-failed", "--wait", "--json"]),
])
def test_the_readme_options_are_shown_with_a_help_line(command, options):
    """The options of the README's commands table are listed by ``--help`` with a help line (not suppressed)."""
    shown = {o: a["help"] for g in current()[command]["groups"] for a in g["actions"] for o in a["options"]}
    for option in options:
        assert option in shown, option
    helped = [o for o in options if o not in ("--partition", "--profile", "--precision")]  # self-explaining
    assert all(shown[o] and shown[o] != "==SUPPRESS==" for o in helped)
