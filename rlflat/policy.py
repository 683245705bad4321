"""Any SB3 on-policy actor-critic model as a *functional* policy.

The probe and the evaluator both need "the policy" as a pure function of a parameter dict, so that parameters can
be perturbed, differentiated twice, and stacked (``torch.func.vmap``) without touching a live ``nn.Module``. A
policy is everything between observation and action: a run trained with observation normalisation
(``VecNormalize``) carries its statistics, and they are applied here; a policy loaded without them would be a
different policy.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import (
    CategoricalDistribution,
    DiagGaussianDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.save_util import load_from_zip_file
from torch import Tensor, nn
from torch.func import functional_call, vmap

from rlflat.errors import RlflatError
from rlflat.normalization import (
    NORMALIZATION_FILE,
    PICKLE_FILE,
    NormalizationStats,
    load_stats,
    load_trusted_pickle,
)
from rlflat.representable import check_representable, refuse_known
from rlflat.sb3_zip import check_policy_values, rebuild_policy
from rlflat.scope import actor_parameter_names
from rlflat.tasks import TaskSpec, make_env

Params = dict[str, Tensor]

MODEL_FILE = "model.zip"
NORMALIZER_FILE = PICKLE_FILE


@dataclass(frozen=True)
class ObservationNormalizer:
    """``VecNormalize``'s observation transform, frozen: ``clip((obs - mean) / sqrt(var + eps), +-clip)``."""

    mean: np.ndarray
    var: np.ndarray
    clip: float
    epsilon: float

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        scaled = (obs - self.mean) / np.sqrt(self.var + self.epsilon)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    @classmethod
    def from_stats(cls, stats: NormalizationStats) -> ObservationNormalizer | None:
        """The observation transform of ``stats``; ``None`` if observations were not normalised."""
        if not stats.norm_obs:
            return None
        return cls(stats.obs_mean, stats.obs_var, stats.clip_obs, stats.epsilon)


class _Heads(nn.Module):
    """Wraps a policy so ``functional_call`` can reach its actor and critic heads by one ``forward``."""

    def __init__(self, policy: ActorCriticPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: Tensor, head: str) -> Tensor | tuple[Tensor, Tensor]:
        policy = self.policy
        features = policy.extract_features(obs)
        pi_features, vf_features = features if isinstance(features, tuple) else (features, features)
        if head == "value":
            return policy.value_net(policy.mlp_extractor.forward_critic(vf_features)).squeeze(-1)
        latent_pi = policy.mlp_extractor.forward_actor(pi_features)
        return policy.action_net(latent_pi), latent_pi


