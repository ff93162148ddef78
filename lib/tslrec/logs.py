"""Logging that names the run and the stage on every line, so interleaved logs of a scheduler stay readable."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from typing import Iterator

_run_id: contextvars.ContextVar[str] = contextvars.ContextVar("run_id", default="-")
_stage: contextvars.ContextVar[str] = contextvars.ContextVar("stage", default="-")


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = _run_id.get()
        record.stage = _stage.get()
        return True


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s [run=%(run_id)s stage=%(stage)s] %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger("tslrec")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@contextlib.contextmanager
def stage_context(run_id: str, stage: str) -> Iterator[None]:
    tokens = (_run_id.set(run_id), _stage.set(stage))
    try:
        yield
    finally:
        _stage.reset(tokens[1])
        _run_id.reset(tokens[0])


def adopt_stage(run_id: str, stage: str) -> None:
    """For a worker process that lives only for one stage of one run: every line it logs names them."""
    _run_id.set(run_id)
    _stage.set(stage)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("tslrec") else f"tslrec.{name}")
