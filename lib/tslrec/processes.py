"""Worker processes that end with the process that started them."""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys


def die_with_parent(parent: int | None = None) -> None:
    """Called first in a worker (the training pool's, torchrun's, the SFT's under torchrun): a worker whose starter
    is killed, as a scheduler kills a task past its timeout, must not live on, using the cores beside the task's
    retry and, for the SFT, finishing and removing the checkpoints a re-run resumes from. Linux only.

    The kernel's signal only covers a starter that dies after this call; a worker takes seconds to get here (its
    imports), and one whose starter was killed meanwhile had been found training on beside the retry, writing the
    same checkpoint files. So it also exits if its parent is no longer `parent` (where the caller knows it) or it
    has been adopted by init."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    now = os.getppid()
    if now == 1 or (parent is not None and now != parent):
        sys.exit(f"the process that started this worker is gone (its parent is now pid {now}); exiting")


def module_command(module: str, *args: str) -> list[str]:
    """The command that runs `python -m module args` in a process that dies with this one: a launcher such as
    torchrun, started by a command that is then killed, would otherwise live on with its workers."""
    return [sys.executable, "-m", __name__, str(os.getpid()), module, *args]


def _run_module(argv: list[str]) -> None:
    parent, module, *args = argv
    sys.argv = [module, *args]
    die_with_parent(int(parent))
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _run_module(sys.argv[1:])
