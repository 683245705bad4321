"""What batching K policies buys the probe's two kinds of work: Hessian-vector products and perturbed rollouts.

For K copies of a CartPole-shaped policy (4-64-64-2 tanh actor, perturbed so they differ), measured in one run on
one thread, in CPU time (``time.process_time``, so other load on the machine does not count):

* **HVPs** of the PPO surrogate on each policy's own batch of ``--states`` states: K double-backward HVPs with the
  first-order graph reused (rlflat.probe.hvp's route) against one ``vmap`` over the K stacked parameter dicts of
  a forward-over-reverse HVP (``torch.func.jvp`` of ``grad``), per HVP.
* **Perturbed-policy returns**: the return-sharpness stage's rollout (25 parameter sets x 4 episodes) for each
  policy alone, K calls, against one call with all K x 25 sets stacked (what ``rlflat.population.probe`` does).

With ``--runs RUN_DIR ...`` (trained runs of one shape) it also times each default probe measure on those runs,
alone (one ``probe_run`` per run) against together (``rlflat.population.probe.probe_runs``), in CPU seconds of
this process (the probe batch and gradient stages, run for every measure, are included in each row).

    python benchmarks/population_probe_speed.py --k 8
    python benchmarks/population_probe_speed.py --k 8 --runs results/study/ppo-CartPole-s0-* ...
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from stable_baselines3 import PPO
from torch.func import functional_call, grad, jvp, vmap

from rlflat.evaluate import rollout_returns
from rlflat.policy import FunctionalPolicy
from rlflat.tasks import load_task, make_env


def _policies(k: int) -> list[FunctionalPolicy]:
    env = make_env(load_task("CartPole"))
    base = PPO("MlpPolicy", env, seed=0, device="cpu").policy
    out = []
    for i in range(k):
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in base.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=generator))
        out.append(FunctionalPolicy(base))
    env.close()
    return out


def _timed(fn: Callable[[], object], repeat: int) -> float:
    """CPU seconds per call (process time: other load on the machine does not count)."""
    fn()
    start = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - start) / repeat


def hvp_times(policies: list[FunctionalPolicy], states: int, repeat: int) -> tuple[float, float]:
    """Seconds per HVP: K double-backward HVPs in a loop, and one vmapped forward-over-reverse HVP for all K."""
    k = len(policies)
    template = policies[0]
    names = template.actor_names
    generator = torch.Generator().manual_seed(0)
    obs = torch.randn(k, states, 4, generator=generator)
    actions = torch.randint(0, 2, (k, states), generator=generator)
    adv = torch.randn(k, states, generator=generator)
    old = torch.stack([p.log_prob({}, obs[i], actions[i]).detach() for i, p in enumerate(policies)])

    def loss(params: dict[str, torch.Tensor], o: torch.Tensor, a: torch.Tensor, g: torch.Tensor, lp: torch.Tensor):
        full = {f"policy.{n}": v for n, v in {**template.params, **params}.items()}
        logits, _ = functional_call(template._heads, full, (o, "actor"), strict=False)
        logp = torch.distributions.Categorical(logits=logits).log_prob(a)
        return -(torch.exp(logp - lp) * g).mean()

    params = [{n: p.params[n].detach().clone().requires_grad_(True) for n in names} for p in policies]
    graphs = [
        torch.autograd.grad(
            loss(params[i], obs[i], actions[i], adv[i], old[i]), list(params[i].values()), create_graph=True
        )
        for i in range(k)
    ]
    vectors = [[torch.randn_like(t) for t in params[i].values()] for i in range(k)]

    def loop() -> None:
        for i in range(k):
            torch.autograd.grad(graphs[i], list(params[i].values()), vectors[i], retain_graph=True)

    stacked = {n: torch.stack([p.params[n].detach() for p in policies]) for n in names}
    tangents = {n: torch.stack([vectors[i][j] for i in range(k)]) for j, n in enumerate(names)}

    def one(p, t, o, a, g, lp):  # type: ignore[no-untyped-def]
        return jvp(lambda q: grad(loss)(q, o, a, g, lp), (p,), (t,))[1]

    batched = vmap(one)

    def together() -> None:
        batched(stacked, tangents, obs, actions, adv, old)

    return _timed(loop, repeat) / k, _timed(together, repeat) / k


def rollout_times(policies: list[FunctionalPolicy], sets: int, episodes: int) -> tuple[float, float]:
    """Seconds per policy: its perturbed sets rolled out alone, and all K policies' sets in one call."""
    task = load_task("CartPole")
    generator = torch.Generator().manual_seed(1)
    per = [
        {n: v[None] + 0.05 * torch.randn(sets, *v.shape, generator=generator) for n, v in p.params.items()}
        for p in policies
    ]

    def alone() -> None:
        for p, params in zip(policies, per, strict=True):
            rollout_returns(p, task, [{}], episodes, params=params)

    merged = {n: torch.cat([params[n] for params in per]) for n in per[0]}

    def together() -> None:
        rollout_returns(policies[0], task, [{}], episodes, params=merged)

    k = len(policies)
    return _timed(alone, 1) / k, _timed(together, 1) / k


