"""Batched, per-row-parameterised simulators of Gymnasium's classic-control tasks.

One simulator steps thousands of episodes at once, each row with its own dynamics, so the robustness
evaluator can sweep a parameter grid without a Python loop over envs. Row ``i`` reproduces
``gym.make(env_id)`` (attributes set as Python floats) reset with ``seeds[i]``: same observations, rewards,
``terminated`` and ``truncated`` (TimeLimit included). There is no autoreset: finished rows are frozen.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy.typing as npt

from rlflat.errors import bad_choice
from rlflat.tasks.sims import acrobot, cartpole, mountain_car, pendulum
from rlflat.tasks.sims.acrobot import AcrobotSim
from rlflat.tasks.sims.base import BatchedSimulator
from rlflat.tasks.sims.cartpole import CartPoleSim
from rlflat.tasks.sims.mountain_car import MountainCarContinuousSim, MountainCarSim
from rlflat.tasks.sims.pendulum import PendulumSim

SIMULATORS: dict[str, type[BatchedSimulator]] = {
    CartPoleSim.env_id: CartPoleSim,
    AcrobotSim.env_id: AcrobotSim,
    PendulumSim.env_id: PendulumSim,
    MountainCarSim.env_id: MountainCarSim,
    MountainCarContinuousSim.env_id: MountainCarContinuousSim,
}

PARAMETER_DEFAULTS: dict[str, Mapping[str, float]] = {
    CartPoleSim.env_id: cartpole.DEFAULTS,
    AcrobotSim.env_id: acrobot.DEFAULTS,
    PendulumSim.env_id: pendulum.DEFAULTS,
    MountainCarSim.env_id: mountain_car.CAR_DEFAULTS,
    MountainCarContinuousSim.env_id: mountain_car.CONTINUOUS_DEFAULTS,
}
"""Per env id: every parameter the simulator takes (Gymnasium attribute name) and its default, Gymnasium's own."""


def make_simulator(env_id: str, params: Mapping[str, npt.ArrayLike], num_rows: int) -> BatchedSimulator:
    """Build the batched simulator of ``env_id`` with per-row ``params`` (Gymnasium attribute -> array)."""
    if env_id not in SIMULATORS:
        raise bad_choice("env id", env_id, SIMULATORS)
    simulator: BatchedSimulator = SIMULATORS[env_id](num_rows, params)
    return simulator


__all__ = [
    "PARAMETER_DEFAULTS",
    "SIMULATORS",
    "AcrobotSim",
    "BatchedSimulator",
    "CartPoleSim",
    "MountainCarContinuousSim",
    "MountainCarSim",
    "PendulumSim",
    "make_simulator",
]
