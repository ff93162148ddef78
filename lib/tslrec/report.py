"""`tslrec report`: one self-contained HTML page per run, read from the lake's tables by name.

Sections: the data, the recommenders in the layout of the paper's Table 2 (backbones x Base/CI/TSLRec, HR and
NDCG at 5 and 10 on the test split, mean over seeds, best of each backbone in bold), results per user-activity
group and per target-popularity group, the pre-groups, the agreement of the inferred categories (C1/C2/C3), the
LLM's cost and reconstruction error, the stage times, and the config. Charts are inline SVG: the page needs no
other file and no network.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
import yaml

from tslrec.context import RunContext
from tslrec.grouping.recovery import planted_recovery
from tslrec.srs.evaluate import is_activity_group

METRICS = ("HR@5", "HR@10", "NDCG@5", "NDCG@10")
VARIANTS = ("base", "ci", "tslrec", "ensemble")
VARIANT_NAMES = {"base": "Base", "ci": "CI", "tslrec": "TSLRec", "ensemble": "Base x2"}
COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def write_report(ctx: RunContext, out: Path) -> Path:
    test = _test_metrics(ctx)
    sections = [
        ("Data", _data(ctx)),
        ("Recommenders (test split, full ranking)", _table2(test)),
        ("NDCG@10 by user activity (test split)", _segments(test, activity=True)),
        ("NDCG@10 by the target item's training popularity (test split)", _segments(test, activity=False)),
        ("Pre-groups", _pregroups(ctx)),
        ("Inferred categories against the pre-groups", _agreement(ctx)),
        ("Planted categories recovered (synthetic data)", _recovery(ctx)),
        ("LLM cost and reconstruction", _llm(ctx)),
        ("Stages", _stages(ctx)),
        ("Config", f"<p>hash {ctx.config_hash}</p><pre>{html.escape(yaml.safe_dump(ctx.config.to_dict(), sort_keys=False))}</pre>"),
    ]
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>tslrec run {html.escape(ctx.run_id)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>tslrec run {html.escape(ctx.run_id)}</h1>"
            f"<p>dataset {html.escape(ctx.config.dataset.name)}, lake {html.escape(ctx.lake.root)}, written "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}</p>{body}</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(out.name + ".partial")
    staging.write_text(page)
    staging.replace(out)
    return out


_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;"
          "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
          "pre{background:#f7f7f7;padding:1em;font-size:12px}.missing{color:#a00}")


def _read(ctx: RunContext, table: str) -> pd.DataFrame | None:
    if not ctx.lake.exists(table):
        return None
    frame = ctx.lake.read_pandas(table, where={"run_id": ctx.run_id})
    return frame if len(frame) else None


def _missing(stage: str) -> str:
    return f"<p class='missing'>not in the lake for this run yet: run the {stage} stage</p>"


def _data(ctx: RunContext) -> str:
    stats = _read(ctx, "dataset_stats")
    if stats is None:
        return _missing("sequences")
    row = stats.iloc[-1]
    return _html_table(["users", "items", "interactions", "density", "average length"],
                       [[f"{row['users']:,}", f"{row['items']:,}", f"{row['interactions']:,}", f"{row['density']:.5f}",
                         f"{row['avg_length']:.2f}"]])


def _test_metrics(ctx: RunContext) -> pd.DataFrame | None:
    metrics = _read(ctx, "srs_metrics")
    if metrics is None:
        return None
    test = metrics[(metrics["split"] == "test") & (metrics["stage"] == "train")]
    return test if len(test) else None


def _table2(test: pd.DataFrame | None) -> str:
    if test is None:
        return _missing("train")
    overall = test[test["user_group"] == "all"]
    summary = overall.groupby(["backbone", "variant", "metric"])["value"].agg(["mean", "std", "count"])
    backbones = sorted(overall["backbone"].unique())
    variants = [v for v in VARIANTS if v in set(overall["variant"])]
    header = ["metric", *(f"{b} {VARIANT_NAMES[v]}" for b in backbones for v in variants)]
    rows = []
    for metric in METRICS:
        cells = [metric]
        for backbone in backbones:
            values = {v: summary.loc[(backbone, v, metric)] for v in variants if (backbone, v, metric) in summary.index}
            best = max(values, key=lambda v: values[v]["mean"]) if values else None
            for variant in variants:
                if variant not in values:
                    cells.append("-")
                    continue
                text = f"{values[variant]['mean']:.4f}"
                cells.append(f"<b>{text}</b>" if variant == best and len(values) > 1 else text)
        rows.append(cells)
    seeds = overall.groupby(["backbone", "variant"])["seed"].nunique()
    note = ", ".join(f"{b}/{VARIANT_NAMES[v]} {n}" for (b, v), n in seeds.items())
    exclude = "excluded" if overall["exclude_history"].all() else "not excluded"
    return (_html_table(header, rows, raw=True) + f"<p>mean over seeds (seeds: {html.escape(note)}); items of the "
            f"user's history {exclude} from the ranking; best of each backbone in bold.</p>")


def _segments(test: pd.DataFrame | None, activity: bool) -> str:
    """Groups by user activity, or by the target item's popularity (equal-size groups, tail and cold items)."""
    if test is None:
        return _missing("train")
    chosen = test["user_group"].map(lambda group: group != "all" and is_activity_group(group) == activity)
    groups = test[chosen & (test["metric"] == "NDCG@10")]
    charts = []
    for backbone, rows in groups.groupby("backbone"):
        means = rows.groupby(["user_group", "variant"])["value"].mean().unstack("variant")
        series = {VARIANT_NAMES.get(v, v): means[v].tolist() for v in VARIANTS if v in means}
        charts.append(f"<h3>{html.escape(str(backbone))}</h3>" + bar_chart(list(means.index), series, "NDCG@10"))
    return "".join(charts) or "<p>no such groups recorded</p>"


