"""RecBole 1.2.1's SASRec beside tslrec's, on the same Beauty leave-one-out split, on this machine, in one run.

    .venv/bin/python benchmarks/peer_sasrec.py                        # 200 epochs at most, all cores, seed 1
    .venv/bin/python benchmarks/peer_sasrec.py --epochs 2 --threads 1 --ledger /tmp/peer.jsonl   # a quick check
    .venv/bin/python benchmarks/peer_sasrec.py srs.precision=fp32    # tslrec config overrides (shared settings too)
    .venv/bin/python benchmarks/peer_sasrec.py --work ~/tslrec-work/peer   # resumable: the same command again goes on

Both sides read the user_sequences of run `beauty` in the lake (`--lake`): tslrec trains on a copy of that lake
(`tslrec train`, label `peer`); RecBole reads it written as an atomic file whose timestamps are each item's
position in its user's sequence, so RecBole's leave-one-out split (order TO, by user, no filtering) is the same:
train = train_items, valid = valid_item, test = test_item. Both run on the CPU with `--threads` torch threads,
one after the other. The settings both sides share come from tslrec's config (srs.backbones.sasrec, srs): 2
blocks, 1 head, hidden and feed-forward size 64, 50 items, dropout 0.6 on the hidden states and the attention,
full-softmax cross-entropy, Adam (lr 0.0005, weight decay 1e-8), 512 rows a batch, validation every 5 epochs
and at the last, stopping after 5 validations without a better valid NDCG@10. What differs is each library's
own: RecBole's SASRec trains on every prefix of a sequence with its last position's loss (about 6x tslrec's
rows on Beauty), tslrec's on whole sequences with every position's loss; their blocks, initialisation and
activation differ too (RecBole: post-norm, GELU, N(0, 0.02); tslrec: Kang & McAuley's). Metrics are full
ranking over all items with each user's history ranked last (RecBole is made to do so; see
peer_recbole_run.py).

RecBole runs in a virtual environment of its own (`--env`), made on first use with the pinned versions below.
Prints the command, the machine, both environments' versions and a Markdown table: seconds per training epoch
(epochs without validation), seconds to the best validated epoch (training and validation), best valid NDCG@10,
test HR@10 and NDCG@10, and each side's seconds to the other side's best valid NDCG@10 (at the logs' 4
decimals). Each side's result is appended to the results ledger (`--ledger`, default
benchmarks/results/beauty.jsonl): tslrec's by tslrec itself, RecBole's with label `recbole-1.2.1`.

RecBole's 200 epochs take hours on a CPU. With `--work`, the run lives in that folder (the lake's copy, RecBole's
data, each side's checkpoint and the epochs logged so far) and the same command started again resumes it: a
finished side is not run again, a side cut short goes on from its last finished epoch, and the seconds per epoch
are the logged ones, so an interruption costs at most the epoch it cut. A folder holding a run of other arguments
is refused. The ledger line of RecBole names every machine the run went on (the seconds of different machines
do not compare: resume on the same one).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tslrec import ledger
from tslrec.config import Config, load_config
from tslrec.lake import Lake

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATASET = "beauty"
RECBOLE_LABEL = "recbole-1.2.1"
# RecBole's environment, every package pinned (pip constraints). torch 2.13 needs setuptools >= 77.0.3 (with
# setuptools < 70 pip falls back to torch 2.12.1 and its CUDA libraries); RecBole 1.2.1 needs numpy < 2 (its
# Config aliases np.float_ and the like); pandas 2 goes with numpy 1.26. torch==2.13.0 is this machine's local
# CPU wheel.
RECBOLE_PINS = [
    "torch==2.13.0", "recbole==1.2.1", "setuptools==80.9.0", "numpy==1.26.4", "pandas==2.3.3",
    "scipy==1.17.1", "scikit-learn==1.9.1", "joblib==1.6.0", "threadpoolctl==3.8.0", "tqdm==4.70.1",
    "colorlog==4.7.2", "colorama==0.4.4", "PyYAML==6.0.4", "tensorboard==2.21.0", "tensorboard-data-server==0.7.2",
    "thop==0.1.1.post2209072238", "tabulate==0.10.0", "plotly==7.1.0", "narwhals==2.29.0", "texttable==1.7.2",
    "psutil==7.2.2", "ray==2.6.3", "absl-py==2.5.1", "aiosignal==1.4.0", "attrs==26.1.0",
    "certifi==2026.10.19.post1", "charset-normalizer==3.5.3", "click==8.5.1", "cloudpickle==3.1.3",
    "filelock==4.3.1", "frozenlist==1.8.0", "fsspec==2026.9.0", "grpcio==1.85.3", "idna==3.20", "Jinja2==3.1.6",
    "jsonschema==4.26.0", "jsonschema-specifications==2025.9.1", "Markdown==3.11.3", "MarkupSafe==3.0.4",
    "mpmath==1.3.0", "msgpack==1.2.4", "networkx==3.6.1", "packaging==26.4", "pillow==13.0.0", "protobuf==7.36.2",
    "python-dateutil==4.0.0", "pytz==2026.6", "referencing==0.37.0", "requests==2.34.2", "rpds-py==2026.9.1",
    "sympy==1.14.0", "typing_extensions==4.16.0", "tzdata==2026.6", "urllib3==2.8.0",
    "Werkzeug==3.1.9",
]
# the RecBole settings that say where and how it runs, not what it learns (left out of its ledger line)
RECBOLE_SETUP = ("data_path", "checkpoint_dir", "use_gpu", "gpu_id", "show_progress", "eval_batch_size",
                 "metric_decimal_place")
EPOCH_LINE = re.compile(r"sasrec/base/seed \d+ epoch (?P<epoch>\d+)/\d+: loss \S+, (?P<seconds>[\d.]+)s"
                        r"(?:; valid HR@10 [\d.]+ NDCG@10 (?P<ndcg>[\d.]+))?")


@dataclass(frozen=True)
class Epoch:
    number: int
    seconds: float  # training, and validation when validated
    ndcg: float | None  # valid NDCG@10 when validated


@dataclass(frozen=True)
class Side:
    name: str
    epochs: list[Epoch]
    line: dict[str, Any]  # the ledger line
    start: dict[str, Any] | None = None  # RecBole's start event (versions and sizes)

    @property
    def best_valid(self) -> float:
        return self.line["valid"]["NDCG@10"]

    def seconds_per_training_epoch(self) -> float:
        plain = [e.seconds for e in self.epochs if e.ndcg is None] or [e.seconds for e in self.epochs]
        return float(np.mean(plain))

    def seconds_to(self, epoch: int) -> float:
        return sum(e.seconds for e in self.epochs if e.number <= epoch)

    def first_reaching(self, ndcg: float) -> int | None:
        """The first validated epoch at least as good as `ndcg`, at the logs' 4 decimals."""
        return next((e.number for e in self.epochs if e.ndcg is not None and round(e.ndcg, 4) >= round(ndcg, 4)),
                    None)


