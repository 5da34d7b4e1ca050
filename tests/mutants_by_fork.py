"""Run a list of mutmut mutants against one collected test session (a pytest plugin for mutation runs).

mutmut's own run costs 10-15 s per mutant on the shared machine (each child sets up a pytest session of its
own), which made the large modules (sweep, aggregate, protocols) take hours. This plugin collects the selected
tests once, imports the project's heavy modules once, then forks one child per mutant: the child switches the
mutant on exactly as mutmut does (``MUTANT_UNDER_TEST``, read by mutmut's trampoline at call time), runs the
tests in order and stops at the first failure (``pytest -x``). A killed mutant takes 0.2-1 s. Run from
``mutants/`` (README, "Contributing")::

    cd mutants && PYTHONPATH=$PWD MUTANTS_LIST=/tmp/names.txt MUTANTS_RESULTS=/tmp/results.txt \\
        nice -n 10 python -m pytest -p tests.mutants_by_fork -q -p no:cacheprovider -p no:xdist <test files>

``MUTANTS_LIST``: one mutant name a line (``mutmut results --all true``); ``MUTANTS_RESULTS``: appended
``<name> killed|survived|timeout|rc<N> <seconds>`` lines (``rc<N>``: the child died otherwise, e.g. by a signal);
``MUTANTS_TIMEOUT``: seconds per mutant (default 60). Without ``MUTANTS_LIST`` the plugin does nothing.
"""

from __future__ import annotations

import importlib
import os
import time

import pytest

# imported once before forking, as mutmut's fork server does (the tests import them lazily)
PREIMPORT = ("torch", "submitit", "benchmarks.protocols", "methods.registry", "runners.run", "runners.distributed")


def _run_one(session: pytest.Session, name: str) -> None:
    """The child: the mutant on, the tests in order until the first failure; exit 1 if one failed, else 0."""
    os.setpgid(0, 0)  # its own process group, so that a timeout also ends what its tests started
    os.environ["MUTANT_UNDER_TEST"] = name
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    items = session.items
    for i, item in enumerate(items):
        item.config.hook.pytest_runtest_protocol(item=item, nextitem=items[i + 1] if i + 1 < len(items) else None)
        if session.testsfailed:
            os._exit(1)
    os._exit(0)


def _wait(pid: int, timeout_s: float, t0: float) -> str:
    while True:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(code)
            return {0: "survived", 1: "killed"}.get(rc, f"rc{rc}")
        if time.monotonic() - t0 > timeout_s:
            try:
                os.killpg(pid, 9)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.02)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session):
    names_file = os.environ.get("MUTANTS_LIST")
    if not names_file:
        return None
    names = [line.split()[0].rstrip(":") for line in open(names_file) if line.strip()]
    timeout_s = float(os.environ.get("MUTANTS_TIMEOUT", "60"))
    for module in PREIMPORT:
        importlib.import_module(module)
    with open(os.environ["MUTANTS_RESULTS"], "a") as out:
        for name in names:
            t0 = time.monotonic()
            pid = os.fork()
            if pid == 0:
                try:
                    _run_one(session, name)
                finally:
                    os._exit(3)
            out.write(f"{name} {_wait(pid, timeout_s, t0)} {time.monotonic() - t0:.2f}\n")
            out.flush()
    return True
