"""Seeds for the probe's random streams: one named, independent stream per use, and one way to make a generator.

Every random draw of the probe (batch sampling, directions per kind, Hutchinson probes, start vectors) takes its
seed from :func:`subseed` of the probe seed and a stream name, so adding a stream never shifts another, and the
streams of probe seed 0 never coincide with those of seed 1 (as ``seed + offset`` schemes do).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

__all__ = ["Seed", "as_generator", "subseed"]

Seed = int | torch.Generator


def subseed(seed: int, stream: str) -> int:
    """An independent 31-bit seed for a named random stream (numpy ``SeedSequence`` of the seed and the name)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(stream.encode())]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


def as_generator(seed: Seed) -> torch.Generator:
    """A CPU ``torch.Generator``: the one given, or a new one seeded with the int (draws are device-independent)."""
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed))
