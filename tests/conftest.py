"""One local SparkSession for the whole test process (starting one costs ~10 s); a fresh lake per test."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import psutil
import pytest

from tslrec.config import Config, load_config
from tslrec.context import RunContext
from tslrec.logs import setup_logging
from tslrec.spark import get_spark

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TEST_SPARK = ["spark.profile=test", "spark.master=local[2]", "spark.progress_interval_s=1"]


@pytest.fixture(scope="session")
def spark():
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    setup_logging()
    session = get_spark(load_config(overrides=TEST_SPARK).spark)
    yield session
    session.stop()


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """make_config('ingest.kcore.user=2', dataset='beauty') -> a config whose lake is this test's own folder."""

    def build(*overrides: str, dataset: str | None = None, files: Sequence[Path] = ()) -> Config:
        return load_config(dataset, [f"lake.root={tmp_path / 'lake'}", f"srs.checkpoints={tmp_path / 'checkpoints'}",
                                      *TEST_SPARK, *overrides], files)

    return build


@pytest.fixture
def make_context(spark, make_config) -> Callable[..., RunContext]:
    def build(*overrides: str, dataset: str | None = None, files: Sequence[Path] = ()) -> RunContext:
        return RunContext(make_config(*overrides, dataset=dataset, files=files))

    return build


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: the shared datasets live beside the checkout, in ../shared/data")
    return path


def kill_and_check_the_workers_die(command: Sequence[str], working: str | None, log: Path) -> None:
    """A scheduler or the OOM killer ends a command with SIGKILL to its own pid: once its log shows `working` (None:
    as soon as it has started a worker, which is then still importing), the command is killed so, and none of its
    descendants may live on."""
    with log.open("w") as out:
        parent = psutil.Popen(list(command), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while (working not in log.read_text() if working else
               not any("spawn_main" in " ".join(child.cmdline()) for child in parent.children())):
            assert parent.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05 if working is None else 0.5)
        descendants = parent.children(recursive=True)
    finally:
        parent.kill()
        parent.wait()
    assert descendants, "the command started no processes"
    _, alive = psutil.wait_procs(descendants, timeout=30)
    running = {}
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):  # a zombie has ended, unreaped
            running[process.pid] = " ".join(process.cmdline())[:80]
            process.kill()
    assert not running, f"{running} outlived their killed command"
