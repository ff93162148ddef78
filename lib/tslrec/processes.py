"""Worker processes that end with the process that started them."""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys


def die_with_parent() -> None:
    """Called first in a worker (the training pool's, torchrun's, the SFT's under torchrun): a worker whose starter
    is killed, as a scheduler kills a task past its timeout, must not live on, using the cores beside the task's
    retry and, for the SFT, finishing and removing the checkpoints a re-run resumes from. Linux only."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def module_command(module: str, *args: str) -> list[str]:
    """The command that runs `python -m module args` in a process that dies with this one: a launcher such as
    torchrun, started by a command that is then killed, would otherwise live on with its workers."""
    return [sys.executable, "-m", __name__, str(os.getpid()), module, *args]


def _run_module(argv: list[str]) -> None:
    parent, module, *args = argv
    die_with_parent()
    if os.getppid() != int(parent):  # the starter died before the line above
        sys.exit(f"{module}: the process that started it (pid {parent}) is gone")
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _run_module(sys.argv[1:])
