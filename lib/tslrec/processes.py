"""Worker processes that end with the process that started them."""

from __future__ import annotations

import ctypes
import signal
import sys


def die_with_parent() -> None:
    """Called first in a worker (the training pool's, the SFT's under torchrun): a worker whose starter is killed, as
    a scheduler kills a task past its timeout, must not live on, using the cores beside the task's retry and, for
    the SFT, finishing and removing the checkpoints a re-run resumes from. Linux only."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
