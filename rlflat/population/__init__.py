"""Population engine: K learners of one shape trained together, each exactly as its single run would train.

:func:`train_population` is the entry point; :class:`Member` and :class:`MemberResult` describe its input and
output; :func:`shape_key` says which runs may share a population. See ``docs/population.md``.
"""

from __future__ import annotations

from rlflat.population.engine import train_population
from rlflat.population.members import Member, MemberResult, population_id, shape_key

__all__ = ["Member", "MemberResult", "population_id", "shape_key", "train_population"]
