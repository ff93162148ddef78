"""Stage 2 speed: items/s of the `infer` stage, and the shared-instruction forward against the plain one.

    .venv/bin/python benchmarks/item_inference.py --dataset beauty srs.max_epochs=60     # a run whose sft is done

In one run, on the run's tuned model: (1) the same sample of items through the transformer over each item's whole
prompt (the baseline) and through the module's forward (the instruction's keys and values computed once per batch
and shared), in one process with the stage's batch size, and the largest difference between their outputs; (2) the
whole `infer` stage, Spark pandas UDF included, over every item of the dataset.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from data_stage import machine
from tslrec.config import load_config
from tslrec.context import RunContext
from tslrec.itemtables import item_vectors, registry_size
from tslrec.llm.artifact import load_artifact, read_card
from tslrec.llm.loading import resolve_dtype
from tslrec.llm.sft import artifacts_root, model_id_of
from tslrec.logs import setup_logging
from tslrec.pipeline import run_stages, select_stages


def timed(function, vectors: torch.Tensor, batch: int) -> tuple[float, np.ndarray]:
    """(items/s, embeddings) of `function` over `vectors` in batches."""
    outputs = []
    started = time.perf_counter()
    with torch.no_grad():
        for first in range(0, len(vectors), batch):
            outputs.append(function(vectors[first:first + batch])[0].float().numpy())
    return len(vectors) / (time.perf_counter() - started), np.concatenate(outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--sample", type=int, default=512, help="items timed in the direct comparison")
    parser.add_argument("--skip-stage", action="store_true", help="only the direct comparison")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    setup_logging("INFO")
    ctx = RunContext(load_config(args.dataset, args.overrides))
    settings = ctx.config.infer
    folder = artifacts_root(ctx) / "models" / (settings.model_id or model_id_of(ctx))
    card = read_card(folder)
    dtype = resolve_dtype(ctx.config.llm, torch.device("cpu"))
    module, _ = load_artifact(folder, ctx.config.llm, dtype)
    vectors = item_vectors(ctx, card.vectors_table, card.vectors_run, "vector", {"backbone": card.vectors_backbone},
                           registry_size(ctx, "item_index"))
    sample = torch.as_tensor(vectors[np.random.default_rng(0).permutation(len(vectors))[: args.sample]])

    embed = module.llm.get_input_embeddings()

    def whole(batch: torch.Tensor):  # type: ignore[no-untyped-def]
        b = len(batch)
        prompts = torch.cat([embed(module.instruction)[None].expand(b, -1, -1),
                             module.project(batch.to(dtype))[:, None], embed(module.response)[None].expand(b, -1, -1)], 1)
        return (module.transformer()(inputs_embeds=prompts).last_hidden_state[:, -1],)

    def shared(batch: torch.Tensor):  # type: ignore[no-untyped-def]
        return module(batch[:, None, :], torch.ones(len(batch), 1, dtype=torch.bool))

    rows = []
    plain_rate, plain_out = timed(whole, sample, settings.batch_size)
    shared_rate, shared_out = timed(shared, sample, settings.batch_size)
    difference = float(np.abs(plain_out - shared_out).max() / max(np.abs(plain_out).max(), 1e-12))
    rows.append(("whole prompt per item (baseline), 1 process", len(sample), plain_rate))
    rows.append(("shared instruction (the module's forward), 1 process", len(sample), shared_rate))
    if not args.skip_stage:
        started = time.monotonic()
        outcome = run_stages(ctx, select_stages(only="infer"))[0]
        embedded = outcome.written[0].rows
        rows.append((f"infer stage: Spark pandas UDF, {settings.workers} workers, all items", embedded,
                     embedded / (time.monotonic() - started)))
    print(f"\ncommand: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: {machine()}; model {card.base_model} ({dtype}), batch {settings.batch_size}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"largest difference between the two forwards, relative to the largest embedding value: {difference:.2e}")
    print("\n| path | items | items/s |\n|---|---|---|")
    for label, items, rate in rows:
        print(f"| {label} | {items:,} | {rate:.1f} |")
    print(f"shared instruction: x{shared_rate / plain_rate:.2f} the items/s of the whole prompt")


if __name__ == "__main__":
    main()
