"""FMLP-Rec (Zhou et al., WWW 2022): all-MLP blocks with learnable filters in the frequency domain.

Each block moves the sequence to the frequency domain (FFT over positions), multiplies it by a learned complex
filter per frequency and channel, returns to positions, adds it back (dropout, layer norm), then applies a
GELU feed-forward network with a residual connection and layer norm. The filters mix all positions, so a state
is not causal: each training prefix predicts only its last item, and the last block's position-wise layers run on
the last position only.

The feed-forward layers (64 -> 256 -> 64 on every position of 4 blocks) are most of a step: FMLP-Rec trains under
bfloat16 autocast where srs.precision picks it (their matmuls and GELU ~3x faster on CPUs with AMX); the filters
stay in float32.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tslrec.config import FMLPSection
from tslrec.srs.backbones.base import Backbone
from tslrec.srs.dropout import Dropout
from tslrec.srs.items import ItemRepresentation


class _FilterBlock(nn.Module):
    def __init__(self, dim: int, max_length: int, dropout: float) -> None:
        super().__init__()
        self.filter = nn.Parameter(torch.randn(max_length // 2 + 1, dim, 2) * 0.02)
        self.filter_dropout = Dropout(dropout)
        self.filter_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), Dropout(dropout)
        )
        self.feed_forward_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, bases: tuple[torch.Tensor, torch.Tensor], last_only: bool = False) -> torch.Tensor:
        """last_only: (B, L, d) -> (B, 1, d), the state of the last position."""
        to_spectrum, from_spectrum = bases
        with torch.autocast(x.device.type, enabled=False):
            if last_only:
                filtered = (x.float() * self._last_position_kernel(to_spectrum, from_spectrum[-1])).sum(1, keepdim=True)
                x = x[:, -1:]
            else:
                spectrum = _SpectralProduct.apply(torch.matmul(to_spectrum, x.float()), self.filter)
                filtered = torch.matmul(from_spectrum, spectrum)
        x = self.filter_norm(x + self.filter_dropout(filtered))
        return self.feed_forward_norm(x + self.feed_forward(x))

    def _last_position_kernel(self, to_spectrum: torch.Tensor, back: torch.Tensor) -> torch.Tensor:
        """(L, d): the filter's last output position as weights of the input positions, per channel. Only the last
        state is needed, so the transform, the product and the way back fold into one weighted sum per channel."""
        filter_real, filter_imag = self.filter.unbind(-1)  # (F, d)
        back_real, back_imag = back[:, None].chunk(2)  # (F, 1): the last position's row of the inverse transform
        weights = torch.cat([back_real * filter_real + back_imag * filter_imag,
                             back_imag * filter_real - back_real * filter_imag])  # (2F, d), on the real and imaginary parts
        return to_spectrum.T @ weights


class _SpectralProduct(torch.autograd.Function):
    """The spectrum (B, 2F, d), real parts above imaginary ones, times the complex filter (F, d, 2): the real and the
    imaginary part of the product in one multiply and one fused multiply-add over [real; imag] and its halves
    swapped: 3 passes over the spectrum forward and 7 backward, where autograd's product of the four halves takes
    7 and ~14 (a Beauty batch's product forward and backward 10.5-12 ms against 12-16 ms at 2 threads)."""

    @staticmethod
    def forward(ctx, spectrum: torch.Tensor, filter: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        same, cross = _product_weights(filter)
        swapped = _swap_halves(spectrum)
        ctx.save_for_backward(spectrum, swapped, filter)
        return torch.addcmul(spectrum * same, swapped, cross)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        spectrum, swapped, filter = ctx.saved_tensors
        same, cross = _product_weights(filter)
        grad_spectrum = torch.addcmul(grad * same, _swap_halves(grad), _swap_halves(cross))
        grad_same, grad_cross = ((grad * spectrum).sum(0).chunk(2), (grad * swapped).sum(0).chunk(2))
        grad_filter = torch.stack([grad_same[0] + grad_same[1], grad_cross[1] - grad_cross[0]], dim=-1)
        return grad_spectrum, grad_filter


def _product_weights(filter: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2F, d) each: [re; im] * same + [im; re] * cross = [re wr - im wi; im wr + re wi]."""
    filter_real, filter_imag = filter.unbind(-1)
    return torch.cat([filter_real, filter_real]), torch.cat([-filter_imag, filter_imag])


def _swap_halves(spectrum: torch.Tensor) -> torch.Tensor:
    """[imag; real] from [real; imag] along the frequency axis (the second to last)."""
    *lead, rows, channels = spectrum.shape
    return spectrum.reshape(*lead, 2, rows // 2, channels).flip(-3).reshape(*lead, rows, channels)


def spectral_bases(length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.fft.rfft and irfft over `length` positions (norm "ortho") as real matrices: (2F, L) to the real then the
    imaginary parts of the F = L // 2 + 1 frequencies, and (L, 2F) back, which, as irfft does, ignores the
    imaginary parts at frequency 0 and L / 2. With 50 positions two small matmuls shared by all channels are ~1.7x
    faster on a CPU than the FFTs with their strided copies (and the result is the same)."""
    positions = torch.arange(length, dtype=torch.float64)
    frequencies = torch.arange(length // 2 + 1, dtype=torch.float64)
    angles = 2 * math.pi * frequencies[:, None] * positions[None, :] / length  # (F, L)
    to_spectrum = torch.cat([angles.cos(), -angles.sin()]) / math.sqrt(length)
    weights = torch.full_like(frequencies, 2.0)  # each frequency stands for itself and its mirror image ...
    weights[0] = 1.0  # ... except 0 and, for an even length, L / 2
    if length % 2 == 0:
        weights[-1] = 1.0
    from_spectrum = torch.cat([weights[:, None] * angles.cos(), -weights[:, None] * angles.sin()]).T / math.sqrt(length)
    return to_spectrum.float(), from_spectrum.float()


class FMLPRec(Backbone):
    causal = False
    pad_invariant = False  # the filters are defined over exactly max_length positions
    autocast = True

    def __init__(self, items: ItemRepresentation, n_users: int, max_length: int, cfg: FMLPSection) -> None:
        super().__init__(items, "prefixes")
        self.positions = nn.Embedding(max_length, items.dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.norm = nn.LayerNorm(items.dim)
        self.dropout = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_FilterBlock(items.dim, max_length, cfg.dropout) for _ in range(cfg.blocks))
        to_spectrum, from_spectrum = spectral_bases(max_length)
        self.register_buffer("to_spectrum", to_spectrum, persistent=False)
        self.register_buffer("from_spectrum", from_spectrum, persistent=False)

    def forward(self, inputs: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(inputs.shape[1], device=inputs.device)
        x = self.dropout(self.norm(self.items(inputs) + self.positions(positions)))
        for number, block in enumerate(self.blocks, start=1):
            x = block(x, (self.to_spectrum, self.from_spectrum), last_only=number == len(self.blocks))
        return x
