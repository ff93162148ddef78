"""The SFT samples of one process: its shard of the users, read from Delta batch by batch.

A process keeps the users with user_idx % world == rank, so no process holds every user. A fixed share of the
users (by a hash of user_idx, sft.holdout_fraction) is held out of training to measure reconstruction on users the
model never saw.

user level (the paper): one sample per user, its training items and target = its row of user_preferences.
instance level (E4SRec-style, for the cost comparison): one sample per prefix of a user's training items, with the
prefix's own distribution over the groups as target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tslrec.context import RunContext
from tslrec.errors import TslrecError


@dataclass(frozen=True)
class Shard:
    users: np.ndarray  # (U,) user_idx
    offsets: np.ndarray  # (U+1,) each user's training items in `items`
    items: np.ndarray  # flat training items, oldest first
    targets: np.ndarray  # (U, K) float32: the user's preference distribution

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class Samples:
    """Sample s uses shard user `owner[s]`'s items before `end[s]` (an index into Shard.items) and target row s."""

    shard: Shard
    owner: np.ndarray
    end: np.ndarray
    targets: np.ndarray  # (S, K)

    def __len__(self) -> int:
        return len(self.owner)

    def lengths(self, max_items: int, picks: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Items in the prompt of each sample (or of those picked): its most recent max_items at most."""
        return np.minimum(self.end[picks] - self.shard.offsets[self.owner[picks]], max_items)


def held_out(users: np.ndarray, fraction: float) -> np.ndarray:
    """A stable pseudo-random choice of users (Knuth's multiplicative hash of user_idx)."""
    return ((users.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)) < np.uint64(fraction * 2**32)


def load_shard(ctx: RunContext, rank: int, world: int, holdout: bool) -> Shard:
    """This process's users: the training ones (holdout=False) or the held-out ones (holdout=True)."""
    fraction = ctx.config.sft.holdout_fraction
    where = {"run_id": ctx.run_id}

    def mine(batch: pa.RecordBatch) -> np.ndarray:
        users = batch.column("user_idx").to_numpy().astype(np.int64)
        return (users % world == rank) & (held_out(users, fraction) == holdout)

    sequences = ctx.lake.read_arrow("user_sequences", where=where, columns=["user_idx", "train_items"], keep=mine)
    preferences = ctx.lake.read_arrow("user_preferences", where=where, columns=["user_idx", "distribution"], keep=mine)
    if preferences.num_rows == 0 and sequences.num_rows:
        raise TslrecError(f"user_preferences has no rows for run '{ctx.run_id}': run the preferences stage first")
    sequences = sequences.sort_by("user_idx")
    preferences = preferences.sort_by("user_idx")
    if sequences.column("user_idx").to_pylist() != preferences.column("user_idx").to_pylist():
        # users without training items have no preference: they have nothing to learn from either
        keep = np.isin(sequences.column("user_idx").to_numpy(), preferences.column("user_idx").to_numpy())
        sequences = sequences.filter(pa.array(keep))
    train = sequences.column("train_items").combine_chunks()
    distribution = preferences.column("distribution").combine_chunks()
    k = len(distribution[0]) if len(distribution) else 0
    return Shard(
        users=sequences.column("user_idx").to_numpy().astype(np.int64),
        offsets=train.offsets.to_numpy().astype(np.int64) - train.offsets[0].as_py(),
        items=train.flatten().to_numpy().astype(np.int64),
        targets=distribution.flatten().to_numpy().astype(np.float32).reshape(-1, k),
    )


def user_samples(shard: Shard) -> Samples:
    return Samples(shard, np.arange(len(shard)), shard.offsets[1:], shard.targets)


def instance_samples(shard: Shard, groups: np.ndarray, k: int) -> Samples:
    """One sample per prefix (1..n items) of every user; the target is that prefix's distribution over groups."""
    lengths = np.diff(shard.offsets)
    owner = np.repeat(np.arange(len(shard)), lengths)
    position = np.arange(len(owner)) - np.repeat(shard.offsets[:-1], lengths)  # 0-based index within the user
    end = shard.offsets[owner] + position + 1
    # running counts per group along each user's items: cumulative one-hot, restarted at each user
    one_hot = np.zeros((len(shard.items), k), dtype=np.float32)
    one_hot[np.arange(len(shard.items)), groups[shard.items]] = 1.0
    running = np.cumsum(one_hot, axis=0)
    before = np.vstack([np.zeros((1, k), np.float32), running])[shard.offsets[owner]]
    counts = running - before
    return Samples(shard, owner, end, counts / (position + 1)[:, None])


def batch_items(samples: Samples, picks: np.ndarray, max_items: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(items (B, n) left-padded with `pad`, mask (B, n)) for the chosen samples, each its most recent max_items."""
    ends = samples.end[picks]
    starts = ends - samples.lengths(max_items, picks)
    width = int((ends - starts).max()) if len(picks) else 0
    positions = ends[:, None] - width + np.arange(width)[None, :]
    real = positions >= starts[:, None]
    return np.where(real, samples.shard.items[np.clip(positions, 0, None)], pad), real
