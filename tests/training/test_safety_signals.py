"""A second Ctrl-C: at once between checkpoints (the loss of steps is then reported), but never in the middle
of writing one, which is finished first."""

from __future__ import annotations

import os
import signal

import pytest

from flexip.training.signals import StopSignals


def test_a_second_signal_waits_for_the_checkpoint_being_written(capsys):
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == signal.SIGINT  # the first only asks the loop to stop after saving
        written = []
        with pytest.raises(KeyboardInterrupt), stop.saving():
            os.kill(os.getpid(), signal.SIGTERM)
            written.append("the rest of the checkpoint")  # not cut short by the second signal
        assert written == ["the rest of the checkpoint"]
        with pytest.raises(KeyboardInterrupt):  # between checkpoints, a second signal stops at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert "finishing the checkpoint" in capsys.readouterr().err