@dataclass(frozen=True)
class Work:
    """The run's folder: the lake's copy, RecBole's data and state, and what each side has done so far, so that a
    run cut short resumes where it stopped."""
    root: Path

    def claim(self, arguments: dict[str, Any]) -> None:
        """The folder for a run of these arguments; one of others is refused."""
        held = self.root / "arguments.json"
        if held.exists() and json.loads(held.read_text()) != arguments:
            raise SystemExit(f"--work {self.root} holds a peer run of other arguments ({held.read_text()}); give "
                             f"another --work, or delete it to start over")
        self.root.mkdir(parents=True, exist_ok=True)
        held.write_text(json.dumps(arguments))
        with (self.root / "machines.jsonl").open("a") as machines:
            machines.write(json.dumps({"started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                       "machine": ledger.machine()}) + "\n")

    def started(self) -> dt.datetime:
        """When the run's first process claimed the folder."""
        first = (self.root / "machines.jsonl").read_text().splitlines()[0]
        return dt.datetime.fromisoformat(json.loads(first)["started_at"])

    def machines(self) -> list[str]:
        """The machines the run has run on, in the order of first use."""
        lines = (self.root / "machines.jsonl").read_text().splitlines()
        return list(dict.fromkeys(json.loads(line)["machine"] for line in lines))

    def copy_of(self, lake: Path) -> Path:
        copy = self.root / "lake"
        if not copy.exists():
            partial = self.root / "lake.partial"
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(lake, partial)
            partial.rename(copy)
        return copy

    def epochs(self, name: str) -> list[Epoch]:
        """A side's epochs logged so far by any process of the run (an epoch trained again: its last log)."""
        log = self.root / f"{name}-epochs.jsonl"
        lines = log.read_text().splitlines() if log.exists() else []
        return sorted({e.number: e for e in (Epoch(**json.loads(line)) for line in lines)}.values(),
                      key=lambda e: e.number)

    def log_epoch(self, name: str, epoch: Epoch) -> None:
        with (self.root / f"{name}-epochs.jsonl").open("a") as log:
            log.write(json.dumps(asdict(epoch)) + "\n")

    def side(self, name: str) -> Side | None:
        """A side that finished in an earlier process of the run."""
        done = self.root / f"{name}.json"
        if not done.exists():
            return None
        side = json.loads(done.read_text())
        return Side(name, [Epoch(**epoch) for epoch in side["epochs"]], side["line"], side["start"])

    def keep(self, side: Side) -> Side:
        partial = self.root / f"{side.name}.json.partial"
        partial.write_text(json.dumps({"epochs": [asdict(e) for e in side.epochs], "line": side.line,
                                       "start": side.start}))
        os.replace(partial, self.root / f"{side.name}.json")
        return side


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", type=Path, default=Path("~/tslrec-work/lake").expanduser(),
                        help="the lake holding run beauty's user_sequences")
    parser.add_argument("--env", type=Path, default=Path("~/.cache/tslrec/recbole-env").expanduser(),
                        help="RecBole's virtual environment, made here on first use")
    parser.add_argument("--epochs", type=int, default=200, help="most training epochs, both sides")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads, both sides")
    parser.add_argument("--ledger", type=Path, default=HERE / "results" / f"{DATASET}.jsonl")
    parser.add_argument("--work", type=Path, help="keep the run in this folder and resume it when run again with the "
                        "same arguments (RecBole's side takes hours on a CPU); by default a temporary folder")
    parser.add_argument("overrides", nargs="*", help="tslrec config overrides, e.g. srs.precision=fp32")
    args = parser.parse_args()
    print("command:", " ".join(sys.argv))
    print("machine:", ledger.machine())
    python = recbole_python(args.env)
    with contextlib.ExitStack() as cleanup:
        work = Work(args.work or Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="peer-sasrec-"))))
        work.claim({"lake": str(args.lake.resolve()), "epochs": args.epochs, "seed": args.seed,
                    "threads": args.threads, "ledger": str(args.ledger.resolve()), "overrides": args.overrides})
        lake = work.copy_of(args.lake)
        overrides = [*args.overrides, f"lake.root={lake}", "train.backbones=[sasrec]", "train.variants=[base]",
                     f"train.seeds=[{args.seed}]", f"srs.max_epochs={args.epochs}", f"srs.threads={args.threads}",
                     "srs.device=cpu", f"srs.checkpoints={work.root / 'checkpoints'}", "train.skip_finished=false",
                     f"ledger.path={args.ledger.resolve()}", "ledger.label=peer"]
        config = load_config(dataset=DATASET, overrides=overrides)
        if config.srs.loss != "ce":
            raise SystemExit(f"srs.loss={config.srs.loss}: RecBole's side is set up for the full-softmax ce loss")
        sequences = Lake(str(lake)).read_pandas("user_sequences", where={"run_id": config.run_id})
        settings = recbole_settings(config, args.seed, args.threads, write_atomic_file(sequences, work.root / "data"),
                                    work.root / "recbole-state")
        tslrec = work.side("tslrec") or work.keep(run_tslrec(overrides, args.ledger, args.seed, work))
        recbole = work.side("RecBole") or work.keep(run_recbole(python, settings, work))
        start = recbole.start
    if recbole.line not in ledger.read(args.ledger):
        ledger.append(args.ledger, recbole.line)
    print("tslrec:", tslrec_versions())
    print("RecBole:", ", ".join(f"{name} {version}" for name, version in start["versions"].items()))
    print(f"data: run {config.run_id}, {start['users']} users, {start['items']} items; RecBole trains on "
          f"{start['train_rows']} prefixes, tslrec on {len(sequences)} sequences")
    print()
    print(report(tslrec, recbole))
    print(f"\nledger: {args.ledger}")
    return 0