def _pregroups(ctx: RunContext) -> str:
    centres = _read(ctx, "item_pregroup_centres")
    if centres is None:
        return _missing("pregroup")
    centres = centres.sort_values("group")
    return (f"<p>K = {len(centres)} groups of {int(centres['size'].sum()):,} items</p>"
            + bar_chart([str(g) for g in centres["group"]], {"items": centres["size"].tolist()}, "items per group"))


def _agreement(ctx: RunContext) -> str:
    categories = _read(ctx, "item_categories")
    if categories is None:
        return _missing("infer")
    counts = categories["agreement"].fillna("no pre-group").value_counts().sort_index()
    shares = (counts / counts.sum()).tolist()
    return (bar_chart(list(counts.index), {"share of items": shares}, "share of items")
            + _html_table(["case", "items", "share"], [[c, f"{n:,}", f"{n / counts.sum():.1%}"] for c, n in counts.items()])
            + "<p>C1: top-1 inferred category = pre-group; C2: pre-group in the top 3 only; C3: neither.</p>")


def _recovery(ctx: RunContext) -> str:
    recovered = planted_recovery(ctx)
    if recovered is None:
        return "<p>Only runs on the synthetic generator's data have planted categories to compare with.</p>"
    return (_html_table(["grouping", "items", "NMI with the planted categories"],
                        [[f"{r.grouping}: {r.segment}", f"{r.items:,}", f"{r.nmi:.3f}"] for r in recovered.itertuples()])
            + "<p>Normalised mutual information: 1 when a grouping is the planted categories under other names, "
              "0 when it tells nothing of them. The LLM's item view adds to the recommenders only what the "
              "k-means pre-groups of the vectors it reads do not already hold.</p>")


