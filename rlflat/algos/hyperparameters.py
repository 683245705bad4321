"""Hyperparameters: which keys an algorithm takes, their validation, and their resolution for a run.

Values come from the task spec's block for the base (``envs/*.yaml``), then the rule's defaults, then ``--set``
overrides; every key is validated here so a typo fails before training, with the bad key and the valid ones in
the message.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch as th
import yaml
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor

from rlflat.algos.base import FlatOnPolicyAlgorithm
from rlflat.algos.dropout import check_rate
from rlflat.algos.names import BASES, parse_algorithm
from rlflat.algos.rules import RULE_DEFAULTS, RULE_KEYS, SAM_SCOPES
from rlflat.algos.schedules import normalize_schedule, parse_schedule
from rlflat.errors import RlflatError, bad_choice
from rlflat.tasks import TaskSpec

RUN_KEYS = ("total_timesteps", "n_envs", "normalize", "track_sharpness")
"""Keys train.py consumes (vec env, learn() and its observers); build_model ignores them. ``track_sharpness``
(measure sharpness every N updates) changes no parameter, but it changes what the run directory holds."""
FLATNESS_KEYS = ("weight_decay", "swa_start", "dropout", "critic_dropout")
"""Flatness knobs valid with every rule."""
_NOT_USER_KEYS = {
    "self",
    "policy",
    "env",
    "seed",
    "device",
    "_init_setup_model",
    "update_rule",
    "rollout_buffer_class",
    "rollout_buffer_kwargs",
    "supported_action_spaces",
    "monitor_wrapper",
    # logging only: they change no parameter, so they are not hyperparameters (and not in the run id)
    "tensorboard_log",
    "verbose",
    "stats_window_size",
}
_ACTIVATIONS: dict[str, type[th.nn.Module]] = {
    "tanh": th.nn.Tanh,
    "relu": th.nn.ReLU,
    "elu": th.nn.ELU,
    "leaky_relu": th.nn.LeakyReLU,
}
_SCHEDULE_KEYS = ("learning_rate", "clip_range", "clip_range_vf")
_POSITIVE_INTS = {"n_steps", "batch_size", "n_epochs", "total_timesteps", "n_envs", "track_sharpness"}
_INTS = {"sde_sample_freq"}
_BOOLS = {"use_sde", "normalize_advantage", "normalize"}
_UNIT_FLOATS = {"gamma", "gae_lambda"}
_NONNEG_FLOATS = {"rho", "weight_decay", "vf_coef"}
_POSITIVE_FLOATS = {"max_grad_norm", "asam_eta"}
_FLOATS = {"ent_coef"}
_OPTIONAL_POSITIVE_FLOATS = {"target_kl"}
_DROPOUT_RATES = {"dropout", "critic_dropout"}
"""Dropout probabilities 0 <= p < 1 of the actor's and the critic's hidden layers (:mod:`rlflat.algos.dropout`)."""
_OTHER_CHECKED = {"swa_start", "sam_scope", "policy_kwargs"} | _DROPOUT_RATES
_CHECKED_KEYS = (
    set(_SCHEDULE_KEYS)
    | _POSITIVE_INTS
    | _INTS
    | _BOOLS
    | _UNIT_FLOATS
    | _NONNEG_FLOATS
    | _POSITIVE_FLOATS
    | _FLOATS
    | _OPTIONAL_POSITIVE_FLOATS
    | _OTHER_CHECKED
)
"""Keys whose values :func:`_validate_value` checks; a constructor argument outside it is not user-settable."""
_POLICY_BOOLS = {"ortho_init", "full_std", "use_expln", "squash_output", "share_features_extractor", "normalize_images"}
_POLICY_CLASSES: dict[str, type] = {
    "optimizer_class": th.optim.Optimizer,
    "features_extractor_class": BaseFeaturesExtractor,
}


def _constructor_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """Keyword arguments the class accepts, following ``**kwargs`` up to the SB3 class that takes them.

    A subclass's parameter (and its default) wins over the same name further up the MRO.
    """
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in _NOT_USER_KEYS:
                found.setdefault(p.name, p)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return found


def valid_keys(algo: str) -> list[str]:
    """Every hyperparameter key ``algo`` accepts: SB3 constructor args, rlflat knobs, run keys.

    Only keys whose values rlflat checks are listed: an SB3 argument rlflat cannot validate is not settable.
    """
    base, rule = parse_algorithm(algo)
    rule_keys = {k for keys in RULE_KEYS.values() for k in keys}
    keys = (set(_constructor_parameters(BASES[base])) - rule_keys) | set(RULE_KEYS[rule]) | set(FLATNESS_KEYS)
    return sorted((keys | set(RUN_KEYS)) & _CHECKED_KEYS)


def _number(key: str, value: Any) -> float:
    """A finite number; YAML 1.1 reads ``3e-3`` as a string, so numeric strings are accepted."""
    if isinstance(value, bool):
        raise RlflatError(f"{key} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RlflatError(f"{key} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise RlflatError(f"{key} must be finite, got {value!r}")
    return number


def _integer(key: str, value: Any) -> int:
    number = _number(key, value)
    if number != int(number):
        raise RlflatError(f"{key} must be an integer, got {value!r}")
    return int(number)


def _check_policy_kwargs(value: Any) -> dict[str, Any]:
    """Every key an ``ActorCriticPolicy`` takes, each value checked (classes only from Python, not from YAML)."""
    if not isinstance(value, dict):
        raise RlflatError(f"policy_kwargs must be a mapping, got {value!r}")
    valid = set(inspect.signature(ActorCriticPolicy.__init__).parameters) - {
        "self",
        "observation_space",
        "action_space",
        "lr_schedule",
        "use_sde",
    }
    for key, item in value.items():
        if key not in valid:
            raise bad_choice("policy_kwargs key", key, sorted(valid))
        _check_policy_value(f"policy_kwargs.{key}", key, item)
    _check_optimizer(value)
    _check_features_extractor(value)
    return dict(value)


def _check_policy_value(name: str, key: str, value: Any) -> None:
    if key == "net_arch":
        _check_net_arch(value)
    elif key == "activation_fn":
        if isinstance(value, str):
            if value not in _ACTIVATIONS:
                raise bad_choice(name, value, _ACTIVATIONS)
        elif not (isinstance(value, type) and issubclass(value, th.nn.Module)):
            raise RlflatError(
                f"{name} must be one of {', '.join(_ACTIVATIONS)} (or a torch.nn.Module class), got {value!r}"
            )
    elif key in _POLICY_BOOLS:
        if not isinstance(value, bool):
            raise RlflatError(f"{name} must be true or false, got {value!r}")
    elif key == "log_std_init":
        _number(name, value)
    elif key in _POLICY_CLASSES:
        parent = _POLICY_CLASSES[key]
        if not (isinstance(value, type) and issubclass(value, parent)):
            raise RlflatError(f"{name} must be a subclass of {parent.__module__}.{parent.__qualname__}, got {value!r}")
    elif key in ("optimizer_kwargs", "features_extractor_kwargs"):
        if value is not None and not (isinstance(value, dict) and all(isinstance(k, str) for k in value)):
            raise RlflatError(f"{name} must be a mapping of argument names to values, got {value!r}")
    else:  # a key SB3 added that rlflat does not know how to check
        raise RlflatError(f"{name} cannot be set: rlflat has no check for its value")


def _check_net_arch(net_arch: Any) -> None:
    if net_arch is None:
        return
    if isinstance(net_arch, dict) and not set(net_arch) <= {"pi", "vf"}:
        raise RlflatError(f"policy_kwargs.net_arch may only have keys pi and vf, got {net_arch!r}")
    layers = list(net_arch.values()) if isinstance(net_arch, dict) else [net_arch]
    for sizes in layers:
        if not isinstance(sizes, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes
        ):
            raise RlflatError(f"policy_kwargs.net_arch must list positive layer sizes, got {net_arch!r}")


def _check_optimizer(policy_kwargs: Mapping[str, Any]) -> None:
    """Build the optimizer once on a dummy parameter, so a bad optimizer_kwargs fails now, in one line."""
    optimizer_class = policy_kwargs.get("optimizer_class", th.optim.Adam)
    kwargs = policy_kwargs.get("optimizer_kwargs") or {}
    if "lr" in kwargs:  # SB3 passes lr itself (from the schedule): a second one is a TypeError at build time
        raise RlflatError(f"policy_kwargs.optimizer_kwargs may not set lr (got {kwargs['lr']!r}); set learning_rate")
    try:
        optimizer_class([th.nn.Parameter(th.zeros(1))], **{"lr": 1e-3, **kwargs})
    except (TypeError, ValueError, RuntimeError) as exc:
        raise RlflatError(
            f"policy_kwargs.optimizer_kwargs {kwargs!r} rejected by {optimizer_class.__name__}: {exc}"
        ) from None


def _check_features_extractor(policy_kwargs: Mapping[str, Any]) -> None:
    """The extractor's kwargs must be arguments of its constructor (the observation space is SB3's to give)."""
    extractor = policy_kwargs.get("features_extractor_class", FlattenExtractor)
    kwargs = policy_kwargs.get("features_extractor_kwargs") or {}
    params = inspect.signature(extractor.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    accepted = set(params) - {"self", "observation_space"}
    for key in kwargs:
        if key not in accepted:
            raise bad_choice(
                f"policy_kwargs.features_extractor_kwargs key for {extractor.__name__}", key, sorted(accepted)
            )


def _validate_value(key: str, value: Any) -> Any:
    """Check one hyperparameter's value; return it in canonical (JSON-friendly) form."""
    if key in _SCHEDULE_KEYS:
        if key == "clip_range_vf" and value is None:
            return None
        return normalize_schedule(key, value)
    if key in _POSITIVE_INTS or key in _INTS:
        integer = _integer(key, value)
        if key in _POSITIVE_INTS and integer <= 0:
            raise RlflatError(f"{key} must be a positive integer, got {value!r}")
        return integer
    if key in _BOOLS:
        if not isinstance(value, bool):
            raise RlflatError(f"{key} must be true or false, got {value!r}")
        return value
    if key in _OPTIONAL_POSITIVE_FLOATS or key == "swa_start":
        if value is None:
            return None
        number = _number(key, value)
        if key == "swa_start" and not 0.0 <= number < 1.0:
            raise RlflatError(f"swa_start must be a fraction 0 <= swa_start < 1 (or null), got {value!r}")
        if key != "swa_start" and number <= 0:
            raise RlflatError(f"{key} must be > 0 (or null), got {value!r}")
        return number
    if key in _UNIT_FLOATS | _NONNEG_FLOATS | _POSITIVE_FLOATS | _FLOATS:
        number = _number(key, value)
        if key in _UNIT_FLOATS and not 0.0 <= number <= 1.0:
            raise RlflatError(f"{key} must lie in [0, 1], got {value!r}")
        if key in _NONNEG_FLOATS and number < 0:
            raise RlflatError(f"{key} must be >= 0, got {value!r}")
        if key in _POSITIVE_FLOATS and number <= 0:
            raise RlflatError(f"{key} must be > 0, got {value!r}")
        return number
    if key in _DROPOUT_RATES:
        return check_rate(key, value)
    if key == "sam_scope":
        if value not in SAM_SCOPES:
            raise bad_choice("sam_scope", value, SAM_SCOPES)
        return value
    if key == "policy_kwargs":
        return _check_policy_kwargs(value)
    raise RlflatError(f"{key} cannot be set: rlflat has no check for its value")


