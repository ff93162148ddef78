"""Random draws that depend on where a training is, not on what ran before: a run resumed from a checkpoint draws
from that point on exactly what an uninterrupted one did."""

from __future__ import annotations

import numpy as np
import torch


def draws_at(*key: int) -> np.random.Generator:
    """Seeds torch's global generator from `key` (e.g. seed, rank, step) and returns a NumPy generator seeded from it."""
    sequence = np.random.SeedSequence(list(key))
    torch.manual_seed(int(sequence.generate_state(1)[0]))
    return np.random.default_rng(sequence)
