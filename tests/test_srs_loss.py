"""The chunked full-softmax loss against the direct one (torch's cross_entropy over the whole logits)."""

import pytest
import torch
import torch.nn.functional as F

from tslrec.srs.loss import BYTES_PER_LOGIT, MIN_CHUNK_ROWS, full_softmax


@pytest.mark.parametrize("positions", [1, 37, 300, 1000])
def test_chunks_give_the_same_loss_and_gradients(positions):
    generator = torch.Generator().manual_seed(positions)
    states = torch.randn(positions, 16, generator=generator, requires_grad=True)
    table = torch.randn(1000, 16, generator=generator, requires_grad=True)
    targets = torch.randint(0, 1000, (positions,), generator=generator)
    direct = F.cross_entropy(states @ table.T, targets)
    direct_grads = torch.autograd.grad(direct, (states, table))
    chunk_mb = 200 * 1000 * BYTES_PER_LOGIT / 2**20  # 200 positions per chunk
    assert 200 > MIN_CHUNK_ROWS
    chunked = full_softmax(states, table, targets, chunk_mb, torch.float32)
    chunked_grads = torch.autograd.grad(chunked * 3.0, (states, table))
    torch.testing.assert_close(chunked, direct, rtol=1e-6, atol=1e-6)
    for got, expected in zip(chunked_grads, direct_grads):
        torch.testing.assert_close(got, 3.0 * expected, rtol=1e-5, atol=1e-7)


def test_bfloat16_scoring_stays_close_to_float32():
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(200, 64, generator=generator, requires_grad=True)
    table = (0.1 * torch.randn(5000, 64, generator=generator)).requires_grad_()
    targets = torch.randint(0, 5000, (200,), generator=generator)
    exact = full_softmax(states, table, targets, 1.0, torch.float32)
    fast = full_softmax(states, table, targets, 1.0, torch.bfloat16)
    assert abs(fast.item() - exact.item()) < 0.01 * exact.item()
    exact_grad, = torch.autograd.grad(exact, states)
    fast_grad, = torch.autograd.grad(fast, states)
    assert torch.nn.functional.cosine_similarity(fast_grad.flatten(), exact_grad.flatten(), dim=0) > 0.99

