"""The results ledger of experiments: one JSON line per trained model, appended to a file kept in git.

The lake's srs_metrics is the system's record of a run; the ledger is the record of experiments across runs,
lakes and machines (a lake is rebuilt, the ledger stays), so each line names the code revision, the machine and
every setting that differs from the dataset's defaults.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from tslrec.config import INFRASTRUCTURE, NOT_OF_A_MODEL, Config, load_config

METRICS = ("HR@5", "HR@10", "NDCG@5", "NDCG@10")
SPLITS = ("valid", "test")
_NOT_SETTINGS = (*INFRASTRUCTURE, *NOT_OF_A_MODEL)  # what Config.hash leaves out of a model's identity


def entry(config: Config, training: dict[str, Any], metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """One model's line: srs_training's row, its valid and test metrics over all users, and where it ran."""
    overall = {(m["split"], m["metric"]): m["value"] for m in metrics if m["user_group"] == "all"}
    return {
        "dataset": training["dataset"], "run_id": training["run_id"], "stage": training["stage"],
        "backbone": training["backbone"], "variant": training["variant"],
        "label": config.ledger.label or training["variant"], "loss": config.srs.loss, "seed": training["seed"],
        "settings_hash": training["settings_hash"], "revision": code_revision(), "settings": changed_settings(config),
        **{split: {name: overall.get((split, name)) for name in METRICS} for split in SPLITS},
        "test_segments": _segments(metrics, "test"),
        **{key: training[key] for key in ("epochs", "best_epoch", "stopped_by", "seconds_per_epoch", "device",
                                          "precision", "processes")},
        "machine": machine(training["device"]),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _segments(metrics: list[dict[str, Any]], split: str) -> dict[str, dict[str, float]]:
    """Per user group of a split (activity, target popularity, tail and cold items): its users and metrics."""
    segments: dict[str, dict[str, float]] = {}
    for m in metrics:
        if m["split"] == split and m["user_group"] != "all":
            segments.setdefault(m["user_group"], {"users": m["users"]})[m["metric"]] = m["value"]
    return segments


def append(path: str | Path, line: dict[str, Any]) -> None:
    """One write of one line in append mode: concurrent writers (worker processes, two sweeps) never interleave
    within a line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(line, sort_keys=True) + "\n").encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, data)
    finally:
        os.close(descriptor)


def read(path: str | Path) -> list[dict[str, Any]]:
    """Every line of a ledger; a line that is not JSON is named with its number."""
    lines = []
    for number, text in enumerate(Path(path).read_text().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {number}: not a JSON object ({exc}); fix or delete the line") from exc
    return lines


def recorded(path: str | Path, run_id: str, stage: str) -> set[tuple[str, str, int, str]]:
    """(backbone, variant, seed, settings_hash) of the models of a run and stage that have a line in the ledger."""
    if not Path(path).is_file():
        return set()
    return {(line["backbone"], line["variant"], line["seed"], line["settings_hash"]) for line in read(path)
            if line["run_id"] == run_id and line["stage"] == stage}


def changed_settings(config: Config) -> dict[str, Any]:
    """`section.key: value` for every setting that shapes a model and differs from the dataset's defaults (its
    conf/datasets file; for a dataset without one, configured by overrides alone, conf/defaults.yaml's)."""
    defaults = _flat(load_config(overrides=[f"dataset.name={json.dumps(config.dataset.name)}"]).to_dict())
    return {key: value for key, value in _flat(config.to_dict()).items()
            if value != defaults.get(key) and not key.startswith(_NOT_SETTINGS)}


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@functools.cache
def code_revision() -> str:
    """The git commit of the code that trained, `+dirty` with uncommitted changes; `unknown` outside a checkout.
    Read once per process, when the stage starts (see srs.stages), so a commit made while a long sweep trains
    does not relabel its models."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def machine(device: str = "cpu") -> str:
    """The processor (or GPU), the cores this process may use, the memory and Python: what a figure ran on."""
    cores = len(os.sched_getaffinity(0))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    if device == "cuda" and torch.cuda.is_available():
        processor = torch.cuda.get_device_name()
    else:
        try:
            processor = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                              if line.startswith("model name")), platform.processor())
        except OSError:
            processor = platform.processor() or platform.machine()
    return f"{processor}, {cores} cores, {memory:.0f} GiB, Python {platform.python_version()}"