def _llm(ctx: RunContext) -> str:
    models = _read(ctx, "models")
    if models is None:
        return _missing("sft")
    rows, charts = [], []
    for _, m in models.iterrows():
        rows.append([m["model_id"], m["base_model"], m["level"], f"{m['k']}", f"{m['micro_steps']:.0f}",
                     f"{m['seconds']:.0f}", f"{m['samples_per_s']:.2f}", f"{m['final_loss']:.4f}",
                     f"{m.get('holdout_mse', float('nan')):.4f}", f"{m.get('baseline_average_mse', float('nan')):.4f}",
                     f"{m.get('baseline_pregroup_mse', float('nan')):.4f}"])
        curve = json.loads(m["loss_curve"])
        if curve:
            charts.append(f"<h3>loss of {html.escape(m['model_id'])}</h3>"
                          + line_chart([p[0] for p in curve], [p[1] for p in curve], "micro-step", "loss"))
    header = ["model", "LLM", "level", "K", "micro-steps", "seconds", "samples/s", "final loss", "held-out MSE",
              "average-distribution MSE", "pre-grouping MSE"]
    return _html_table(header, rows) + "".join(charts)


def _stages(ctx: RunContext) -> str:
    runs = _read(ctx, "stage_runs")
    if runs is None:
        return _missing("any")
    return _html_table(["stage", "finished", "seconds", "tables written (version)"],
                       [[r["stage"], r["finished_at"], f"{r['seconds']:.1f}",
                         ", ".join(f"{t} v{v}" for t, v in json.loads(r["written"]).items())]
                        for _, r in runs.sort_values("finished_at").iterrows()])


def _html_table(header: Sequence[str], rows: Iterable[Sequence[str]], raw: bool = False) -> str:
    def cell(value: str) -> str:
        return str(value) if raw else html.escape(str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def bar_chart(labels: Sequence[str], series: dict[str, Sequence[float]], y_label: str,
              width: int = 720, height: int = 260) -> str:
    """Grouped bars as inline SVG: one group per label, one bar per series."""
    top = max([max(v) for v in series.values() if len(v)] + [1e-12])
    left, bottom, plot_h = 60, 40, height - 70
    slot = (width - left - 10) / max(len(labels), 1)
    bar = slot * 0.8 / max(len(series), 1)
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-size='11'>",
             f"<text x='5' y='15'>{html.escape(y_label)} (max {top:.4g})</text>"]
    for s, (name, values) in enumerate(series.items()):
        colour = COLOURS[s % len(COLOURS)]
        parts.append(f"<rect x='{width - 150}' y='{8 + 14 * s}' width='10' height='10' fill='{colour}'/>"
                     f"<text x='{width - 135}' y='{17 + 14 * s}'>{html.escape(name)}</text>")
        for i, value in enumerate(values):
            h = plot_h * (value / top if value == value else 0)
            x = left + i * slot + slot * 0.1 + s * bar
            parts.append(f"<rect x='{x:.1f}' y='{height - bottom - h:.1f}' width='{bar:.1f}' height='{h:.1f}' "
                         f"fill='{colour}'><title>{html.escape(name)} {html.escape(labels[i])}: {value:.4g}</title></rect>")
    for i, label in enumerate(labels):
        parts.append(f"<text x='{left + i * slot + slot / 2:.1f}' y='{height - bottom + 14}' text-anchor='middle'>"
                     f"{html.escape(label)}</text>")
    parts.append(f"<line x1='{left}' y1='{height - bottom}' x2='{width - 10}' y2='{height - bottom}' stroke='#444'/></svg>")
    return "".join(parts)


def line_chart(xs: Sequence[float], ys: Sequence[float], x_label: str, y_label: str,
               width: int = 720, height: int = 240) -> str:
    left, bottom, plot_w, plot_h = 60, 30, width - 80, height - 60
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    points = " ".join(f"{left + plot_w * (x - x0) / (x1 - x0):.1f},{height - bottom - plot_h * (y - y0) / (y1 - y0):.1f}"
                      for x, y in zip(xs, ys))
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-size='11'>"
            f"<text x='5' y='15'>{html.escape(y_label)} from {y0:.4g} to {y1:.4g} over {html.escape(x_label)} "
            f"{x0:g} to {x1:g}</text><polyline points='{points}' fill='none' stroke='{COLOURS[0]}' stroke-width='2'/>"
            f"<line x1='{left}' y1='{height - bottom}' x2='{width - 10}' y2='{height - bottom}' stroke='#444'/></svg>")
