"""Data-parallel recommender training: one process against N ranks started by TorchDistributor (gloo on CPU).

    .venv/bin/python benchmarks/distributed_training.py beauty             # SASRec Base to convergence, 1 vs 2
    .venv/bin/python benchmarks/distributed_training.py 10M --steps 20     # throughput and memory per process

beauty: ../shared/data/Beauty.txt through ingest and sequences into the benchmark's own lake, then the train stage
(sasrec/base/seed 1, early stopping as configured) with one process using every core (the baseline), then with N
ranks of one core each: seconds per epoch, epochs, test metrics.
10M: the data benchmark's synthetic log (10M interactions, 100k items; written once under --work), ingest and
sequences, then `--steps` training steps of SASRec (full-softmax cross-entropy, the configured batch in all) with
1 and with N ranks, each started the same way: training rows per second (the 1-rank run is the baseline) and each
process's peak resident memory and shard. Full-ranking evaluation is left out: it is the same work however split.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from data_stage import SIZES, machine, start, synthetic_log
from tslrec.config import Config, load_config
from tslrec.context import RunContext
from tslrec.pipeline import run_stages, select_stages
from tslrec.srs import distributed
from tslrec.srs.data import load_sequences, training_rows
from tslrec.srs.train import build_model, epoch_batches, rank_batch_size, set_up_cpu, train_steps

WARM_UP_STEPS = 3


def beauty(work: Path, processes: int, overrides: list[str]) -> None:
    lake = work / "distributed-beauty-lake"
    shutil.rmtree(lake, ignore_errors=True)
    base = [*overrides, f"lake.root={lake}", f"srs.checkpoints={work / 'checkpoints'}", "train.backbones=[sasrec]",
            "train.variants=[base]", "train.seeds=[1]", "train.skip_finished=false", "srs.device=cpu"]
    run_stages(RunContext(load_config("beauty", base)), select_stages(until="sequences"))
    rows = []
    cores = os.cpu_count() or 1
    for label, extra in ((f"1 process, {cores} threads", ["srs.distributed.backend=none"]),
                         (f"{processes} ranks, {max(1, cores // processes)} thread(s) each",
                          ["srs.distributed.backend=torch", f"srs.distributed.processes={processes}"])):
        ctx = RunContext(load_config("beauty", [*base, *extra]))
        started = time.monotonic()
        run_stages(ctx, select_stages(only="train"))
        wall = time.monotonic() - started
        training = ctx.lake.read_pandas("srs_training", where={"run_id": ctx.run_id}).iloc[0]
        metrics = ctx.lake.read_pandas("srs_metrics", where={"run_id": ctx.run_id})
        test = metrics[(metrics["split"] == "test") & (metrics["user_group"] == "all")].set_index("metric")["value"]
        rows.append((label, training, test, wall))
        print(label, dict(training), dict(test), flush=True)
    print("\n| configuration | s/epoch | epochs (best) | stopped by | wall s | test HR@10 | test NDCG@10 |")
    print("|---|---|---|---|---|---|---|")
    for label, training, test, wall in rows:
        print(f"| {label} | {training['seconds_per_epoch']:.1f} | {training['epochs']} ({training['best_epoch']}) "
              f"| {training['stopped_by']} | {wall:.0f} | {test['HR@10']:.4f} | {test['NDCG@10']:.4f} |")
    print(f"epoch time, {rows[1][0]} / {rows[0][0]}: x{rows[1][1]['seconds_per_epoch'] / rows[0][1]['seconds_per_epoch']:.2f}")


def measure_rank(config: Config, steps: int) -> list[dict[str, Any]]:
    """On every rank: its shard, the model, warm-up, then `steps` timed training steps."""
    team = distributed.join(config)
    set_up_cpu(config, team.local_size)
    ctx = RunContext(config)
    started = time.monotonic()
    data = load_sequences(ctx, team.rank, team.world)
    load_s = time.monotonic() - started
    model, optimizer = build_model(ctx, data, "sasrec", "base", 1, team)
    rows = training_rows(data, model.every_position)
    batch = rank_batch_size(config.srs.backbones.sasrec.batch_size, team)
    batches = epoch_batches(model, rows, config.srs, batch, np.random.default_rng(team.rank))
    train_steps(model, optimizer, data, rows, batches, config.srs, team, WARM_UP_STEPS)
    started = time.monotonic()
    train_steps(model, optimizer, data, rows, batches, config.srs, team, steps)
    seconds = time.monotonic() - started
    shard_mb = sum(a.nbytes for a in (data.users, data.offsets, data.items, data.valid, data.test)) / 2**20
    mine = {"rank": team.rank, "users": len(data.users), "interactions": len(data.items), "shard_mb": shard_mb,
            "load_s": load_s, "rows_per_s": steps * batch / seconds, "step_s": seconds / steps,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    result = team.share(team.gather(mine))
    team.leave()
    return result


def synthetic(work: Path, label: str, processes: int, steps: int, overrides: list[str]) -> None:
    path, _ = synthetic_log(work, label, SIZES[label], overrides)
    lake = work / "distributed-lake"
    base = [*overrides, f"lake.root={lake}", "dataset.format=parquet", f"dataset.path={path}", "dataset.name=synth",
            "srs.device=cpu", "srs.distributed.backend=torch"]
    ctx = RunContext(load_config(overrides=base))
    if not ctx.lake.exists("user_sequences"):
        run_stages(ctx, select_stages(until="sequences"))
    results = []
    for ranks in (1, processes):
        ctx = RunContext(load_config(overrides=[*base, f"srs.distributed.processes={ranks}"]))
        started = time.monotonic()
        per_rank = distributed.launch(ctx, measure_rank, ctx.config, steps)
        results.append((ranks, per_rank, time.monotonic() - started))
        print(ranks, per_rank, flush=True)
    stats = ctx.lake.read_arrow("dataset_stats").to_pylist()[0]
    print(f"\nsynthetic {label}: {stats['interactions']:,} interactions, {stats['users']:,} users, "
          f"{stats['items']:,} items; SASRec, batch {ctx.config.srs.backbones.sasrec.batch_size} in all, "
          f"{steps} timed steps after {WARM_UP_STEPS} warm-up")
    print("\n| ranks | rank | users | interactions | shard MB | load s | s/step | rows/s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ranks, per_rank, _ in results:
        for r in per_rank:
            print(f"| {ranks} | {r['rank']} | {r['users']:,} | {r['interactions']:,} | {r['shard_mb']:.0f} "
                  f"| {r['load_s']:.1f} | {r['step_s']:.2f} | {r['rows_per_s']:.0f} | {r['peak_rss_mb']:,.0f} |")
    alone = results[0][1][0]["step_s"]
    together = max(r["step_s"] for r in results[-1][1])
    print(f"step time, {processes} ranks / 1: x{together / alone:.2f} (the same rows per step in all)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=["beauty", *SIZES])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args, overrides, spark = start(parser, log_level="INFO")
    if args.case == "beauty":
        beauty(args.work, args.processes, overrides)
    else:
        synthetic(args.work, args.case, args.processes, args.steps, overrides)
    print(f"\ncommand: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: {machine()}; Spark {spark.version} on {spark.sparkContext.master}")


if __name__ == "__main__":
    main()
