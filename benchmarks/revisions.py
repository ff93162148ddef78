"""Two revisions of the code side by side: each checked out into a temporary git worktree and run from there (its
own lib/ and conf/) on a copy of the same input tables, so a before/after comparison runs in one process on one
machine."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def checked_out(revision: str, scratch: Path) -> Iterator[Path]:
    """A worktree of `revision` under `scratch`, removed afterwards; prints the commit it resolved to."""
    tree = scratch / revision.replace("/", "_")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), revision], check=True,
                   capture_output=True)
    try:
        commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short=12", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
        print(f"{revision} = {commit}", flush=True)
        yield tree
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def fresh_lake(source: Path, lake: Path, tables: Iterable[str]) -> Path:
    """`lake` emptied and given a copy of the input tables only: each revision writes its own outputs."""
    shutil.rmtree(lake, ignore_errors=True)
    for table in tables:
        shutil.copytree(source / table, lake / table)
    return lake


def environment(tree: Path) -> dict[str, str]:
    """The environment that makes `python -m tslrec.cli` run the worktree's code and configuration."""
    return {**os.environ, "PYTHONPATH": str(tree / "lib"), "TSLREC_CONF_DIR": str(tree / "conf")}
