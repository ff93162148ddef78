"""The recommenders' training losses over the item table."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# bytes of one logit while its chunk is worked on (float32; bfloat16 chunks take half)
BYTES_PER_LOGIT = 4
# below this many positions a chunk's matmuls are too small to run at speed (many items: larger, slower chunks)
MIN_CHUNK_ROWS = 128


def full_softmax(
    states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, chunk_mb: float, dtype: torch.dtype
) -> torch.Tensor:
    """Mean cross-entropy of each state's scores over all items against its target, the scores and their softmax
    in `dtype` (the loss accumulated in float32).

    The logits of a step are positions x items (170 MB for a Beauty batch, tens of GB for 512 sequences over 100k
    items). They are never held whole: positions are taken in chunks of at most `chunk_mb` of logits (at least
    MIN_CHUNK_ROWS positions), and each chunk's gradients with respect to the states and the table are computed in
    the forward pass while its logits are still in the cache. Same loss and gradients as the direct computation;
    on the development CPU 2-3x faster, because the direct one is bound by memory traffic over the logits, not by
    its matmuls."""
    rows = max(MIN_CHUNK_ROWS, int(chunk_mb * 2**20 // (table.shape[0] * BYTES_PER_LOGIT)))
    return _ChunkedSoftmaxCE.apply(states, table, targets, rows, dtype)


class _ChunkedSoftmaxCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, rows: int,  # type: ignore[override]
                dtype: torch.dtype) -> torch.Tensor:
        with torch.autocast(states.device.type, enabled=False):
            scoring = table.detach().to(dtype)
            grad_states = torch.empty_like(states, dtype=torch.float32)
            grad_table = torch.zeros(table.shape, dtype=torch.float32, device=table.device)
            total = torch.zeros((), dtype=torch.float64, device=states.device)
            for first in range(0, states.shape[0], rows):
                chunk = states.detach()[first:first + rows].to(dtype)
                wanted = targets[first:first + rows]
                # one fused softmax over the chunk's logits (float32 inside, `dtype` out: 1.2-1.8x faster than
                # its steps one by one), the loss from the targets' probabilities, then the gradient,
                # softmax - one-hot, which goes back through the matmuls in `dtype`
                gradient = torch.softmax(chunk @ scoring.T, dim=1)
                chosen = gradient.gather(1, wanted[:, None]).squeeze(1).float()
                total -= chosen.clamp_min(torch.finfo(torch.float32).tiny).log().sum(dtype=torch.float64)
                gradient[torch.arange(len(wanted), device=gradient.device), wanted] -= 1.0
                grad_states[first:first + rows] = (gradient @ scoring).float()
                grad_table += (gradient.T @ chunk).float()
            count = max(states.shape[0], 1)
            ctx.save_for_backward(grad_states / count, grad_table / count)
            return (total / count).float()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        grad_states, grad_table = ctx.saved_tensors
        return grad_output * grad_states, grad_output * grad_table, None, None, None


def one_negative(states: torch.Tensor, scoring: Callable[[torch.Tensor], torch.Tensor], n_items: int,
                 targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the target against one uniformly sampled item per position; `scoring` gives the
    vectors of the items it is given (the item representation called on them), so the whole table is never made."""
    negatives = torch.randint(0, n_items, targets.shape, device=targets.device)
    positive = (states * scoring(targets)).sum(-1)
    negative = (states * scoring(negatives)).sum(-1)
    return F.binary_cross_entropy_with_logits(positive, torch.ones_like(positive)) + F.binary_cross_entropy_with_logits(
        negative, torch.zeros_like(negative)
    )