def recbole_python(env: Path) -> Path:
    """RecBole's interpreter, its environment made (or brought to RECBOLE_PINS) first."""
    python = env / "bin" / "python"
    pins = "\n".join(RECBOLE_PINS) + "\n"
    done = env / "tslrec-pins.txt"
    if done.exists() and done.read_text() == pins:
        return python
    print(f"making RecBole's environment in {env}", file=sys.stderr)
    if not python.exists():
        subprocess.run(["python3.11", "-m", "venv", str(env)], check=True)
    constraints = env / "constraints.txt"
    constraints.write_text(pins)
    pip = [str(python), "-m", "pip", "install", "--quiet", "-c", str(constraints)]
    subprocess.run([*pip, "torch"], check=True)  # alone first: the local CPU wheel, no CUDA libraries
    subprocess.run([*pip, "setuptools", "recbole"], check=True)
    done.write_text(pins)
    return python


def write_atomic_file(sequences: pd.DataFrame, data: Path) -> Path:
    """<data>/<dataset>/<dataset>.inter: every user's train items, valid item and test item, each timestamped by
    its position in the sequence. Returns `data` (RecBole's data_path)."""
    evaluated = (sequences["valid_item"].fillna(-1) >= 0) & (sequences["test_item"].fillna(-1) >= 0)
    if not evaluated.all():
        raise SystemExit(f"{(~evaluated).sum()} users have no valid or test item (sequences.short_users="
                         f"train_only): RecBole's leave-one-out split would evaluate them; use a lake without them")
    items = [np.append(np.asarray(train, dtype=np.int64), (valid, test))
             for train, valid, test in zip(sequences["train_items"], sequences["valid_item"], sequences["test_item"])]
    lengths = np.array([len(row) for row in items])
    frame = pd.DataFrame({"user_id:token": np.repeat(sequences["user_idx"].to_numpy(), lengths),
                          "item_id:token": np.concatenate(items),
                          "timestamp:float": np.concatenate([np.arange(n) for n in lengths])})
    folder = data / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / f"{DATASET}.inter", sep="\t", index=False)
    return data


