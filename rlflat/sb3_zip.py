"""Rebuild the policy of an SB3 model zip without unpickling anything.

An SB3 zip's ``data`` member is JSON, but every value JSON cannot hold (the policy class, ``policy_kwargs``, the
spaces, schedules such as ``learning_rate``) is stored as base64 cloudpickle under ``:serialized:``, and SB3's loader
unpickles all of them: a zip can run any code on load. SB3 also writes a readable form beside each pickle (the
class's ``__module__`` and method names, ``policy_kwargs`` items, a ``str`` of each space attribute). This module
reads only those readable fields, checks every class name against an allow-list, never decodes a ``:serialized:``
field, reads the weights with ``torch.load(weights_only=True)`` and requires the state dict to match the rebuilt
architecture key for key and shape for shape. Whatever cannot be rebuilt that way is a one-line error naming the
field and ``--trust`` (SB3's full loader, for files the user trusts).
"""

from __future__ import annotations

import io
import math
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor
from torch import nn

from rlflat.errors import RlflatError
from rlflat.io import load_json_text
from rlflat.memory import mlp_parameters, require_memory
from rlflat.representable import refuse_known

__all__ = ["ACTIVATIONS", "POLICY_CLASSES", "TRUST_HINT", "rebuild_policy", "zip_member_sizes"]

TRUST_HINT = "pass --trust to load it with SB3's full (unpickling) loader if you trust the file"


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


POLICY_CLASSES: dict[str, type[ActorCriticPolicy]] = {_dotted(ActorCriticPolicy): ActorCriticPolicy}
"""Policies rebuilt from readable fields (SB3's ``MlpPolicy`` of PPO/A2C and every rlflat algorithm)."""
ACTIVATIONS: dict[str, type[nn.Module]] = {
    _dotted(cls): cls
    for cls in (nn.Tanh, nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.GELU, nn.SiLU, nn.Softplus, nn.Identity)
}
_EXTRACTORS: dict[str, type] = {_dotted(FlattenExtractor): FlattenExtractor}
_POLICY_BOOLS = ("ortho_init", "full_std", "use_expln", "squash_output", "share_features_extractor", "normalize_images")
_TRAINING_ONLY = ("optimizer_class", "optimizer_kwargs")
"""The optimiser is training state: it changes no forward pass, so it is not rebuilt (SB3's default is used)."""
_MAX_DATA_BYTES = 64 * 2**20
_CLASS_REPR = re.compile(r"^<class '([\w.]+)'>$")
_INIT_REPR = re.compile(r"^<function ([\w.]+)\.__init__ at 0x[0-9a-f]+>$")
_PICKLE_KEYS = (":type:", ":serialized:")