class FunctionalPolicy:
    """A trained policy as pure functions of a parameter dict.

    ``params`` holds detached copies of every parameter, keyed as in ``policy.named_parameters()``;
    ``actor_names`` are the actor's (:func:`rlflat.scope.actor_parameter_names`: policy net and action head, the
    scope SAM training perturbs; the default probe scope).
    """

    def __init__(
        self,
        policy: ActorCriticPolicy,
        normalizer: ObservationNormalizer | None = None,
        reward_scaling: tuple[float, float] = (1.0, math.inf),
    ) -> None:
        if not isinstance(policy, ActorCriticPolicy):
            raise RlflatError(f"not an on-policy actor-critic policy: {type(policy).__name__}")
        dist = policy.action_dist
        if not isinstance(dist, CategoricalDistribution | DiagGaussianDistribution | StateDependentNoiseDistribution):
            raise RlflatError(
                f"unsupported action distribution {type(dist).__name__}; "
                "valid: Categorical (Discrete), DiagGaussian or gSDE (Box)"
            )
        self.policy = policy.eval()
        self.normalizer = normalizer
        self.reward_scaling = reward_scaling
        """(scale, clip) of the rewards the critic was trained on (``VecNormalize``'s reward normalisation)."""
        self.observation_space = policy.observation_space
        self.action_space = policy.action_space
        self.discrete = isinstance(self.action_space, spaces.Discrete)
        self.sde = isinstance(dist, StateDependentNoiseDistribution)
        self._heads = _Heads(policy)
        self.params: Params = {name: p.detach().clone() for name, p in policy.named_parameters()}
        self.actor_names: list[str] = actor_parameter_names(self.params)

    # -- pure functions -------------------------------------------------------------------------------------
    def _call(self, params: Params, obs: Tensor, head: str) -> Any:
        full = {f"policy.{name}": value for name, value in {**self.params, **params}.items()}
        return functional_call(self._heads, full, (obs, head), strict=False)

    def distribution(self, params: Params, obs: Tensor) -> torch.distributions.Distribution:
        """The action distribution at ``obs`` under ``params`` (missing keys fall back to the trained values)."""
        output, latent_pi = self._call(params, obs, "actor")
        if self.discrete:
            return torch.distributions.Categorical(logits=output)
        log_std = params.get("log_std", self.params["log_std"])
        if self.sde:
            std = self._sde_std(log_std, latent_pi)
        else:
            std = torch.ones_like(output) * log_std.exp()
        return torch.distributions.Normal(output, std)

    def _sde_std(self, log_std: Tensor, latent_pi: Tensor) -> Tensor:
        """gSDE's state-dependent std: sqrt((latent^2) @ exp(log_std)^2 + eps) (Raffin et al. 2022)."""
        dist = self.policy.action_dist
        assert isinstance(dist, StateDependentNoiseDistribution)
        if dist.use_expln:
            raise RlflatError("gSDE with use_expln=True is not supported by the functional policy")
        latent = latent_pi if dist.learn_features else latent_pi.detach()
        std = log_std.exp()
        if not dist.full_std:
            assert dist.latent_sde_dim is not None
            std = torch.ones(dist.latent_sde_dim, dist.action_dim) * std
        return torch.sqrt((latent**2) @ (std**2) + dist.epsilon)

    def log_prob(self, params: Params, obs: Tensor, actions: Tensor) -> Tensor:
        """Per-sample log-probability of ``actions`` (summed over action dimensions for Box spaces)."""
        dist = self.distribution(params, obs)
        if self.discrete:
            return dist.log_prob(actions.long().reshape(-1))
        return dist.log_prob(actions).sum(-1)

    def mode(self, params: Params, obs: Tensor) -> Tensor:
        """The deterministic action (argmax logits / Gaussian mean), before clipping to the action space."""
        output, _ = self._call(params, obs, "actor")
        return output.argmax(-1) if self.discrete else output

    def value(self, params: Params, obs: Tensor) -> Tensor:
        return self._call(params, obs, "value")

    def stacked_mode(self, stacked: Params, obs: Tensor) -> Tensor:
        """Deterministic actions for K parameter sets at once: ``stacked`` has a leading K axis, obs is (K, B, d)."""
        return vmap(self.mode)(stacked, obs)

    # -- numpy conveniences ---------------------------------------------------------------------------------
    def preprocess(self, obs: np.ndarray) -> Tensor:
        """Raw env observations -> the tensor the network sees (normalisation applied)."""
        obs = np.asarray(obs, dtype=np.float32)
        if self.normalizer is not None:
            obs = self.normalizer(obs)
        return torch.as_tensor(obs, dtype=torch.float32)

    def postprocess(self, actions: Tensor) -> np.ndarray:
        """Network actions -> env actions (clipped to the Box bounds, as SB3's ``predict`` does)."""
        out = actions.detach().cpu().numpy()
        if self.discrete:
            return out.astype(np.int64)
        assert isinstance(self.action_space, spaces.Box)
        return np.clip(out, self.action_space.low, self.action_space.high)

    def act(self, obs: np.ndarray, params: Params | None = None, deterministic: bool = True) -> np.ndarray:
        with torch.no_grad():
            x = self.preprocess(obs)
            p = params or {}
            actions = self.mode(p, x) if deterministic else self.distribution(p, x).sample()
        return self.postprocess(actions)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params.values())


def load_policy(
    path: str | Path,
    task: TaskSpec | None = None,
    *,
    trust: bool = False,
    vecnormalize: str | Path | None = None,
) -> FunctionalPolicy:
    """Load a run directory (``model.zip`` + its ``normalization.json``) or any SB3 on-policy zip.

    Only the policy is rebuilt, so zips of PPO, A2C or rlflat's algorithms load alike without knowing which
    algorithm trained them. By default nothing is unpickled (:mod:`rlflat.sb3_zip`; spaces from ``task`` when
    given). ``trust=True`` uses SB3's full loader, which unpickles the zip's objects and can run code in them.
    Normalisation statistics come from ``vecnormalize`` when named (a pickle only with ``trust``), else from a run
    directory's own ``normalization.json``; files lying beside a bare zip are never applied.
    """
    path = Path(path)
    if path.is_dir():
        zip_path = path / MODEL_FILE
        if not zip_path.exists():
            raise RlflatError(f"{path} is a directory without {MODEL_FILE}: not an rlflat run dir")
    elif path.suffix == ".zip" and path.is_file():
        zip_path = path
    else:
        raise RlflatError(f"{path} is neither a run directory nor an SB3 model .zip")
    stats = normalization_stats(path, trust=trust, vecnormalize=vecnormalize)
    if trust:
        policy = _load_trusted(zip_path)
    else:
        policy = rebuild_policy(zip_path, _spaces(task) if task is not None else None)
    check_policy_values(policy, str(zip_path))  # issue 23: NaN / overflowing weights refused in one line
    if stats is not None:
        stats.check_observations(policy.observation_space.shape, str(vecnormalize or path / NORMALIZATION_FILE))
    normalizer = ObservationNormalizer.from_stats(stats) if stats is not None else None
    scaling = stats.reward_scaling() if stats is not None else (1.0, math.inf)
    return FunctionalPolicy(policy, normalizer, reward_scaling=scaling)


