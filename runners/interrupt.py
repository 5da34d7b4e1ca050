"""Ctrl-C and SIGTERM without losing work.

While training, the first SIGINT/SIGTERM only sets a flag: the Trainer checkpoints at the next iteration
boundary and stops (``runners.train.TrainingStopped``); a second signal interrupts at once. Outside training
(evaluation) a signal raises ``KeyboardInterrupt`` at once: ``benchmarks.evaluate`` saves the per-image
confusion matrices computed so far, and ``--resume`` reuses them.

Handlers are installed only where a signal still has Python's default handler: under submitit, its own
SIGTERM (ignored) and SIGUSR2 (checkpoint and requeue) handlers stay in place, so requeueing works as before.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Callable flag for the training loop (``Trainer(should_stop=...)``); ``signum`` is the signal received."""

    def __init__(self, log: Callable[[str], None] = print):
        self.signum: int | None = None
        self.training = False  # set while the training loop can stop at an iteration boundary
        self.log = log

    def __call__(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, frame) -> None:
        first = self.signum is None
        self.signum = signum if first else self.signum
        if first and self.training:
            self.log(f"received {signal.Signals(signum).name}: saving a checkpoint at the end of this iteration, "
                     "then stopping (send it again to stop at once)")
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        """Install ``handle`` for SIGINT/SIGTERM where their handler is still the default; restore on exit."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                current = signal.getsignal(sig)
                if current in (signal.SIG_DFL, signal.default_int_handler):
                    previous[sig] = current
                    signal.signal(sig, self.handle)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def training_phase(self) -> Iterator[None]:
        self.training = True
        try:
            yield
        finally:
            self.training = False
