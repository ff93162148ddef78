"""RecBole's SASRec on one dataset of atomic files: the RecBole side of benchmarks/peer_sasrec.py.

    <recbole env>/bin/python benchmarks/peer_recbole_run.py settings.json

Runs under RecBole's own environment (it imports nothing of tslrec), in a scratch working directory (RecBole
writes its tensorboard logs there). settings.json holds `recbole` (RecBole's config dict), `dataset`, `threads`,
`exclude_history` and `state_dir`. It trains with RecBole's Trainer and prints one JSON object a line on stdout: `start` (the
versions and the split's sizes), `train` and `valid` after each training epoch and validation (with their
seconds), then `test` (the best validated epoch's test metrics). Three things are added to RecBole's own run, for
a like-for-like comparison with tslrec: the split is checked against the atomic file (valid = each user's
second-to-last item, test = the last, training rows = every earlier prefix); the last epoch is validated when
it is not a multiple of eval_step (as tslrec does); and with exclude_history the items a user already has
(before the target) are ranked last, the target excepted: RecBole's full ranking of sequential models ranks them
as any other item.

RecBole's run takes hours on a CPU, longer than a working session, so it resumes: settings.json's `state_dir`
keeps the best weights (best.pth) and, before each epoch, everything the rest of the run depends on (resume.pth:
weights, optimizer, the stopping counter, the best epoch, the random generators' states and the events so far).
Started again with the same state_dir, it prints the earlier events again, then a `resumed` event, and goes on
from the first epoch it had not finished.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import recbole
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.dataset import Dataset
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer
from recbole.utils import init_seed


@dataclass(frozen=True)
class Seen:
    """Each user's items before a split's target, by RecBole's internal user id (CSR)."""
    offsets: np.ndarray
    items: np.ndarray

    def cells(self, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, item) of every seen item of a batch's users."""
        counts = self.offsets[users + 1] - self.offsets[users]
        rows = np.repeat(np.arange(len(users)), counts)
        items = np.concatenate([self.items[self.offsets[u]:self.offsets[u + 1]] for u in users])
        return torch.as_tensor(rows), torch.as_tensor(items, dtype=torch.long)


