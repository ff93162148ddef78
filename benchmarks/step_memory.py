"""Peak memory and time of SASRec training steps at a large item count: the full-softmax loss in chunks.

    .venv/bin/python benchmarks/step_memory.py                       # 100k items, batch 512 x 50 positions
    .venv/bin/python benchmarks/step_memory.py --items 20000 --direct    # torch's cross-entropy over all logits
    .venv/bin/python benchmarks/step_memory.py --items 3416 --batch 128 --length 200 --steps 60 --varied
                                                                     # ML-1M-like rows of random lengths

Every position of every row is a real item with a target (the worst case: 25,600 positions x 100k items of logits
per step, 10 GB in float32 before their gradient). With --varied the rows have random lengths, so nearly every
batch, trimmed to its longest row, has a shape of its own, as in real training: memory that grows with the number
of shapes seen (oneDNN's primitive cache; ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024 restores its default) shows as a
peak far above the first steps'. Prints the command, the machine and the process's peak
resident memory after the steps.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from data_stage import machine
from tslrec.config import load_config
from tslrec.srs import train
from tslrec.srs.backbones import build_backbone
from tslrec.srs.data import Sequences, sortish_batches, training_rows
from tslrec.srs.items import ItemRepresentation
from tslrec.srs.precision import PRECISION_NAMES, training_dtype
from tslrec.srs.team import Team


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--direct", action="store_true", help="torch's cross-entropy over all logits at once")
    parser.add_argument("--varied", action="store_true", help="rows of random lengths 1..length (else all full)")
    args = parser.parse_args()
    print("command:", " ".join(sys.argv))
    print("machine:", machine())
    config = load_config(overrides=[f"srs.max_length={args.length}"])
    rng = np.random.default_rng(0)
    users = args.batch * args.steps
    lengths = rng.integers(2, args.length + 2, users) if args.varied else np.full(users, args.length + 1)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    data = Sequences(users=np.arange(users), offsets=offsets,
                     items=rng.integers(0, args.items, offsets[-1]), valid=np.full(users, -1),
                     test=np.full(users, -1), n_items=args.items, n_users=users)
    torch.manual_seed(0)
    model = build_backbone("sasrec", ItemRepresentation(args.items, 64), users, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rows = training_rows(data, model.every_position)
    batches = sortish_batches(rows.lengths, args.batch, 1, rng)
    dtype = training_dtype(config.srs.precision, torch.device("cpu"))
    if args.direct:
        train.full_softmax = lambda states, table, targets, chunk_mb, dtype: F.cross_entropy(states @ table.T, targets)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.monotonic()
    losses = train.train_steps(model, optimizer, data, rows, batches, config.srs, Team(torch.device("cpu")),
                               args.steps, dtype)
    seconds = (time.monotonic() - started) / args.steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    loss = "direct cross-entropy" if args.direct else f"chunks of {config.srs.loss_chunk_mb:g} MB"
    print(f"{args.items:,} items, batch {args.batch} x {args.length} positions ({args.batch * args.length:,} targets), "
          f"{loss}, scores in {PRECISION_NAMES[dtype]}: peak resident memory {peak:,.0f} MB "
          f"({before:,.0f} MB before the steps), {seconds:.2f} s per step, last losses "
          f"{', '.join(f'{v:.3f}' for v in losses[-3:])}; ONEDNN_PRIMITIVE_CACHE_CAPACITY="
          f"{os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
