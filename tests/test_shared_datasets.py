"""The paper's datasets, when ../shared/data is beside the checkout (skipped otherwise)."""

import pytest

from tslrec.pipeline import run_stages, select_stages

from conftest import shared_data


@pytest.mark.shared_data
@pytest.mark.parametrize(
    "dataset, file, users, items, interactions",
    [("beauty", "Beauty.txt", 22_363, 12_101, 198_502), ("ml-1m", "ml-1m.txt", 6_040, 3_416, 999_611)],
)
def test_paper_dataset_counts(make_context, dataset, file, users, items, interactions):
    path = shared_data(file)
    ctx = make_context(f"dataset.path={path}", dataset=dataset)
    run_stages(ctx, select_stages(until="sequences"))
    stats = ctx.lake.read_arrow("dataset_stats").to_pylist()[0]
    assert (stats["users"], stats["items"], stats["interactions"]) == (users, items, interactions)
    assert ctx.lake.read_arrow("quarantine").num_rows == 0
    assert ctx.lake.read_arrow("user_sequences").num_rows == users
