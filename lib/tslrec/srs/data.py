"""The sequences a recommender trains and is evaluated on, read from `user_sequences`, kept as flat arrays.

Item ids are the dense `item_idx` (0..n_items-1); `n_items` (one past the largest id of the dataset's registry) is
the padding id. Windows of the most recent `max_length` items are cut per batch from the flat arrays, so even
millions of training prefixes never sit in memory as padded rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tslrec.context import RunContext
from tslrec.errors import TslrecError
from tslrec.itemtables import registry_size


@dataclass(frozen=True)
class Sequences:
    users: np.ndarray  # (U,) user_idx
    offsets: np.ndarray  # (U+1,) where each user's training items start in `items`
    items: np.ndarray  # flat training items, oldest first
    valid: np.ndarray  # (U,) validation target, -1 when the user is not evaluated
    test: np.ndarray  # (U,) test target, -1 when the user is not evaluated
    n_items: int
    n_users: int

    @property
    def pad(self) -> int:
        return self.n_items

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def load_sequences(ctx: RunContext, rank: int = 0, world: int = 1) -> Sequences:
    """Every user of the run, or with world > 1 one rank's shard: the users with user_idx % world == rank."""
    table = ctx.lake.read_arrow(
        "user_sequences", where={"run_id": ctx.run_id}, columns=["user_idx", "train_items", "valid_item", "test_item"],
        keep=None if world == 1 else lambda batch: batch.column("user_idx").to_numpy() % world == rank,
    )
    if table.num_rows == 0 and world == 1:  # one shard of many may be empty: its team decides together
        raise TslrecError(f"user_sequences has no rows for run '{ctx.run_id}': run the sequences stage first")
    table = table.sort_by("user_idx")
    train = table.column("train_items").combine_chunks()
    return Sequences(
        users=table.column("user_idx").to_numpy().astype(np.int64),
        offsets=train.offsets.to_numpy().astype(np.int64) - train.offsets[0].as_py(),
        items=train.flatten().to_numpy().astype(np.int64),
        valid=_targets(table.column("valid_item")),
        test=_targets(table.column("test_item")),
        n_items=registry_size(ctx, "item_index"),
        n_users=registry_size(ctx, "user_index"),
    )


def _targets(column: pa.ChunkedArray) -> np.ndarray:
    return column.fill_null(-1).to_numpy().astype(np.int64)


def ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """concatenate(arange(s, s + c) for s, c in zip(starts, counts)), without a Python loop."""
    total = int(counts.sum())
    shift = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return shift + np.arange(total)


def windows(flat: np.ndarray, starts: np.ndarray, ends: np.ndarray, length: int, pad: int) -> np.ndarray:
    """Rows of flat[start:end][-length:], left-padded with `pad` to `length` columns."""
    positions = ends[:, None] - length + np.arange(length)[None, :]
    inside = positions >= starts[:, None]
    return np.where(inside, flat[np.clip(positions, 0, max(len(flat) - 1, 0))], pad)


def trim_padding(inputs: np.ndarray, *others: np.ndarray, pad: int) -> tuple[np.ndarray, ...]:
    """Drops the leading columns that are padding in every row (for backbones whose states ignore padding)."""
    real = (inputs != pad).any(axis=0)
    first = int(real.argmax()) if real.any() else inputs.shape[1] - 1
    return tuple(a[:, first:] for a in (inputs, *others))


def sortish_batches(lengths: np.ndarray, batch_size: int, window: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random batches whose rows have similar lengths, so little padding is computed.

    Rows are shuffled, every `window` batches' worth is sorted by length and cut into batches, and the batches
    are shuffled: each batch is a random sample of its window, drawn from one band of lengths.
    """
    order = rng.permutation(len(lengths))
    span = batch_size * window
    batches = []
    for first in range(0, len(order), span):
        chunk = order[first:first + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


@dataclass(frozen=True)
class TrainingRows:
    """One row per training example: a user's training items before `end` (exclusive) predict what follows.

    With every_position, one row per user and every position a target (targets = inputs shifted by one; causal
    backbones only); else one row per prefix, which predicts only what follows its last position.
    """

    users: np.ndarray  # row -> position in Sequences.users
    ends: np.ndarray  # row -> end of the input in Sequences.items
    lengths: np.ndarray  # row -> number of input items


def training_rows(data: Sequences, every_position: bool) -> TrainingRows:
    lengths = data.lengths()
    if every_position:
        keep = np.flatnonzero(lengths >= 2)
        return TrainingRows(users=keep, ends=data.offsets[keep + 1] - 1, lengths=lengths[keep] - 1)
    prefixes = np.maximum(lengths - 1, 0)
    users = np.repeat(np.arange(len(lengths)), prefixes)
    ends = ranges(data.offsets[:-1] + 1, prefixes)
    return TrainingRows(users=users, ends=ends, lengths=ends - data.offsets[users])


def training_batch(
    data: Sequences, rows: TrainingRows, pick: np.ndarray, length: int, every_position: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, user_idx): targets has the inputs' shape with every_position, else one per row."""
    users, ends = rows.users[pick], rows.ends[pick]
    starts = data.offsets[users]
    inputs = windows(data.items, starts, ends, length, data.pad)
    if every_position:
        targets = windows(data.items, starts + 1, ends + 1, length, data.pad)
    else:
        targets = data.items[ends]
    return inputs, targets, data.users[users]


@dataclass(frozen=True)
class EvaluationSet:
    """Who is evaluated on a split, what they have seen, and what they should rank first."""

    inputs: np.ndarray  # (E, length) the most recent history, left-padded
    targets: np.ndarray  # (E,)
    users: np.ndarray  # (E,) user_idx
    history_offsets: np.ndarray  # (E+1,) CSR of every history item: for activity groups and for masking
    history_items: np.ndarray

    def history_lengths(self) -> np.ndarray:
        return np.diff(self.history_offsets)


def evaluation_set(data: Sequences, split: str, length: int) -> EvaluationSet:
    """valid: the history is the training items; test: the training items followed by the validation item."""
    if split == "valid":
        flat, offsets, targets = data.items, data.offsets, data.valid
    else:
        flat = np.insert(data.items, data.offsets[1:], data.valid)
        offsets = data.offsets + np.arange(len(data.offsets))
        targets = data.test
    chosen = np.flatnonzero(targets >= 0)
    starts, ends = offsets[chosen], offsets[chosen + 1]
    return EvaluationSet(
        inputs=windows(flat, starts, ends, length, data.pad),
        targets=targets[chosen],
        users=data.users[chosen],
        history_offsets=np.concatenate([[0], np.cumsum(ends - starts)]),
        history_items=flat[ranges(starts, ends - starts)],
    )
