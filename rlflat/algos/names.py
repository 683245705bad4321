"""Algorithm names: a base (``ppo``, ``pg``) composed with an update rule (``plain`` is left out of the name).

``ppo``, ``ppo_sam``, ``pg_asam``, ...: one registry, so the CLI, the sweep and saved zips agree on the names.
"""

from __future__ import annotations

from rlflat.algos.base import FlatOnPolicyAlgorithm
from rlflat.algos.pg import PG
from rlflat.algos.ppo import RlflatPPO
from rlflat.algos.rules import RULE_DEFAULTS, RULES
from rlflat.errors import bad_choice

BASES: dict[str, type[FlatOnPolicyAlgorithm]] = {"ppo": RlflatPPO, "pg": PG}
_BASE_DESCRIPTIONS = {
    "ppo": "PPO (Schulman et al. 2017) as SB3 trains it (the plain rule is SB3 PPO exactly)",
    "pg": "vanilla policy gradient, value baseline + GAE, one full-batch step per rollout",
}

ALGORITHM_NAMES: list[str] = [base if rule == "plain" else f"{base}_{rule}" for base in BASES for rule in RULES]


def parse_algorithm(name: str) -> tuple[str, str]:
    """``ppo_sam`` -> (``ppo``, ``sam``); ``ppo`` -> (``ppo``, ``plain``)."""
    if name not in ALGORITHM_NAMES:
        raise bad_choice("algorithm", name, ALGORITHM_NAMES)
    base, _, rule = name.partition("_")
    return base, rule or "plain"


def describe_algorithms() -> list[str]:
    """One line per algorithm name, for ``--list``."""
    width = max(len(n) for n in ALGORITHM_NAMES)
    lines = []
    for name in ALGORITHM_NAMES:
        base, rule = parse_algorithm(name)
        defaults = ", ".join(f"{k}={v}" for k, v in RULE_DEFAULTS[rule].items())
        extra = f" [{defaults}]" if defaults else ""
        lines.append(f"{name:<{width}}  {_BASE_DESCRIPTIONS[base]}; {RULES[rule].description}{extra}")
    return lines