def stage_times(runs: list[Path]) -> None:
    """Per default measure: CPU seconds of probing ``runs`` one by one and all together (copies of the runs)."""
    from rlflat.population.probe import probe_runs
    from rlflat.probe.options import DEFAULT_MEASURES
    from rlflat.probe.run import probe_run

    with tempfile.TemporaryDirectory(prefix="probe_stages-") as tmp:
        copies = [Path(shutil.copytree(run, Path(tmp) / f"{i}-{run.name}")) for i, run in enumerate(runs)]
        total_alone = total_together = 0.0
        for measure in DEFAULT_MEASURES:
            start = time.process_time()
            for run in copies:
                probe_run(run, force=True, progress=False, measures=(measure,))
            alone = time.process_time() - start
            start = time.process_time()
            failed = [r for r in probe_runs(copies, force=True, measures=(measure,)) if isinstance(r, BaseException)]
            together = time.process_time() - start
            if failed:
                raise failed[0]
            total_alone, total_together = total_alone + alone, total_together + together
            print(
                f"probe {measure:>16}: alone {alone:6.1f} s, together {together:6.1f} s CPU ({alone / together:.2f}x)"
            )
        print(f"probe (sum of rows): alone {total_alone:.1f} s, together {total_together:.1f} s "
              f"({total_alone / total_together:.2f}x), {len(runs)} runs")  # fmt: skip


def evaluate_times(runs: list[Path]) -> None:
    """CPU seconds of the default robustness suite on ``runs`` one by one and all together (copies of the runs)."""
    from rlflat.evaluate import evaluate_run
    from rlflat.population.evaluate import evaluate_runs

    with tempfile.TemporaryDirectory(prefix="evaluate_runs-") as tmp:
        copies = [Path(shutil.copytree(run, Path(tmp) / f"{i}-{run.name}")) for i, run in enumerate(runs)]
        start = time.process_time()
        for run in copies:
            evaluate_run(run, force=True, progress=False)
        alone = time.process_time() - start
        start = time.process_time()
        failed = [r for r in evaluate_runs(copies, force=True) if isinstance(r, BaseException)]
        together = time.process_time() - start
        if failed:
            raise failed[0]
        print(f"evaluate (default suite): alone {alone:.1f} s, together {together:.1f} s CPU "
              f"({alone / together:.2f}x), {len(runs)} runs")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8, help="policies (default 8)")
    parser.add_argument("--states", type=int, default=1000, help="states per probe batch (default 1000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed HVP repetitions (default 5)")
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="trained run dirs: time each probe measure")
    parser.add_argument("--evaluate", type=Path, nargs="*", default=[], help="trained run dirs: time the evaluation")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.evaluate:
        evaluate_times(list(args.evaluate))
    if args.runs:
        stage_times(list(args.runs))
    policies = _policies(args.k)
    loop, together = hvp_times(policies, args.states, args.repeat)
    print(f"HVP, K={args.k}, {args.states} states: loop {1e3 * loop:.2f} ms, vmap {1e3 * together:.2f} ms per HVP "
          f"(vmap/loop {together / loop:.2f})")  # fmt: skip
    alone, merged = rollout_times(policies, 25, 4)
    print(f"perturbed returns, K={args.k} x 25 sets x 4 episodes: alone {alone:.2f} s, batched {merged:.2f} s "
          f"per policy ({alone / merged:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
