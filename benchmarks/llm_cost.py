"""LLM cost of one SFT epoch: user-level (one sample per user, the paper) vs instance-level (one per prefix).

    .venv/bin/python benchmarks/llm_cost.py                      # Beauty and ML-1M, SmolLM2-135M, this machine
    .venv/bin/python benchmarks/llm_cost.py --datasets beauty --steps 10 llm.model=tiny

For each dataset the stages up to the user preferences run into a benchmark lake (stage 0 with one epoch: the
embeddings' quality does not change the cost). The number of LLM samples and prompt tokens of one epoch is counted
exactly for both levels. Both levels then train for --steps micro-steps through the real SFT path (DeepSpeed
ZeRO-3, one process) on the same model and batch size, in this run; one epoch's LLM time is the epoch's samples
divided by the measured samples/s (a full instance-level epoch on ML-1M would take days on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from data_stage import SHARED, machine
from tslrec.config import load_config
from tslrec.context import RunContext
from tslrec.llm import sft
from tslrec.llm.loading import load_tokenizer
from tslrec.llm.module import prompt_tokens
from tslrec.llm.shards import held_out
from tslrec.logs import setup_logging
from tslrec.pipeline import run_stages, select_stages

FILES = {"beauty": "Beauty.txt", "ml-1m": "ml-1m.txt"}


def epoch_size(ctx: RunContext, level: str) -> tuple[int, int]:
    """(LLM samples, prompt tokens) of one epoch of the training users."""
    config = ctx.config
    k = ctx.lake.read_arrow("item_pregroup_centres", where={"run_id": ctx.run_id}).num_rows
    tokens = prompt_tokens(load_tokenizer(config.llm), config.llm.prompt, k)
    fixed = len(tokens.instruction) + len(tokens.response)
    table = ctx.lake.read_arrow("user_sequences", where={"run_id": ctx.run_id}, columns=["user_idx", "train_items"])
    users = table.column("user_idx").to_numpy()
    lengths = np.array([len(x) for x in table.column("train_items").to_pylist()])[
        ~held_out(users, config.sft.holdout_fraction)]
    cap = config.llm.max_items
    if level == "user":
        return len(lengths), int((fixed + np.minimum(lengths, cap)).sum())
    prefix_tokens = sum(int(np.minimum(np.arange(1, n + 1), cap).sum()) for n in lengths)
    return int(lengths.sum()), int(fixed * lengths.sum() + prefix_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=list(FILES), choices=list(FILES))
    parser.add_argument("--steps", type=int, default=20, help="micro-steps measured per level")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tslrec-bench"))
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. llm.model=tiny sft.micro_batch_size=16")
    args = parser.parse_args()
    setup_logging("WARNING")
    rows, used = [], load_config(overrides=args.overrides)
    for dataset in args.datasets:
        if not (SHARED / FILES[dataset]).is_file():
            print(f"skipping {dataset}: {SHARED / FILES[dataset]} is absent")
            continue
        base = [f"dataset.path={SHARED / FILES[dataset]}", f"lake.root={args.work / 'llm-lake'}",
                f"llm.artifacts={args.work / 'llm-artifacts'}", "srs.max_epochs=1", "pregroup.k=32",
                f"sft.max_steps={args.steps}", f"sft.log_every={max(1, args.steps // 4)}", *args.overrides]
        ctx = RunContext(load_config(dataset, base))
        run_stages(ctx, select_stages(until="preferences"))
        for level in ("user", "instance"):
            level_ctx = RunContext(load_config(dataset, [*base, f"sft.level={level}"]))
            used = level_ctx.config
            samples, tokens = epoch_size(level_ctx, level)
            sft.run(level_ctx)
            model = level_ctx.lake.read_pandas("models", where={"run_id": level_ctx.run_id})
            measured = model[model["model_id"] == sft.model_id_of(level_ctx)].iloc[0]
            rows.append((dataset, level, samples, tokens, measured["samples_per_s"], samples / measured["samples_per_s"]))
            print(rows[-1], flush=True)
    print(f"\ncommand: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: {machine()}; model {used.llm.model} ({used.llm.dtype} dtype setting), micro-batch "
          f"{used.sft.micro_batch_size}, {args.steps} measured micro-steps per level, one process")
    print("\n| dataset | level | LLM samples / epoch | prompt tokens / epoch | measured samples/s | LLM hours / epoch |")
    print("|---|---|---|---|---|---|")
    for dataset, level, samples, tokens, rate, seconds in rows:
        print(f"| {dataset} | {level} | {samples:,} | {tokens:,} | {rate:.2f} | {seconds / 3600:.2f} |")
    for dataset in {r[0] for r in rows}:
        user, instance = [r for r in rows if r[0] == dataset and r[1] == "user"], [r for r in rows if r[0] == dataset and r[1] == "instance"]
        if user and instance:
            print(f"{dataset}: instance-level costs x{instance[0][2] / user[0][2]:.1f} the samples, "
                  f"x{instance[0][3] / user[0][3]:.1f} the tokens, x{instance[0][5] / user[0][5]:.1f} the LLM time")


if __name__ == "__main__":
    main()