class TimedTrainer(Trainer):
    """RecBole's Trainer that reports each epoch and validation on stdout, knows its best epoch, resumes from its
    state folder, and optionally ranks each user's seen items last."""

    def __init__(self, config: Config, model: SASRec, seen: Seen | None, state: Path) -> None:
        super().__init__(config, model)
        self.saved_model_file = str(state / "best.pth")
        self.resume_file = state / "resume.pth"
        self.seen = seen
        self.epoch = 0
        self.validated = 0
        self.best_epoch = 0
        self.events: list[dict[str, Any]] = []

    def record(self, event: str, **fields: Any) -> None:
        """An event on stdout, kept for the resume state."""
        self.events.append({"event": event, **fields})
        emit(event, **fields)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if epoch_idx > self.start_epoch:
            self.save_resume_state(train_data, epoch_idx)
        started = time.monotonic()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        self.epoch = epoch_idx + 1
        self.record("train", epoch=self.epoch, seconds=time.monotonic() - started, loss=float(loss))
        return loss

    def _valid_epoch(self, valid_data, show_progress=False):
        started = time.monotonic()
        score, result = super()._valid_epoch(valid_data, show_progress)
        self.validated = self.epoch
        self.record("valid", epoch=self.epoch, seconds=time.monotonic() - started, metrics=dict(result))
        return score, result

    def save_resume_state(self, train_data, next_epoch: int) -> None:
        """What the run after `next_epoch - 1` epochs depends on, replaced atomically."""
        state = {
            "next_epoch": next_epoch, "cur_step": self.cur_step, "best_valid_score": self.best_valid_score,
            "best_valid_result": self.best_valid_result, "best_epoch": self.best_epoch,
            "validated": self.validated, "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "events": self.events,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "batches": train_data.generator.get_state()},
        }
        partial = self.resume_file.with_suffix(".partial")
        torch.save(state, partial)
        os.replace(partial, self.resume_file)

    def resume(self, train_data) -> None:
        """Where an earlier process of this run left off, when there was one."""
        if not self.resume_file.exists():
            return
        state = torch.load(self.resume_file, map_location=self.device, weights_only=False)
        self.start_epoch = self.epoch = state["next_epoch"]
        self.cur_step, self.best_valid_score = state["cur_step"], state["best_valid_score"]
        self.best_valid_result, self.best_epoch = state["best_valid_result"], state["best_epoch"]
        self.validated = state["validated"]
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        train_data.generator.set_state(rng["batches"])
        for event in state["events"]:
            self.record(**event)
        emit("resumed", epoch=self.start_epoch)

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        super()._save_checkpoint(epoch, verbose, **kwargs)
        self.best_epoch = epoch + 1

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self.seen is not None:
            rows, items = self.seen.cells(interaction[self.config["USER_ID_FIELD"]].cpu().numpy())
            targets = scores[positive_u, positive_i]
            scores[rows.to(scores.device), items.to(scores.device)] = -np.inf
            scores[positive_u, positive_i] = targets
        return interaction, scores, positive_u, positive_i

    def validate_last_epoch(self, valid_data) -> None:
        """Validates the last trained epoch when fit did not (and keeps it when it is the best)."""
        if self.validated == self.epoch:
            return
        score, result = self._valid_epoch(valid_data)
        if score >= self.best_valid_score:  # RecBole's own rule: a tie is an improvement
            self.best_valid_score, self.best_valid_result = score, result
            self._save_checkpoint(self.epoch - 1, verbose=False)


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def user_items(config: Config, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Every user's items in timestamp order as (offsets by internal user id, internal item ids), from the
    atomic file itself."""
    uid, iid, time_field = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"], config["TIME_FIELD"]
    path = Path(config["data_path"]) / f"{config['dataset']}.inter"
    frame = pd.read_csv(path, sep="\t", dtype=str)
    frame.columns = [name.split(":")[0] for name in frame.columns]
    frame["order"] = frame[time_field].astype(float)
    frame["user"] = dataset.token2id(uid, frame[uid].to_numpy())
    frame["item"] = dataset.token2id(iid, frame[iid].to_numpy())
    frame = frame.sort_values(["user", "order"], kind="stable")
    counts = np.bincount(frame["user"].to_numpy(), minlength=dataset.user_num)
    return np.concatenate([[0], np.cumsum(counts)]), frame["item"].to_numpy()


def seen_before(offsets: np.ndarray, items: np.ndarray, held_out: int) -> Seen:
    """Each user's items without the last `held_out`."""
    lengths = np.maximum(np.diff(offsets) - held_out, 0)
    keep = np.concatenate([np.arange(start, start + n) for start, n in zip(offsets[:-1], lengths)])
    return Seen(np.concatenate([[0], np.cumsum(lengths)]), items[keep])


def check_split(config: Config, splits: list[Dataset], offsets: np.ndarray, items: np.ndarray) -> None:
    """Valid targets are each user's second-to-last item, test targets the last; training rows every prefix
    before them."""
    uid, iid = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    lengths = np.diff(offsets)
    users = np.flatnonzero(lengths > 0)
    train, valid, test = splits
    if len(train) != int(np.sum(np.maximum(lengths[users] - 3, 0))):
        raise SystemExit(f"RecBole made {len(train)} training rows, expected {np.sum(lengths[users] - 3)}")
    for name, split, back in (("valid", valid, 2), ("test", test, 1)):
        frame = pd.DataFrame({"user": split.inter_feat[uid].numpy(), "item": split.inter_feat[iid].numpy()})
        expected = items[offsets[users + 1] - back]
        got = frame.set_index("user")["item"].reindex(users).to_numpy()
        if len(frame) != len(users) or not np.array_equal(got, expected):
            raise SystemExit(f"RecBole's {name} split is not each user's item {back} from the end")


def metrics(result: dict[str, float], topk: list[int]) -> dict[str, float]:
    return {f"{name}@{k}": float(result[f"{key}@{k}"]) for name, key in (("HR", "hit"), ("NDCG", "ndcg"))
            for k in topk}


def main() -> None:
    settings = json.loads(Path(sys.argv[1]).read_text())
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value arguments of its own
    torch.set_num_threads(settings["threads"])
    config = Config(model="SASRec", dataset=settings["dataset"], config_dict=settings["recbole"])
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    offsets, items = user_items(config, dataset)
    check_split(config, [train_data._dataset, valid_data._dataset, test_data._dataset], offsets, items)
    emit("start", versions={"recbole": recbole.__version__, "torch": torch.__version__, "numpy": np.__version__,
                            "pandas": pd.__version__, "python": platform.python_version()},
         users=int(dataset.user_num - 1), items=int(dataset.item_num - 1), train_rows=len(train_data._dataset),
         threads=torch.get_num_threads())
    init_seed(config["seed"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    history = settings["exclude_history"]
    state = Path(settings["state_dir"])
    state.mkdir(parents=True, exist_ok=True)
    trainer = TimedTrainer(config, model, seen_before(offsets, items, 2) if history else None, state)
    trainer.resume(train_data)
    trainer.fit(train_data, valid_data, verbose=False, saved=True, show_progress=False)
    trainer.validate_last_epoch(valid_data)
    trainer.seen = seen_before(offsets, items, 1) if history else None
    started = time.monotonic()
    result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    topk = config["topk"]
    emit("test", seconds=time.monotonic() - started, best_epoch=trainer.best_epoch, epochs=trainer.epoch,
         stopped_by="max_epochs" if trainer.epoch >= config["epochs"] else "patience",
         valid=metrics(trainer.best_valid_result, topk), test=metrics(result, topk),
         parameters=sum(p.numel() for p in model.parameters()))


if __name__ == "__main__":
    main()
