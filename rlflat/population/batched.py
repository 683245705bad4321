"""Placeholder: the batched engine (filled in next)."""

from __future__ import annotations

from typing import Any

from rlflat.population.members import Member, MemberResult


def supports(config: dict[str, Any], device: str) -> bool:
    return False


def train_batched(members: list[Member], extra: dict[str, str], *, progress: bool, device: str) -> list[MemberResult]:
    raise NotImplementedError
