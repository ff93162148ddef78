"""The paper's Table 2 for one dataset: each backbone as Base, CI and TSLRec over several seeds.

    .venv/bin/python benchmarks/table2.py --dataset beauty                        # 4 backbones x 3 variants x 3 seeds
    .venv/bin/python benchmarks/table2.py --dataset ml-1m --backbones sasrec,fmlp
    .venv/bin/python benchmarks/table2.py --dataset beauty train.workers=12 srs.threads=1   # many models on one GPU

It is `tslrec run` with the sweep as its train settings: the pipeline runs once (a stage whose settings and inputs
are unchanged is skipped), then every backbone x variant x seed is trained, each committed to srs_metrics and
appended to the results ledger (`--ledger`, default benchmarks/results/<dataset>.jsonl) when done; a model already
there with the same settings is not trained again. So after an interruption the same command carries on where it
stopped, and adding seeds trains only the new ones. At the end the table is made from the ledger's lines of this
run and these settings (test split, full ranking, mean ± sample std over seeds; Welch's t-test of TSLRec against
Base and CI), printed and written as Markdown beside the run's HTML report, with the machine and the wall time of
each stage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

import results_page
from data_stage import machine
from tslrec import cli
from tslrec.config import load_config
from tslrec.context import RunContext
from tslrec.errors import TslrecError
from tslrec.srs import significance
from tslrec.srs.stages import model_identity

RESULTS = Path(__file__).resolve().parent / "results"

BACKBONES = {"gru4rec": "GRU4Rec", "caser": "Caser", "sasrec": "SASRec", "fmlp": "FMLP-Rec"}
VARIANTS = {"base": "Base", "ci": "CI", "tslrec": "TSLRec"}
COLUMNS = ["HR@5", "HR@10", "NDCG@5", "NDCG@10"]  # the paper's order
TESTED = ["HR@10", "NDCG@10"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--out", type=Path, help="the Markdown table; default: <run.reports>/<run>-table2.md")
    parser.add_argument("--ledger", type=Path, help=f"the results ledger; default: {RESULTS}/<dataset>.jsonl")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. srs.device=cuda train.workers=8")
    args = parser.parse_args()
    sweep = [f"train.backbones=[{args.backbones}]", f"train.variants=[{args.variants}]", f"train.seeds=[{args.seeds}]"]
    ledger_file = args.ledger or RESULTS / f"{args.dataset}.jsonl"
    overrides = [*args.overrides, *sweep, f"ledger.path={ledger_file.resolve()}"]
    status = cli.main(["run", "--dataset", args.dataset, *overrides])
    if status:
        return status
    ctx = RunContext(load_config(dataset=args.dataset, overrides=overrides))
    text = table2(ctx, ledger_file)
    out = args.out or cli.report_path(ctx).with_name(f"{ctx.run_id}-table2.md")
    out.write_text(text)
    print(f"\n{text}\ntable: {out}")
    return 0


def table2(ctx: RunContext, ledger_file: Path) -> str:
    """The configured sweep's ledger lines in the paper's layout, then how long each stage took."""
    settings = ctx.config.train
    training = sweep_lines(ctx, ledger_file)
    values = training[["backbone", "variant", "seed", *[f"test_{m}" for m in COLUMNS]]].rename(
        columns={f"test_{m}": m for m in COLUMNS})
    summary = significance.summarize(values).set_index(["backbone", "variant"])
    lines = [f"Run {ctx.run_id}, dataset {ctx.config.dataset.name}: test split, full ranking"
             f"{', history excluded' if ctx.config.srs.exclude_history else ''}; mean ± sample std over seeds; "
             f"p: Welch's t-test of TSLRec against the row's variant ({', '.join(TESTED)}).", "",
             f"Machine: {machine()}.", "",
             "| backbone | variant | " + " | ".join(COLUMNS) + " | seeds | " + " | ".join(f"p {m}" for m in TESTED)
             + " | epochs | s/epoch |",
             "|---|---|" + "---|" * (len(COLUMNS) + 3 + len(TESTED))]
    for backbone in [b for b in BACKBONES if b in settings.backbones]:
        for variant in [v for v in VARIANTS if v in settings.variants]:
            if (backbone, variant) not in summary.index:
                continue
            row = summary.loc[(backbone, variant)]
            cells = [f"{row[f'{m} mean']:.4f}" + (f" ± {row[f'{m} std']:.4f}" if row["seeds"] > 1 else "") for m in COLUMNS]
            runs = training[(training["backbone"] == backbone) & (training["variant"] == variant)]
            lines.append(f"| {BACKBONES[backbone]} | {VARIANTS[variant]} | {' | '.join(cells)} | {row['seeds']:.0f} | "
                         + " | ".join(_p_values(values, backbone, variant))
                         + f" | {runs['epochs'].mean():.0f} | {runs['seconds_per_epoch'].mean():.1f} |")
    lines += ["", "Wall time of each stage's last run (train: the last run alone; each model's time is in its row):",
              "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.0f} |" for stage, seconds in _stage_seconds(ctx).items()]
    return "\n".join(lines) + "\n"


def sweep_lines(ctx: RunContext, ledger_file: Path) -> pd.DataFrame:
    """The newest ledger line of each model of the configured sweep trained in this run with these settings."""
    settings = ctx.config.train
    lines = results_page.frame(ledger_file.parent, ledger_file.name)
    if lines.empty:
        raise SystemExit(f"{ledger_file}: no ledger lines; the sweep writes them, run it with --ledger {ledger_file}")
    identity = {(b, v): model_identity(ctx, b, v) for b in settings.backbones for v in settings.variants}
    current = [identity.get((b, v)) for b, v in zip(lines["backbone"], lines["variant"])]
    chosen = lines[(lines["run_id"] == ctx.run_id) & (lines["stage"] == "train")
                   & (lines["settings_hash"] == current) & lines["backbone"].isin(settings.backbones)
                   & lines["variant"].isin(settings.variants) & lines["seed"].isin(settings.seeds)]
    return chosen.sort_values("finished_at").drop_duplicates(["backbone", "variant", "seed"], keep="last")


def _p_values(values: pd.DataFrame, backbone: str, variant: str) -> list[str]:
    """TSLRec against this row's variant; n/a while either side has fewer than two seeds."""
    if variant == "tslrec":
        return [""] * len(TESTED)
    try:
        found = {c.metric: c.p for c in significance.compare(values, (backbone, "tslrec"), (backbone, variant))}
    except TslrecError:
        return ["n/a"] * len(TESTED)
    return [f"{found[m]:.3f}" for m in TESTED]


def _stage_seconds(ctx: RunContext) -> dict[str, float]:
    """A skipped stage keeps the time of the run that did its work."""
    runs = ctx.lake.read_pandas("stage_runs", where={"run_id": ctx.run_id}).sort_values("finished_at")
    return dict(zip(runs["stage"], runs["seconds"]))


if __name__ == "__main__":
    sys.exit(main())
