"""Stop signals during training: the first asks for a checkpoint and a clean stop, a second stops at once."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator


class StopSignals:
    """SIGINT/SIGTERM set `requested` instead of killing the process, so the loop can save first.

    A second signal stops at once (KeyboardInterrupt, which the loop reports with what it loses), except while a
    checkpoint is written (`saving`): then it waits until that checkpoint is whole, so nothing is lost.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> StopSignals:  # noqa: PYI034 (Self needs Python 3.11)
        self.requested = self.held = 0
        self.writing = False
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if not self.requested:
            self.requested = signum
            print("flexip train: stopping after this step, with a checkpoint; a second Ctrl-C stops at once and "
                  "loses the steps since the last checkpoint", file=sys.stderr)  # fmt: skip
        elif self.writing:
            self.held = signum
            print("flexip train: finishing the checkpoint being written, then stopping", file=sys.stderr)
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """A checkpoint is being written: a second signal waits until it is whole, then stops."""
        self.writing = True
        try:
            yield
        finally:
            self.writing = False
        if self.held:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def ignore_stop_signals(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: the workers must live on while the main process saves.
    for s in StopSignals.SIGNALS:
        signal.signal(s, signal.SIG_IGN)
