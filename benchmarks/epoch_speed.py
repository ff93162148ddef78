"""Seconds per training epoch of each backbone, for two revisions of the code in one run on one machine.

    .venv/bin/python benchmarks/epoch_speed.py --before 0615f67            # Beauty, all four backbones
    .venv/bin/python benchmarks/epoch_speed.py --before 0615f67 --backbones sasrec,fmlp --epochs 2
    .venv/bin/python benchmarks/epoch_speed.py --before 8ad3cd8 --backbones gru4rec --variant tslrec \
        --lake ~/tslrec-work/lake-beauty run.id=beauty-bce srs.loss=bce     # config overrides last

Each revision is checked out into a temporary git worktree and runs `tslrec train` from there (its own code and
conf/) on a copy of the same input tables (a run of ingest + sequences for the dataset, `--lake`), one backbone after the
other, alone on the machine, as `--variant` (ci and tslrec also copy the pre-groups or the LLM's item
embeddings), for `--epochs` epochs with a validation at the last one; the time per epoch is read
from the revision's own epoch log lines. Prints the command, the machine, the revisions and the table.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from data_stage import machine
from revisions import ROOT, checked_out, environment, fresh_lake

INPUT_TABLES = ("user_sequences", "item_index", "user_index")
VARIANT_TABLES = {"base": (), "ci": ("item_pregroups",), "tslrec": ("llm_item_embeddings",)}
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+: .*?(\d+\.\d)s[;,]")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the revision to compare with (e.g. the last release)")
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--lake", type=Path, default=Path.home() / "tslrec-work" / "lake",
                        help="a lake holding the dataset's user_sequences (tslrec ingest + sequences)")
    parser.add_argument("--backbones", default="sasrec,gru4rec,caser,fmlp")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--variant", default="base", choices=list(VARIANT_TABLES))
    parser.add_argument("overrides", nargs="*", help="config overrides for both revisions, e.g. srs.loss=bce")
    args = parser.parse_args()
    print("command:", " ".join(sys.argv))
    print("machine:", machine())
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="tslrec-speed-") as scratch:
        for revision in (args.before, args.after):
            with checked_out(revision, Path(scratch)) as tree:
                for backbone in args.backbones.split(","):
                    lake = fresh_lake(args.lake, Path(scratch) / "lake", INPUT_TABLES + VARIANT_TABLES[args.variant])
                    results.setdefault(backbone, {})[revision] = _epoch_seconds(tree, lake, backbone, args)
                    print(f"  {backbone}: {results[backbone][revision]:.1f} s per epoch", flush=True)
    print(f"\n| backbone | {args.before} s/epoch | {args.after} s/epoch | speed-up |\n|---|---|---|---|")
    for backbone, seconds in results.items():
        before, after = seconds[args.before], seconds[args.after]
        print(f"| {backbone} | {before:.1f} | {after:.1f} | {before / after:.1f}x |")
    return 0


def _epoch_seconds(tree: Path, lake: Path, backbone: str, args: argparse.Namespace) -> float:
    """The mean of the logged epoch times (each epoch's training, and the validation where there was one)."""
    command = [sys.executable, "-m", "tslrec.cli", "train", "--dataset", args.dataset, f"lake.root={lake}",
               f"train.backbones=[{backbone}]", f"train.variants=[{args.variant}]", "train.seeds=[1]",
               f"srs.max_epochs={args.epochs}", "srs.checkpoints=null", f"srs.threads={args.threads}",
               f"run.reports={lake.parent / 'reports'}", *args.overrides]
    done = subprocess.run(command, cwd=ROOT, env=environment(tree), capture_output=True, text=True)
    times = [float(m.group(2)) for m in EPOCH_LINE.finditer(done.stderr + done.stdout)]
    if done.returncode or len(times) != args.epochs:
        raise SystemExit(f"{backbone} at {tree}: exit {done.returncode}, {len(times)} epoch lines\n{done.stderr[-3000:]}")
    return sum(times) / len(times)


if __name__ == "__main__":
    sys.exit(main())