def recbole_settings(config: Config, seed: int, threads: int, data: Path, state: Path) -> dict[str, Any]:
    """peer_recbole_run.py's settings: RecBole's config dict with tslrec's SASRec settings."""
    srs = config.srs
    sasrec = srs.backbones.sasrec
    recbole = {
        "data_path": str(data), "checkpoint_dir": str(state), "use_gpu": False, "gpu_id": "",
        "show_progress": False, "seed": seed, "reproducibility": True,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        # no filtering: RecBole 1.2.1's defaults, stated
        "rm_dup_inter": None, "val_interval": None, "filter_inter_by_user_or_item": True,
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "MAX_ITEM_LIST_LENGTH": srs.max_length, "n_layers": sasrec.blocks, "n_heads": sasrec.heads,
        "hidden_size": sasrec.hidden, "inner_size": sasrec.hidden,  # tslrec's feed-forward keeps the width
        "hidden_dropout_prob": sasrec.dropout, "attn_dropout_prob": sasrec.dropout,
        "loss_type": "CE", "train_neg_sample_args": None,
        "learner": "adam", "learning_rate": sasrec.lr, "weight_decay": sasrec.weight_decay,
        "train_batch_size": sasrec.batch_size, "epochs": srs.max_epochs, "eval_step": srs.eval_every,
        "stopping_step": srs.patience - 1,  # RecBole stops after stopping_step + 1 validations without a better one
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["Hit", "NDCG"], "topk": [5, 10], "valid_metric": "NDCG@10",
        "eval_batch_size": srs.eval_batch_size, "metric_decimal_place": 6,
    }
    return {"dataset": DATASET, "threads": threads, "exclude_history": srs.exclude_history, "state_dir": str(state),
            "recbole": recbole}


