"""Pause, resume, stop and checkpoint requests from another thread. No mlx here."""

from __future__ import annotations

import threading
from typing import Callable

from engine import protocol as P


class Control:
    """Pause, resume, stop and checkpoint requests; safe to call from any thread.

    The loop looks at it only at step boundaries, so a request takes effect
    after the step in flight finishes.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._paused = False
        self._stop = False
        self._checkpoint = False

    def submit(self, command: P.Command) -> None:
        with self._cond:
            if isinstance(command, P.Pause):
                self._paused = True
            elif isinstance(command, P.Resume):
                self._paused = False
            elif isinstance(command, P.Stop):
                self._stop = True
            elif isinstance(command, P.SaveCheckpoint):
                self._checkpoint = True
            self._cond.notify_all()

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def take_checkpoint_request(self) -> bool:
        with self._cond:
            asked, self._checkpoint = self._checkpoint, False
            return asked

    def wait_while_paused(self, on_pause: Callable[[], None], on_resume: Callable[[], None], on_checkpoint: Callable[[], None]) -> None:
        """Block while paused (model and optimizer stay in memory) until resume or stop.

        A checkpoint asked for while paused is written without resuming.
        """
        with self._cond:
            if not self._paused or self._stop:
                return
        on_pause()
        while True:
            with self._cond:
                while self._paused and not self._stop and not self._checkpoint:
                    self._cond.wait(timeout=0.5)
                checkpoint_now = self._checkpoint and self._paused and not self._stop
                self._checkpoint = self._checkpoint and not checkpoint_now
            if not checkpoint_now:
                break
            on_checkpoint()
        on_resume()

    @property
    def paused(self) -> bool:
        return self._paused
