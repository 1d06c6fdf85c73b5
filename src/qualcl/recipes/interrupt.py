"""Ctrl-C as a clean stop: a stage interrupted by SIGINT stops where SIGTERM stops it, so the run resumes exactly."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

__all__ = ["GracefulInterrupt"]


class GracefulInterrupt(Callback):
    """Routes the first Ctrl-C of a training stage to Lightning's SIGTERM stop; a second one stops at once.

    Lightning stops on SIGTERM at the next batch boundary and saves a checkpoint there (the driver
    resumes from it exactly), but on ``KeyboardInterrupt`` it saves whatever state the interrupted
    batch had left (half-applied BatchNorm statistics, a history row about to be written twice). While
    installed, the first SIGINT during a stage asks the stage to stop the SIGTERM way and says so; a
    second SIGINT, or one outside a stage (data generation, evaluation), raises ``KeyboardInterrupt``
    as usual: finished stages are kept either way. :attr:`signal` records that a SIGINT stopped the
    run, so the driver can exit with 130 (the shell's code for Ctrl-C) instead of 143.
    """

    def __init__(self) -> None:
        self.trainer: L.Trainer | None = None
        self.signal: int | None = None
        self._previous: Any = None

    def install(self) -> None:
        """Handle SIGINT (only from the main thread, where Python delivers signals)."""
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def uninstall(self) -> None:
        """Put the previous SIGINT handler back."""
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """A stage's trainer starts: the next Ctrl-C stops it cleanly."""
        self.trainer = trainer

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """The stage's trainer is done."""
        self.trainer = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None or self.trainer is None or frame is None:
            raise KeyboardInterrupt
        self.signal = signum
        print(
            "\nqualcl: Ctrl-C: stopping after the current step so that the run resumes exactly "
            "(press Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
        self.trainer._signal_connector._sigterm_notifier_fn(signum, frame)