def zip_member_sizes(path: str | Path) -> dict[str, int]:
    """Uncompressed size of each member (read from the zip's directory, before anything is inflated)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {info.filename: info.file_size for info in archive.infolist()}
    except (OSError, zipfile.BadZipFile) as exc:
        raise RlflatError(f"{path}: not a readable SB3 model zip ({type(exc).__name__}: {exc})") from None


def rebuild_policy(path: str | Path, task_spaces: tuple[spaces.Space, spaces.Space] | None = None) -> ActorCriticPolicy:
    """The zip's policy, rebuilt from readable fields and its weights, with nothing unpickled.

    ``task_spaces`` (observation, action) are used when given: the zip's readable space fields must agree with
    them. Without them the spaces are rebuilt from the readable fields alone.
    """
    path = Path(path)
    data, state = _read(path)
    policy_class = _policy_class(path, data.get("policy_class"))
    kwargs = _policy_kwargs(path, data.get("policy_kwargs"))
    use_sde = data.get("use_sde", False)
    if not isinstance(use_sde, bool):
        raise RlflatError(f"{path}: use_sde must be true or false, got {use_sde!r}; {TRUST_HINT}")
    if use_sde:
        kwargs["use_sde"] = True
    observation_space = _space(path, "observation_space", data.get("observation_space"), task_spaces, 0)
    action_space = _space(path, "action_space", data.get("action_space"), task_spaces, 1)
    _check_size(path, kwargs.get("net_arch"), observation_space, state)
    try:
        policy = policy_class(observation_space, action_space, lambda _: 0.0, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise RlflatError(f"{path}: cannot build the policy from its readable fields ({exc}); {TRUST_HINT}") from None
    _check_state(path, policy, state)
    policy.load_state_dict(state)
    return policy


def _check_size(path: Path, net_arch: Any, observation_space: spaces.Space, state: Mapping[str, torch.Tensor]) -> None:
    """Refuse, before building, an architecture larger than the weights the zip holds (a 4 KB zip naming
    ``net_arch: [200000, 200000]`` would allocate 160 GB and only then fail to load), and one that cannot fit."""
    inputs = spaces.flatdim(observation_space) if observation_space is not None else 0
    needed = mlp_parameters(net_arch, inputs)
    held = sum(t.numel() for t in state.values())
    if needed > held:
        raise RlflatError(
            f"{path}: net_arch {net_arch} needs {needed:,} weights but policy.pth holds {held:,}; the readable fields "
            "do not describe these weights"
        )
    require_memory(3 * 4 * needed, f"building {path}'s policy (net_arch {net_arch})")


def check_policy_values(policy: ActorCriticPolicy, where: str) -> None:
    """Refuse weights that are not finite, or finite but so large that the policy's outputs overflow (``1e38``
    weights give infinite logits): one line naming the first bad tensor, instead of a torch ValueError later."""
    for name, tensor in policy.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise RlflatError(f"{where}: weight {name!r} holds NaN or infinite values; the policy cannot be evaluated")
    space = policy.observation_space
    if isinstance(space, spaces.Box):  # zero, +1 and -1 (within the bounds): overflow shows on any input
        sample = np.stack([np.clip(np.full(space.shape, c), space.low, space.high) for c in (0.0, 1.0, -1.0)])
    elif isinstance(space, spaces.Discrete):
        sample = np.array([int(space.start)])
    else:
        return
    try:
        obs, _ = policy.obs_to_tensor(sample.astype(space.dtype))
        with torch.no_grad():
            distribution = policy.get_distribution(obs).distribution
            values = policy.predict_values(obs)
            outputs = [getattr(distribution, key) for key in ("logits", "loc", "scale") if hasattr(distribution, key)]
    except (ValueError, RuntimeError):  # torch's distributions refuse non-finite parameters
        outputs, values = [torch.tensor(math.nan)], torch.tensor(math.nan)
    if not all(bool(torch.isfinite(output).all()) for output in [*outputs, values]):
        largest = max(float(t.abs().max()) for t in policy.state_dict().values() if t.numel() and t.is_floating_point())
        raise RlflatError(
            f"{where}: the policy's outputs overflow to infinity or NaN (largest |weight| {largest:.3g}); "
            "these weights cannot be evaluated"
        )


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``data`` parsed as JSON (nothing decoded) and ``policy.pth`` read with ``weights_only=True``."""
    sizes = zip_member_sizes(path)
    for member in ("data", "policy.pth"):
        if member not in sizes:
            raise RlflatError(f"{path}: no {member!r} member, so not an SB3 model zip (members: {sorted(sizes)})")
    if sizes["data"] > _MAX_DATA_BYTES:
        raise RlflatError(f"{path}: its 'data' member is {sizes['data']} bytes, too large for SB3 model metadata")
    require_memory(2 * sizes["policy.pth"], f"reading {path}'s policy.pth ({sizes['policy.pth']} bytes)")
    try:
        with zipfile.ZipFile(path) as archive:
            data = load_json_text(archive.read("data").decode())
            weights = archive.read("policy.pth")
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, ValueError, EOFError, RecursionError) as exc:
        raise RlflatError(f"{path}: not a readable SB3 model ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise RlflatError(f"{path}: 'data' is not a JSON object")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol before failing: one line only
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or non-tensor policy.pth: one line, not torch's advice
        first = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
        raise RlflatError(f"{path}: policy.pth is not a readable tensor file ({type(exc).__name__}: {first})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RlflatError(f"{path}: policy.pth does not hold a state dict of tensors")
    return data, dict(state)


def _readable(field: Any) -> dict[str, Any] | None:
    """The readable items SB3 wrote beside a pickle (``None`` if the field is plain JSON, not a pickle)."""
    if isinstance(field, dict) and ":serialized:" in field:
        return {k: v for k, v in field.items() if k not in _PICKLE_KEYS}
    return None


def _policy_class(path: Path, field: Any) -> type[ActorCriticPolicy]:
    readable = _readable(field)
    module = readable.get("__module__") if readable else None
    init = _INIT_REPR.match(str(readable.get("__init__", ""))) if readable else None
    name = f"{module}.{init.group(1)}" if module and init else None
    if name is None:
        raise RlflatError(f"{path}: policy_class cannot be identified from its readable fields; {TRUST_HINT}")
    if name not in POLICY_CLASSES:
        refuse_known(path, name)  # no --trust hint where trusting would not help
        raise RlflatError(
            f"{path}: policy_class {name} is not an on-policy actor-critic policy rlflat rebuilds safely "
            f"(allowed: {', '.join(POLICY_CLASSES)}); {TRUST_HINT}"
        )
    return POLICY_CLASSES[name]


def _policy_kwargs(path: Path, field: Any) -> dict[str, Any]:
    """``policy_kwargs`` from plain JSON or the readable items beside its pickle, every value allow-listed."""
    if field is None:
        return {}
    readable = _readable(field)
    items = readable if readable is not None else field
    if not isinstance(items, dict):
        raise RlflatError(f"{path}: policy_kwargs is not a mapping; {TRUST_HINT}")
    kwargs: dict[str, Any] = {}
    for key, value in items.items():
        where = f"{path}: policy_kwargs.{key}"
        if key in _TRAINING_ONLY:
            continue
        if key == "net_arch":
            kwargs[key] = _net_arch(where, value)
        elif key == "activation_fn":
            kwargs[key] = _allowed_class(where, value, ACTIVATIONS)
        elif key == "features_extractor_class":
            kwargs[key] = _allowed_class(where, value, _EXTRACTORS)
        elif key == "features_extractor_kwargs":
            if value not in (None, {}):
                raise RlflatError(f"{where} = {value!r} is not rebuilt safely; {TRUST_HINT}")
        elif key in _POLICY_BOOLS:
            if not isinstance(value, bool):
                raise RlflatError(f"{where} must be true or false, got {value!r}; {TRUST_HINT}")
            kwargs[key] = value
        elif key == "log_std_init":
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise RlflatError(f"{where} must be a finite number, got {value!r}; {TRUST_HINT}")
            kwargs[key] = float(value)
        else:
            raise RlflatError(f"{where} is not a key rlflat rebuilds safely; {TRUST_HINT}")
    return kwargs


def _net_arch(where: str, value: Any) -> list[int] | dict[str, list[int]] | None:
    def sizes(layers: Any) -> bool:
        return isinstance(layers, list) and all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in layers
        )

    if value is None or sizes(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, dict) and set(value) <= {"pi", "vf"} and all(sizes(v) for v in value.values()):
        return dict(value)
    raise RlflatError(f"{where} = {value!r} is not a list of layer sizes or {{pi, vf}} lists; {TRUST_HINT}")


def _allowed_class(where: str, value: Any, allowed: Mapping[str, type]) -> type:
    match = _CLASS_REPR.match(value) if isinstance(value, str) else None
    if match is None or match.group(1) not in allowed:
        raise RlflatError(f"{where} = {value!r} is not allowed (allowed: {', '.join(allowed)}); {TRUST_HINT}")
    return allowed[match.group(1)]


def _space(
    path: Path,
    name: str,
    field: Any,
    task_spaces: tuple[spaces.Space, spaces.Space] | None,
    index: int,
) -> spaces.Space:
    """A Box or Discrete space from its readable fields; with a task, the task's space after they agree."""
    readable = _readable(field)
    kind = str(field.get(":type:", "")) if isinstance(field, dict) else ""
    if readable is None or kind not in (
        "<class 'gymnasium.spaces.box.Box'>",
        "<class 'gymnasium.spaces.discrete.Discrete'>",
    ):
        raise RlflatError(f"{path}: {name} is not a readable Box or Discrete space ({kind or 'missing'}); {TRUST_HINT}")
    where = f"{path}: {name}"
    if kind.endswith("Discrete'>"):
        rebuilt: spaces.Space | None = _discrete(where, readable)
    else:
        rebuilt = _box(where, readable)
    if task_spaces is None:
        if rebuilt is None:
            raise RlflatError(f"{where} bounds are truncated in the zip; give the task, or {TRUST_HINT}")
        return rebuilt
    task_space = task_spaces[index]
    _check_agrees(where, readable, rebuilt, task_space)
    return task_space


def _discrete(where: str, readable: dict[str, Any]) -> spaces.Discrete:
    try:
        n, start = int(str(readable["n"])), int(str(readable.get("start", "0")))
    except (KeyError, ValueError):
        raise RlflatError(f"{where}: n/start are not readable integers; {TRUST_HINT}") from None
    if n < 1:
        raise RlflatError(f"{where}: n must be >= 1, got {n}; {TRUST_HINT}")
    return spaces.Discrete(n, start=start)


def _box(where: str, readable: dict[str, Any]) -> spaces.Box | None:
    """The Box, or ``None`` when its bounds were truncated (numpy prints ``...`` for large arrays)."""
    shape, dtype = readable.get("_shape"), readable.get("dtype")
    if not (isinstance(shape, list) and all(isinstance(n, int) and n > 0 for n in shape)) or dtype not in (
        "float32",
        "float64",
    ):
        raise RlflatError(f"{where}: shape {shape!r} / dtype {dtype!r} not a float Box; {TRUST_HINT}")
    low, high = (_array_text(readable.get(k), tuple(shape)) for k in ("low", "high"))
    if low is None or high is None:
        return None
    return spaces.Box(low.astype(dtype), high.astype(dtype), dtype=np.dtype(dtype))


def _array_text(text: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """Parse numpy's ``str`` of an array (``[-1. -inf 0.4]``); ``None`` if truncated or malformed."""
    if not isinstance(text, str) or "..." in text:
        return None
    try:
        values = [float(token) for token in text.replace("[", " ").replace("]", " ").split()]
    except ValueError:
        return None
    return np.array(values).reshape(shape) if len(values) == math.prod(shape) else None


def _check_agrees(where: str, readable: dict[str, Any], rebuilt: spaces.Space | None, task: spaces.Space) -> None:
    """The zip's readable space must describe the task's: kind, shape, n, and bounds where readable."""
    if isinstance(task, spaces.Discrete):
        if not isinstance(rebuilt, spaces.Discrete) or (rebuilt.n, rebuilt.start) != (task.n, task.start):
            raise RlflatError(f"{where} {rebuilt} and the task's {task} do not match")
        return
    shape = tuple(readable.get("_shape", ()))
    if not isinstance(task, spaces.Box) or shape != task.shape or readable.get("dtype") != str(task.dtype):
        raise RlflatError(f"{where} (shape {shape}, dtype {readable.get('dtype')}) and the task's {task} do not match")
    if isinstance(rebuilt, spaces.Box):
        for bound in ("low", "high"):
            zipped, expected = getattr(rebuilt, bound), getattr(task, bound)
            if not np.allclose(zipped, expected, rtol=1e-6, atol=0.0):
                raise RlflatError(f"{where}.{bound} {zipped} and the task's {expected} do not match")


def _check_state(path: Path, policy: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Every weight of the rebuilt architecture present with its shape, and nothing else."""
    expected = {name: tuple(t.shape) for name, t in policy.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = [f"{n} {found[n]} != {expected[n]}" for n in sorted(set(expected) & set(found)) if found[n] != expected[n]]
    if missing or extra or wrong:
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {extra[:3]}" if extra else "",
                f"shape {wrong[0]}" if wrong else "",
            )
            if part
        )
        raise RlflatError(f"{path}: policy.pth does not match the architecture in its readable fields ({detail})")
