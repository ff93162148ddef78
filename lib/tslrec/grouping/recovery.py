"""How much of the synthetic log's planted item categories each item grouping of a run recovers.

TSLRec can only add what its LLM reads from the stage-0 item vectors: where the k-means pre-groups of those vectors
already recover the planted categories, the LLM's inferred categories have little to add, and where neither does
(tail items, with few interactions to learn a vector from) no fusion can help. The figure is the normalised mutual
information (NMI) of a grouping with the truth, over all items and over tail and other items.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from tslrec.context import RunContext
from tslrec.srs.evaluate import TAIL_INTERACTIONS

# table: (its group column, what the grouping is)
GROUPINGS = {"item_pregroups": ("group", "k-means pre-groups of the stage-0 vectors"),
             "item_categories": ("top1", "the LLM's top-1 inferred category")}


def normalized_mutual_information(truth: np.ndarray, found: np.ndarray) -> float:
    """NMI with the arithmetic mean of the two entropies as normaliser: 1 for the same partition under any names,
    near 0 for independent ones (1 when both put everything in one group)."""
    _, truth_codes = np.unique(truth, return_inverse=True)
    _, found_codes = np.unique(found, return_inverse=True)
    joint = np.zeros((truth_codes.max() + 1, found_codes.max() + 1))
    np.add.at(joint, (truth_codes, found_codes), 1.0)
    joint /= len(truth)
    p_truth, p_found = joint.sum(axis=1), joint.sum(axis=0)
    seen = joint > 0
    mutual = float((joint[seen] * np.log(joint[seen] / np.outer(p_truth, p_found)[seen])).sum())
    entropies = -(p_truth * np.log(p_truth)).sum() - (p_found * np.log(p_found)).sum()
    return 1.0 if entropies == 0 else max(0.0, 2.0 * mutual / entropies)


def planted_recovery(ctx: RunContext) -> pd.DataFrame | None:
    """One row per grouping the run has and item segment: grouping, segment, items, nmi. None when the run's data
    has no planted categories (only the synthetic generator writes them)."""
    lake, run = ctx.lake, ctx.run_id
    if not lake.exists("synthetic_categories"):
        return None
    truth = lake.read_pandas("synthetic_categories", where={"run_id": run})
    if truth.empty:
        return None
    index = lake.read_arrow("item_index", where={"dataset": ctx.config.dataset.name}, columns=["item_id", "item_idx"])
    planted = truth.merge(index.to_pandas(), on="item_id").set_index("item_idx")["category"]
    train = lake.read_arrow("user_sequences", where={"run_id": run}, columns=["train_items"])["train_items"]
    popularity = pd.Series(pc.list_flatten(train).to_numpy(zero_copy_only=False)).value_counts()
    rows = []
    for table, (column, described) in GROUPINGS.items():
        if not lake.exists(table):
            continue
        groups = lake.read_pandas(table, where={"run_id": run})
        if groups.empty:
            continue
        found = groups.set_index("item_idx")[column]
        items = found.index.intersection(planted.index)
        tail = popularity.reindex(items, fill_value=0).to_numpy() <= TAIL_INTERACTIONS
        for segment, members in (("all items", np.ones(len(items), bool)),
                                 (f"tail items (<= {TAIL_INTERACTIONS} training interactions)", tail),
                                 ("other items", ~tail)):
            if members.sum() > 1:
                chosen = items[members]
                rows.append({"grouping": described, "segment": segment, "items": int(members.sum()),
                             "nmi": normalized_mutual_information(planted[chosen].to_numpy(), found[chosen].to_numpy())})
    return pd.DataFrame(rows) if rows else None
