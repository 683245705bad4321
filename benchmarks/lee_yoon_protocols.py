"""The two evaluation protocols side by side on one Hopper policy: per-setting returns and their paired difference.

``default`` (MuJoCo-consistent: ``mj_setConst`` after a mass change, action noise on the raw Gaussian mean) and
``lee_yoon`` (Lee & Yoon's public evaluation code: ``body_mass`` written alone, noise on the action clipped to the
bounds, then clipped again) on the torso-mass sweep, the action-noise sweep and a few friction settings (where the
protocols agree by construction: a control). Episode j of every setting and both protocols resets with seed + j
and draws the same noise, so the difference is paired; its 95% CI is Student-t over the episodes. Also prints the
evaluation throughput (live env steps per CPU second of this process, ``--workers 1``), the number the study's
cost estimate uses. Usage: ``python benchmarks/lee_yoon_protocols.py RUN_DIR [--episodes 20]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import stats

from rlflat.evaluate.api import resolve_task
from rlflat.evaluate.rollout import _rollout
from rlflat.policy import load_policy

TORSO = [0.5, 0.6, 0.7, 0.8, 0.9, 1.1, 1.2, 1.3, 1.4, 1.5]
NOISE = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]
CONTROLS = [("foot_friction", 0.4), ("foot_friction", 1.6), ("friction_scale", 0.4), ("friction_scale", 1.6)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = resolve_task(args.path)
    policy = load_policy(args.path, task)
    labels = ["nominal", *(f"torso_mass x{f}" for f in TORSO), *(f"action_noise {s}" for s in NOISE)]
    labels += [f"{name} x{f}" for name, f in CONTROLS]
    nominal = {name: p.nominal for name, p in task.parameters.items()}
    settings = [{}, *({"torso_mass": nominal["torso_mass"] * f} for f in TORSO), *({} for _ in NOISE)]
    settings += [{name: nominal[name] * f} for name, f in CONTROLS]
    noise = np.array([0.0] * (1 + len(TORSO)) + NOISE + [0.0] * len(CONTROLS))
    returns, steps, seconds = {}, 0, 0.0
    for protocol in ("default", "lee_yoon"):
        info: dict[str, int] = {}
        start = time.process_time()
        returns[protocol] = _rollout(
            policy, task.with_protocol(protocol), settings, noise, np.zeros(len(settings)), args.episodes,
            seed=args.seed, workers=1, stats=info,
        )[0]  # fmt: skip
        seconds += time.process_time() - start
        steps += info["env_steps"]
    t = stats.t.ppf(0.975, args.episodes - 1)
    print(f"{'setting':<22} {'default':>18} {'lee_yoon':>18} {'lee_yoon - default (95% CI)':>30}")
    for i, label in enumerate(labels):
        a, b = returns["default"][i], returns["lee_yoon"][i]
        d = b - a
        half = t * d.std(ddof=1) / np.sqrt(len(d))
        cells = [f"{x.mean():9.1f} +- {t * x.std(ddof=1) / np.sqrt(len(x)):5.1f}" for x in (a, b)]
        print(
            f"{label:<22} {cells[0]:>18} {cells[1]:>18} {d.mean():+12.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}]"
        )
    mean_length = steps / (2 * len(settings) * args.episodes)
    print(f"\n{steps} live env steps in {seconds:.1f} CPU s: {steps / seconds:.0f} env steps per CPU second "
          f"(mean episode length {mean_length:.0f} steps)")  # fmt: skip


if __name__ == "__main__":
    main()
