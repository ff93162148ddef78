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
        if last_only:
            from_spectrum = from_spectrum[-1:]
        with torch.autocast(x.device.type, enabled=False):
            real, imag = torch.matmul(to_spectrum, x.float()).chunk(2, dim=1)  # (B, F, d) each
            filter_real, filter_imag = self.filter.unbind(-1)
            filtered = torch.matmul(from_spectrum, torch.cat(
                [real * filter_real - imag * filter_imag, real * filter_imag + imag * filter_real], dim=1))
        if last_only:
            x = x[:, -1:]
        x = self.filter_norm(x + self.filter_dropout(filtered))
        return self.feed_forward_norm(x + self.feed_forward(x))


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