def normalization_stats(
    path: str | Path, *, trust: bool = False, vecnormalize: str | Path | None = None
) -> NormalizationStats | None:
    """The statistics that belong to the policy at ``path`` (see :func:`load_policy`), or ``None``."""
    path = Path(path)
    if vecnormalize is not None:
        named = Path(vecnormalize)
        if not named.is_file():
            raise RlflatError(f"--vecnormalize {named}: no such file")
        if named.suffix == ".json":
            return load_stats(named)
        if not trust:
            raise RlflatError(
                f"--vecnormalize {named}: reading a pickle can run code it names; add --trust if you trust the file, "
                f"or give an rlflat {NORMALIZATION_FILE}"
            )
        return load_trusted_pickle(named)
    if path.is_dir():
        if (path / NORMALIZATION_FILE).is_file():
            return load_stats(path / NORMALIZATION_FILE)
        if (path / NORMALIZER_FILE).exists():
            raise RlflatError(
                f"{path / NORMALIZER_FILE}: the run's statistics exist only as a pickle, which is never read by "
                f"default; pass --trust --vecnormalize {path / NORMALIZER_FILE} if you trust it"
            )
        return None
    from rlflat.normalization_import import stray_note  # beside the zip, or the zoo's <run>/<env>/ layout

    if (note := stray_note(path)) is not None:
        print(note, file=sys.stderr)
    return None


def _load_trusted(zip_path: Path) -> ActorCriticPolicy:
    """SB3's own loader: unpickles every object in the zip (runs its code). Only behind ``--trust``."""
    try:
        data, state, _ = load_from_zip_file(zip_path, device="cpu")
    except Exception as exc:  # a corrupt or foreign zip: say so in one line
        raise RlflatError(f"{zip_path}: not a readable SB3 model ({type(exc).__name__}: {exc})") from None
    if data is None or "policy_class" not in data:
        raise RlflatError(f"{zip_path}: no policy class in the SB3 zip")
    if state is None or "policy" not in state:
        raise RlflatError(f"{zip_path}: no policy.pth in the SB3 zip")
    policy_class = data["policy_class"]
    if isinstance(policy_class, type):  # a known recurrent or maskable policy: say why, not just "not on-policy"
        refuse_known(zip_path, f"{policy_class.__module__}.{policy_class.__qualname__}")
    if not (isinstance(policy_class, type) and issubclass(policy_class, ActorCriticPolicy)):
        raise RlflatError(f"{zip_path}: policy {policy_class!r} is not an on-policy actor-critic policy")
    check_representable(zip_path, policy_class)  # recurrent, maskable, ...: refused even when trusted
    kwargs = dict(data.get("policy_kwargs") or {})
    if data.get("use_sde"):
        kwargs["use_sde"] = True
    policy = policy_class(data["observation_space"], data["action_space"], lambda _: 0.0, **kwargs)
    try:
        policy.load_state_dict(dict(state["policy"]))  # type: ignore[call-overload]
    except RuntimeError as exc:
        raise RlflatError(
            f"{zip_path}: policy.pth does not fit the saved policy ({str(exc).splitlines()[0]})"
        ) from None
    return policy


def _spaces(task: TaskSpec) -> tuple[spaces.Space, spaces.Space]:
    env = make_env(task)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def check_spaces(policy: FunctionalPolicy, observation_space: spaces.Space, action_space: spaces.Space) -> None:
    """Fail early, in one line, when a policy is evaluated on a task it was not built for."""
    if policy.observation_space.shape != observation_space.shape or type(policy.action_space) is not type(action_space):
        raise RlflatError(
            f"policy spaces (obs {policy.observation_space}, action {policy.action_space}) do not match the "
            f"task's (obs {observation_space}, action {action_space})"
        )
    if isinstance(action_space, spaces.Discrete) and policy.action_space != action_space:
        raise RlflatError(f"policy action space {policy.action_space} does not match the task's {action_space}")
    if isinstance(action_space, spaces.Box) and policy.action_space.shape != action_space.shape:
        raise RlflatError(
            f"policy action shape {policy.action_space.shape} does not match the task's {action_space.shape} "
            f"(policy {policy.action_space}, task {action_space})"
        )