def run_tslrec(overrides: list[str], ledger_file: Path, seed: int, work: Work) -> Side:
    """`tslrec train` of SASRec base (resuming from its checkpoint in `work`), its epochs from its logs and its
    result from its ledger line. A process cut between the training's end and `Work.keep` leaves the model trained
    in the run's lake: started again, `tslrec train` skips it, and its line is the one written since the run began."""
    command = [str(Path(sys.executable).with_name("tslrec")), "train", "--dataset", DATASET, *overrides]
    print("tslrec:", " ".join(command), file=sys.stderr)
    with subprocess.Popen(command, cwd=ROOT, stdout=sys.stderr, stderr=subprocess.PIPE,
                          text=True) as process:
        for text in process.stderr:
            sys.stderr.write(text)
            if match := EPOCH_LINE.search(text):
                ndcg = match["ndcg"]
                work.log_epoch("tslrec", Epoch(int(match["epoch"]), float(match["seconds"]),
                                               float(ndcg) if ndcg else None))
    if process.returncode:
        raise SystemExit(f"tslrec train failed ({process.returncode})")
    line = run_line(ledger.read(ledger_file) if ledger_file.exists() else [], seed, work.started())
    if line is None:
        raise SystemExit(f"tslrec train wrote no ledger line to {ledger_file} since the run began")
    return Side("tslrec", work.epochs("tslrec"), line)


def run_line(lines: list[dict[str, Any]], seed: int, since: dt.datetime) -> dict[str, Any] | None:
    """The last line of tslrec's side of this run: its label, backbone and seed, finished since the run began."""
    return next((line for line in reversed(lines)
                 if line["label"] == "peer" and line["backbone"] == "sasrec" and line["seed"] == seed
                 and dt.datetime.fromisoformat(line["finished_at"]) >= since), None)