def validate_hyperparameters(algo: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """Every key known to ``algo`` and every value well-formed; returns the canonical dict."""
    valid = valid_keys(algo)
    checked: dict[str, Any] = {}
    for key, value in hyperparameters.items():
        if key not in valid:
            raise bad_choice(f"hyperparameter for {algo}", key, valid)
        checked[key] = _validate_value(key, value)
    if parse_algorithm(algo)[1] == "lysam" and checked.get("rho") == 0:
        raise RlflatError(f"rho must be > 0 for {algo} (its finite-difference step), got {hyperparameters['rho']!r}")
    return checked


def resolve_hyperparameters(algo: str, task: TaskSpec, overrides: dict[str, Any]) -> dict[str, Any]:
    """Task spec's values for the base, then the rule's defaults, then overrides; validated.

    ``policy_kwargs`` overrides merge into the spec's (one level) so ``--set policy_kwargs={net_arch: [32]}``
    keeps the spec's ``log_std_init``. Run keys default to ``n_envs=1``, ``normalize=false``;
    ``total_timesteps`` must come from the spec or an override.
    """
    base, rule = parse_algorithm(algo)
    merged: dict[str, Any] = {"n_envs": 1, "normalize": False}
    merged.update(task.hyperparameters.get(base, {}))
    merged.update(RULE_DEFAULTS[rule])
    resolved = validate_hyperparameters(algo, merge_overrides(merged, overrides))
    if "total_timesteps" not in resolved:
        raise RlflatError(f"total_timesteps is not set for {algo} on {task.alias}; pass --set total_timesteps=N")
    return resolved


def merge_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``overrides``; where both values are mappings (``policy_kwargs``) they merge one
    level deep, so an override adds or replaces keys inside the mapping instead of dropping the others."""
    merged = dict(base)
    for key, value in overrides.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            merged[key] = {**current, **value}
        else:
            merged[key] = value
    return merged


def parse_overrides(texts: Iterable[str]) -> dict[str, Any]:
    """Repeated ``--set key=value`` in order: a later value wins, and mapping values merge (:func:`merge_overrides`)."""
    overrides: dict[str, Any] = {}
    for text in texts:
        key, value = parse_override(text)
        overrides = merge_overrides(overrides, {key: value})
    return overrides


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``; the value is YAML (``rho=0.1``, ``policy_kwargs={net_arch: [32]}``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not key.isidentifier():
        raise RlflatError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise RlflatError(f"--set {key}: value {raw!r} is not valid YAML ({problem})") from None
    return key, value


def constructor_kwargs(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters (canonical form) -> what the SB3 constructor takes: schedules, activation classes."""
    kwargs = {k: v for k, v in hyperparameters.items() if k not in RUN_KEYS}
    for key in _SCHEDULE_KEYS:
        if kwargs.get(key) is not None:
            kwargs[key] = parse_schedule(key, kwargs[key])
    policy_kwargs = kwargs.get("policy_kwargs")
    if policy_kwargs:
        policy_kwargs = dict(policy_kwargs)
        if isinstance(policy_kwargs.get("activation_fn"), str):
            policy_kwargs["activation_fn"] = _ACTIVATIONS[policy_kwargs["activation_fn"]]
        kwargs["policy_kwargs"] = policy_kwargs
    return kwargs


def effective_hyperparameters(model: FlatOnPolicyAlgorithm, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """Every value ``model`` trains with, JSON-friendly: what the user could set, defaults included.

    The constructor's defaults (read from its signature) under the resolved ``hyperparameters``; then the
    policy's own constructor arguments (net_arch, activation_fn, ortho_init, ...) and the optimizer actually
    built (its class and every default but ``lr``, which the ``learning_rate`` schedule sets each update).
    Values that are classes are written as ``module.QualName``.
    """
    keys = set(valid_keys(model.rlflat_algorithm))
    defaults = _constructor_parameters(type(model))
    effective: dict[str, Any] = {
        k: p.default for k, p in defaults.items() if k in keys and p.default is not inspect.Parameter.empty
    }
    effective["track_sharpness"] = None  # off unless set (not a resolved default: it would change every run id)
    effective.update(hyperparameters)
    for key in RULE_KEYS[model.update_rule]:
        effective[key] = getattr(model, key)  # the rule's value after its defaults were filled in
    skip = {"observation_space", "action_space", "lr_schedule", "use_sde"}
    policy_kwargs = {k: v for k, v in model.policy._get_constructor_parameters().items() if k not in skip}
    optimizer = model.policy.optimizer
    policy_kwargs["optimizer_class"] = type(optimizer)
    policy_kwargs["optimizer_kwargs"] = {k: v for k, v in optimizer.defaults.items() if k != "lr"}
    effective["policy_kwargs"] = policy_kwargs
    return {k: _jsonable(effective[k]) for k in sorted(effective)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)
