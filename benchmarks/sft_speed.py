"""Samples per second of the SFT (stage 1), for two revisions of the code in one run on one machine.

    .venv/bin/python benchmarks/sft_speed.py --before d3f8857                # Beauty's run in ~/tslrec-work/lake
    .venv/bin/python benchmarks/sft_speed.py --before d3f8857 --rounds 2 sft.micro_batch_size=32

Each revision runs `tslrec sft` from its worktree (benchmarks/revisions.py) on a copy of the tables the SFT reads
(a run of the pipeline up to the preferences: `--lake`, `--run`), for `--steps` micro-steps, without checkpoints;
the revisions take turns for `--rounds` rounds. The rate counts from the 10th micro-step on (model loading and the
first steps are left out) and is read from each revision's own progress lines. Prints the command, the machine,
the revisions and the table.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from data_stage import machine
from revisions import ROOT, checked_out, environment, fresh_lake
from tslrec.config import load_config
from tslrec.pipeline import select_stages

PROGRESS = re.compile(r"micro-step (\d+)/\d+: .*?, (\d+)s, ETA")
FROM_STEP = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the revision to compare with")
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--run", default="beauty", help="the run whose tables the SFT reads")
    parser.add_argument("--lake", type=Path, default=Path.home() / "tslrec-work" / "lake")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="config overrides for both revisions, e.g. llm.model=tiny")
    args = parser.parse_args()
    print("command:", " ".join(sys.argv))
    print("machine:", machine())
    config = load_config(args.dataset, overrides=args.overrides)
    per_step = config.sft.micro_batch_size * config.sft.processes
    rates: dict[str, list[float]] = {args.before: [], args.after: []}
    with tempfile.TemporaryDirectory(prefix="tslrec-sft-speed-") as scratch:
        with checked_out(args.before, Path(scratch)) as before, checked_out(args.after, Path(scratch)) as after:
            for round_ in range(args.rounds):
                for revision, tree in ((args.before, before), (args.after, after)):
                    rates[revision].append(_samples_per_second(tree, Path(scratch), per_step, args))
                    print(f"  round {round_ + 1}, {revision}: {rates[revision][-1]:.2f} samples/s", flush=True)
    first, second = (sum(r) / len(r) for r in rates.values())
    print(f"\n| {args.before} samples/s | {args.after} samples/s | speed-up |\n|---|---|---|")
    print(f"| {first:.2f} ({', '.join(f'{r:.2f}' for r in rates[args.before])}) "
          f"| {second:.2f} ({', '.join(f'{r:.2f}' for r in rates[args.after])}) | {second / first:.2f}x |")
    return 0


def _samples_per_second(tree: Path, scratch: Path, per_step: int, args: argparse.Namespace) -> float:
    lake = fresh_lake(args.lake, scratch / "lake", select_stages(only="sft")[0].reads)
    command = [sys.executable, "-m", "tslrec.cli", "sft", "--dataset", args.dataset, f"run.id={args.run}",
               f"lake.root={lake}", f"llm.artifacts={scratch / 'artifacts'}", f"sft.max_steps={args.steps}",
               "sft.log_every=10", f"sft.checkpoint_every={args.steps + 1}", "sft.resume=false", *args.overrides]
    done = subprocess.run(command, cwd=ROOT, env=environment(tree), capture_output=True, text=True)
    progress = {int(m.group(1)): int(m.group(2)) for m in PROGRESS.finditer(done.stderr + done.stdout)}
    if done.returncode or FROM_STEP not in progress or args.steps not in progress:
        raise SystemExit(f"sft at {tree}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return (args.steps - FROM_STEP) * per_step / (progress[args.steps] - progress[FROM_STEP])


if __name__ == "__main__":
    sys.exit(main())
