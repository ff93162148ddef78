"""Tables with one row per item (groups, vectors), read into arrays indexed by item_idx and checked for shape.

Every consumer (the recommenders' ci/tslrec representations, the LLM's inputs and targets) needs exactly one row
per item of the dataset; a missing or extra row stops it with the table, the run and the expected shape.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pyarrow.compute as pc

from tslrec.context import RunContext
from tslrec.errors import TslrecError


def registry_size(ctx: RunContext, registry: str) -> int:
    """Number of dense ids of the dataset in user_index or item_index (one past the largest)."""
    column = "item_idx" if registry == "item_index" else "user_idx"
    largest = ctx.lake.column_max(registry, column, where={"dataset": ctx.config.dataset.name})
    if largest is None:
        raise TslrecError(f"{registry} has no ids for dataset '{ctx.config.dataset.name}': run ingest first")
    return largest + 1


def item_groups(ctx: RunContext, table: str, run: str, n_items: int) -> np.ndarray:
    """group[item_idx] for every item, from a pre-grouping table (columns item_idx, group)."""
    rows = ctx.lake.read_arrow(table, where={"run_id": run}, columns=["item_idx", "group"])
    return _by_item(rows.column("item_idx").to_numpy(), rows.column("group").to_numpy(), n_items,
                    f"table '{table}' (run {run})", "one group per item")


def item_vectors(
    ctx: RunContext, table: str, run: str, column: str, where: Mapping[str, str], n_items: int
) -> np.ndarray:
    """vector[item_idx] for every item: an (n_items x d) float32 matrix; `where` picks one set of vectors."""
    rows = ctx.lake.read_arrow(table, where={"run_id": run})
    described = f"table '{table}' (run {run}{''.join(f', {k}={v}' for k, v in where.items())})"
    for name in ("item_idx", column, *where):
        if name not in rows.column_names:
            raise TslrecError(f"{described} has no column '{name}'; its columns: {', '.join(rows.column_names)}")
    for name, value in where.items():
        rows = rows.filter(pc.equal(pc.cast(rows[name], "string"), value))
    vectors = rows.column(column).combine_chunks()
    widths = pc.unique(pc.list_value_length(vectors)).to_pylist() if len(vectors) else []
    if len(widths) > 1:
        raise TslrecError(f"{described} holds vectors of different lengths {sorted(widths)}; expected one length")
    width = widths[0] if widths else 0
    matrix = vectors.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(vectors), width)
    return _by_item(rows.column("item_idx").to_numpy(), matrix, n_items, described,
                    f"shape ({n_items} x d): one vector per item")


def _by_item(index: np.ndarray, values: np.ndarray, n_items: int, described: str, expected: str) -> np.ndarray:
    """values ordered by item index, after checking there is exactly one row for each of the n_items items."""
    distinct = np.unique(index)
    if len(index) != n_items or len(distinct) != n_items or (len(index) and (index.min() < 0 or index.max() >= n_items)):
        missing = np.setdiff1d(np.arange(n_items), index)[:5].tolist()
        raise TslrecError(
            f"{described} has {len(index)} rows for {len(distinct)} distinct items, but the dataset has "
            f"{n_items} items and needs {expected}"
            + (f" (missing item_idx {missing}...)" if missing else "")
            + "; re-run the stage that writes it for this run"
        )
    out = np.empty_like(values)
    out[index] = values
    return out
