"""Dropout with a cheaper mask on CPUs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# a draw decides an element's fate by at most 16 random bits: p is taken to the nearest multiple of 2^-16
MAX_BITS = 16
# widths that tile a byte: a p that is a whole number of their levels (0.5, 0.25, ...) is drawn from fewer bits
BYTE_BITS = (1, 2, 4, 8)


class Dropout(nn.Dropout):
    """nn.Dropout's distribution with p rounded to a multiple of 2^-16 (within 2^-17 of p; exact where p is a
    multiple of 2^-8): each element kept with probability `keep_probability` and scaled by its inverse, so the
    expectation is unchanged. The draws are slices of 64-bit random words, as few bits each as p needs: torch's CPU
    generator is single-threaded, and a float draw per element (uniform_) cost 3x as much as 16-bit slices and
    was an eighth of an FMLP-Rec step. Draws of 8 bits or fewer become the mask in one lookup of each random byte
    in a table of its draws' multipliers (p = 0.5: a mask 8x faster than from 16-bit draws)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * self.mask(x.shape, x.device, x.dtype)

    @property
    def bits(self) -> int:
        """Bits per draw: the fewest of BYTE_BITS in which p is a whole number of levels, else MAX_BITS."""
        return next((bits for bits in BYTE_BITS if (self.p * 2**bits).is_integer()), MAX_BITS)

    @property
    def dropped_levels(self) -> int:
        return round(self.p * 2**self.bits)

    @property
    def keep_probability(self) -> float:
        return 1.0 - self.dropped_levels / 2**self.bits

    def mask(self, shape: torch.Size, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The multipliers: 0 or 1 / keep_probability, in `dtype`."""
        if self.keep_probability == 0.0:
            return torch.zeros(shape, device=device, dtype=dtype)
        count = math.prod(shape)
        bits = self.bits
        if bits == MAX_BITS:
            draws = _random_bytes(2 * count, device).view(torch.int16).view(shape)  # uniform over -2^15 .. 2^15 - 1
            return draws.ge(self.dropped_levels - 2 ** (MAX_BITS - 1)).to(dtype).mul_(1.0 / self.keep_probability)
        per_byte = 8 // bits
        values = torch.arange(256, device=device)
        table = (values[:, None] >> (torch.arange(per_byte, device=device) * bits)) & (2**bits - 1)
        table = table.ge(self.dropped_levels).to(dtype).mul_(1.0 / self.keep_probability)  # (byte, its draws)
        random_bytes = _random_bytes(-(-count // per_byte), device).long()
        return F.embedding(random_bytes, table).view(-1)[:count].view(shape)


def _random_bytes(count: int, device: torch.device) -> torch.Tensor:
    """`count` uniform uint8 values, cut from 64-bit words with all bits random."""
    words = torch.empty(-(-count // 8), dtype=torch.int64, device=device)
    words.random_(**{"from": torch.iinfo(torch.int64).min, "to": None})
    return words.view(torch.uint8)[:count]
