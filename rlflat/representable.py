"""Which SB3 policies rlflat's functional policy represents exactly, and a one-line refusal for the rest.

The probe and the evaluator run a policy as pure functions of its parameters (features -> MLP extractor ->
action and value heads, as SB3's ``ActorCriticPolicy`` computes them). A policy class that changes that path,
such as sb3-contrib's ``RecurrentActorCriticPolicy`` (an LSTM state carried between steps) or
``MaskableActorCriticPolicy`` (an action mask), would be run without what makes it that policy: RecurrentPPO
evaluated without its LSTM returned 9.3 where its own predict gets 92.9. Such classes are refused in one line,
with ``--trust`` too: trusting a file lets it run code, it does not make the rebuild exact.
"""

from __future__ import annotations

from pathlib import Path

from stable_baselines3.common.policies import ActorCriticPolicy

from rlflat.errors import RlflatError

FORWARD_METHODS = (
    "forward",
    "_predict",
    "predict",
    "get_distribution",
    "evaluate_actions",
    "predict_values",
    "extract_features",
    "_get_action_dist_from_latent",
)
"""The methods whose computation the functional policy reproduces; a subclass overriding one is not represented."""
KNOWN = {
    "RecurrentActorCriticPolicy": "it carries an LSTM state from step to step (sb3-contrib's RecurrentPPO)",
    "RecurrentActorCriticCnnPolicy": "it carries an LSTM state from step to step (sb3-contrib's RecurrentPPO)",
    "RecurrentMultiInputActorCriticPolicy": "it carries an LSTM state from step to step (sb3-contrib's RecurrentPPO)",
    "MaskableActorCriticPolicy": "it acts under an action mask (sb3-contrib's MaskablePPO)",
    "MaskableActorCriticCnnPolicy": "it acts under an action mask (sb3-contrib's MaskablePPO)",
    "MaskableMultiInputActorCriticPolicy": "it acts under an action mask (sb3-contrib's MaskablePPO)",
}
"""Classes named in readable zip data that no flag can make representable (the last dotted component)."""


def refuse_known(path: Path, dotted_name: str) -> None:
    """Refuse a class :data:`KNOWN` to be unrepresentable, by its name alone (nothing unpickled)."""
    reason = KNOWN.get(dotted_name.rsplit(".", 1)[-1])
    if reason is not None:
        raise RlflatError(
            f"{path}: policy {dotted_name} cannot be probed or evaluated: {reason}, which rlflat's functional "
            f"policy (feed-forward actor-critic) does not represent; refused with or without --trust"
        )


def check_representable(path: Path, policy_class: type) -> None:
    """Refuse (one line) a loaded policy class whose forward computation differs from ``ActorCriticPolicy``'s."""
    dotted = f"{policy_class.__module__}.{policy_class.__qualname__}"
    refuse_known(path, dotted)
    changed = [m for m in FORWARD_METHODS if getattr(policy_class, m, None) is not getattr(ActorCriticPolicy, m)]
    if changed:
        raise RlflatError(
            f"{path}: policy {dotted} overrides {', '.join(changed)} of SB3's ActorCriticPolicy, so rlflat's "
            f"functional policy would not compute what it computes; refused with or without --trust"
        )