def run_recbole(python: Path, settings: dict[str, Any], work: Work) -> Side:
    """peer_recbole_run.py under RecBole's environment (resuming from its state in `work`): its epochs from its
    events, its ledger line and its start event (versions and sizes)."""
    settings_file = work.root / "recbole-settings.json"
    settings_file.write_text(json.dumps(settings))
    workdir = work.root / "recbole"
    workdir.mkdir(exist_ok=True)
    # RecBole saves its config beside the weights: torch >= 2.6's weights-only load refuses it
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    command = [str(python), str(HERE / "peer_recbole_run.py"), str(settings_file)]
    print("RecBole:", " ".join(command), file=sys.stderr)
    events = []
    with subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, text=True) as process:
        for text in process.stdout:
            events.append(json.loads(text))
            print("RecBole:", progress(events[-1]), file=sys.stderr)
    if process.returncode:
        raise SystemExit(f"RecBole failed ({process.returncode})")
    start, result = events[0], events[-1]
    epochs = recbole_epochs(events)
    line = {
        "dataset": DATASET, "run_id": DATASET, "stage": "peer", "backbone": "sasrec", "variant": "base",
        "label": RECBOLE_LABEL, "loss": "ce", "seed": settings["recbole"]["seed"], "settings_hash": None,
        "revision": ledger.code_revision(),
        "settings": {k: v for k, v in settings["recbole"].items() if k not in RECBOLE_SETUP},
        "valid": {name: result["valid"].get(name) for name in ledger.METRICS},
        "test": {name: result["test"].get(name) for name in ledger.METRICS},
        "epochs": result["epochs"], "best_epoch": result["best_epoch"], "stopped_by": result["stopped_by"],
        "seconds_per_epoch": sum(e.seconds for e in epochs) / len(epochs), "device": "cpu", "precision": "fp32",
        "processes": 1, "machine": " then ".join(work.machines()),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return Side("RecBole", epochs, line, start)


def progress(event: dict[str, Any]) -> str:
    if event["event"] == "start":
        return f"{event['users']} users, {event['items']} items, {event['train_rows']} training rows"
    if event["event"] == "train":
        return f"epoch {event['epoch']}: loss {event['loss']:.1f} (sum over batches), {event['seconds']:.1f}s"
    if event["event"] == "valid":
        return f"epoch {event['epoch']}: valid NDCG@10 {event['metrics']['ndcg@10']:.4f}, {event['seconds']:.1f}s"
    if event["event"] == "resumed":
        return f"resumed at epoch {event['epoch'] + 1}; the lines above are an earlier process's"
    return f"best epoch {event['best_epoch']} of {event['epochs']}: test NDCG@10 {event['test']['NDCG@10']:.4f}"


def recbole_epochs(events: list[dict[str, Any]]) -> list[Epoch]:
    """One Epoch per train event, its validation's seconds and NDCG@10 added."""
    valid = {e["epoch"]: e for e in events if e["event"] == "valid"}
    return [Epoch(e["epoch"], e["seconds"] + valid.get(e["epoch"], {}).get("seconds", 0.0),
                  valid[e["epoch"]]["metrics"]["ndcg@10"] if e["epoch"] in valid else None)
            for e in events if e["event"] == "train"]


def tslrec_versions() -> str:
    return (f"tslrec {importlib.metadata.version('tslrec')}, torch {torch.__version__}, numpy {np.__version__}, "
            f"pandas {pd.__version__}, python {platform.python_version()}")


def report(tslrec: Side, recbole: Side) -> str:
    """The Markdown table of both sides, then how they compare."""
    lines = ["| | precision | s/epoch (no validation) | epochs | best epoch | s to best epoch | best valid NDCG@10 "
             "| test HR@10 | test NDCG@10 | s to the other's best valid NDCG@10 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for side, other in ((tslrec, recbole), (recbole, tslrec)):
        line = side.line
        reached = side.first_reaching(other.best_valid)
        lines.append(
            f"| {side.name} | {line['precision']} | {side.seconds_per_training_epoch():.1f} | {line['epochs']} "
            f"| {line['best_epoch']} | {side.seconds_to(line['best_epoch']):.0f} | {side.best_valid:.4f} "
            f"| {line['test']['HR@10']:.4f} | {line['test']['NDCG@10']:.4f} "
            f"| {f'{side.seconds_to(reached):.0f} (epoch {reached})' if reached else 'not reached'} |")
    ratio = recbole.seconds_to(recbole.line["best_epoch"]) / tslrec.seconds_to(tslrec.line["best_epoch"])
    ours, theirs = tslrec.line["test"]["NDCG@10"], recbole.line["test"]["NDCG@10"]
    lines += ["", f"Seconds to the best epoch, RecBole / tslrec: {ratio:.2f}.",
              f"tslrec's test NDCG@10 {ours:.4f} {'reaches' if ours >= theirs else 'does not reach'} "
              f"RecBole's {theirs:.4f}."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
