"""Several seeds of a configuration summarised, and two configurations compared with a two-sample t-test.

The test is Welch's (no equal-variance assumption), two-sided, over the per-seed values of srs_metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from scipy import stats

from tslrec.errors import TslrecError
from tslrec.srs.metrics import metric_names


def seed_values(metrics: pd.DataFrame, stage: str, split: str) -> pd.DataFrame:
    """One row per (backbone, variant, seed), one column per metric, over all users."""
    chosen = metrics[(metrics["stage"] == stage) & (metrics["split"] == split) & (metrics["user_group"] == "all")]
    wide = chosen.pivot_table(index=["backbone", "variant", "seed"], columns="metric", values="value")
    return wide[[m for m in metric_names() if m in wide.columns]].reset_index()


def summarize(values: pd.DataFrame) -> pd.DataFrame:
    """mean, std (sample) and number of seeds of each metric per configuration."""
    grouped = values.drop(columns="seed").groupby(["backbone", "variant"])
    table = grouped.agg(["mean", "std"])
    table.columns = [f"{metric} {stat}" for metric, stat in table.columns]
    table["seeds"] = grouped.size()
    return table.reset_index()


@dataclass(frozen=True)
class Comparison:
    metric: str
    mean_a: float
    std_a: float
    mean_b: float
    std_b: float
    seeds_a: int
    seeds_b: int
    t: float
    p: float


def compare(values: pd.DataFrame, a: tuple[str, str], b: tuple[str, str]) -> list[Comparison]:
    """a, b: (backbone, variant). Needs at least two seeds on each side."""
    out = []
    sides = [values[(values["backbone"] == x[0]) & (values["variant"] == x[1])] for x in (a, b)]
    for side, name in zip(sides, (a, b)):
        if len(side) < 2:
            raise TslrecError(
                f"{'/'.join(name)} has {len(side)} seed(s) in srs_metrics; a t-test needs at least 2 "
                "(train with train.seeds=[1,2,3])"
            )
    for metric in metric_names():
        x, y = sides[0][metric].to_numpy(), sides[1][metric].to_numpy()
        result = stats.ttest_ind(x, y, equal_var=False)
        out.append(Comparison(metric, x.mean(), x.std(ddof=1), y.mean(), y.std(ddof=1), len(x), len(y),
                              float(result.statistic), float(result.pvalue)))
    return out
