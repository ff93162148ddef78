"""The results page's significance table: which lines are the control and what each group is tested against."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import results_page  # noqa: E402


def lines(variant, label, ndcg, tail):
    return [{"backbone": "sasrec", "loss": "ce", "precision": "bf16", "variant": variant, "label": label,
             "test_HR@10": 2 * value, "test_NDCG@10": value, "segment_tail items": t} for value, t in zip(ndcg, tail)]


def test_groups_are_tested_against_the_base_variant_of_their_study():
    """Without a `base` label, the base variant's label with most seeds is the control; a label shared by two
    variants is two groups."""
    frame = pd.DataFrame(lines("base", "study", [0.30, 0.31, 0.32], [0.01, 0.02, 0.015])
                         + lines("base", "stage0", [0.5], [0.5])
                         + lines("ci", "study", [0.33, 0.35, 0.34], [0.04, 0.05, 0.06])
                         + lines("tslrec", "soft", [0.31, 0.30], [np.nan, np.nan]))
    rows = results_page._welch(frame)
    assert len(rows) == 2, rows
    ci = next(r for r in rows if r.startswith("| sasrec | ci | study | base/study (ce, bf16) |"))
    expected = stats.ttest_ind([0.04, 0.05, 0.06], [0.01, 0.02, 0.015], equal_var=False).pvalue
    assert ci.endswith(f" | {expected:.3f} |")
    assert next(r for r in rows if "| tslrec | soft |" in r).endswith(" | n/a |")  # no tail figures recorded


def test_a_base_label_is_the_control_when_there_is_one():
    frame = pd.DataFrame(lines("base", "base", [0.30, 0.32], [0.01, 0.02])
                         + lines("base", "other", [0.2, 0.21, 0.22], [0, 0, 0])
                         + lines("ci", "ci", [0.33, 0.35], [0.04, 0.05]))
    rows = results_page._welch(frame)
    assert {r.split(" | ")[2] for r in rows} == {"other", "ci"}
    assert all("| base/base (ce, bf16) |" in r for r in rows)


def test_a_study_with_its_own_base_seeds_is_tested_against_them():
    """A label whose Base was trained in the same sweep is compared with that Base, not with the `base` label of
    another session."""
    frame = pd.DataFrame(lines("base", "base", [0.30, 0.32], [0.01, 0.02])
                         + lines("base", "study", [0.40, 0.41, 0.42], [0, 0, 0])
                         + lines("tslrec", "study", [0.38, 0.39, 0.385], [0, 0, 0])
                         + lines("tslrec", "other", [0.33, 0.35], [0.04, 0.05]))
    rows = {r.split(" | ")[1] + "/" + r.split(" | ")[2]: r for r in results_page._welch(frame)}
    assert set(rows) == {"base/study", "tslrec/study", "tslrec/other"}
    assert "| base/study (ce, bf16) |" in rows["tslrec/study"]
    assert "| base/base (ce, bf16) |" in rows["tslrec/other"] and "| base/base (ce, bf16) |" in rows["base/study"]
    expected = stats.ttest_ind([0.38, 0.39, 0.385], [0.40, 0.41, 0.42], equal_var=False).pvalue
    assert f" | {expected:.3f} | n/a |" in rows["tslrec/study"]
