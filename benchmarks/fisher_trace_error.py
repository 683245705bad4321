"""How far is a Hutchinson Fisher trace from the exact one, measured against its own SE? (issue 20 item 4)

Trains a CartPole PPO policy with the spec's hyperparameters (the committed studies' models are not in the repository), draws probe batches
and, per batch, compares the exact trace (:func:`rlflat.probe.fisher.exact_fisher_traces`) with a 30-probe
Hutchinson estimate of the same Fisher (the probe's former estimator): the error in units of its reported SE, the
top eigenvalue's share of the trace (a nearly rank-one Fisher makes Rademacher probes noisy), and how often the
estimate fell below lambda_max. Also times the exact route against the 30 HVPs.

    OMP_NUM_THREADS=1 python benchmarks/fisher_trace_error.py [--steps 30000] [--batches 8] [--probes 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rlflat.policy import load_policy
from rlflat.probe.batch import collect_batch
from rlflat.probe.fisher import exact_fisher_traces, top_eigenvalue
from rlflat.probe.hvp import HessianOperator
from rlflat.probe.losses import make_loss, scope_params
from rlflat.probe.spectrum import hutchinson_trace
from rlflat.tasks import load_task
from rlflat.train import main as train_main


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--steps", type=int, default=30_000)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--probes", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=1024)
    args = ap.parse_args()
    torch.set_num_threads(1)
    task = load_task("CartPole")
    with tempfile.TemporaryDirectory() as tmp:
        train_main(
            ["ppo", "CartPole", "--steps", str(args.steps), "--seed", "0", "--no-progress", "--out", f"{tmp}/run"]
        )
        policy = load_policy(Path(tmp) / "run")
    params = scope_params(policy, "actor")
    rows = []
    for b in range(args.batches):
        batch = collect_batch(policy, task, args.batch_size, seed=100 + b)
        op = HessianOperator(make_loss(policy, batch, "kl"), params)
        start = time.perf_counter()
        exact, _ = exact_fisher_traces(policy, policy.preprocess(batch.observations), params)
        t_exact = time.perf_counter() - start
        start = time.perf_counter()
        hutch = hutchinson_trace(op, args.probes, seed=b)
        t_hutch = time.perf_counter() - start
        lam = top_eigenvalue(op, seed=b)
        rows.append((exact, hutch.estimate, hutch.stderr, lam, t_exact, t_hutch))
        print(f"batch {b}: exact {exact:.3f}  hutchinson {hutch.estimate:.3f} +- {hutch.stderr:.3f} "
              f"(error {(hutch.estimate - exact) / hutch.stderr:+.2f} SE)  lambda_max {lam:.3f} "
              f"({lam / exact:.1%} of the trace)  exact {t_exact:.2f} s vs {args.probes} HVPs {t_hutch:.2f} s")  # fmt: skip
    a = np.array(rows)
    z = (a[:, 1] - a[:, 0]) / a[:, 2]
    pooled_se = a[:, 1].std(ddof=1) / np.sqrt(len(a))
    print(f"over {len(a)} batches: |error| / SE median {np.median(np.abs(z)):.2f}, within 1.96 SE "
          f"{np.mean(np.abs(z) <= 1.96):.0%}; Hutchinson below lambda_max in {int((a[:, 1] < a[:, 3]).sum())}; "
          f"lambda_max / trace median {np.median(a[:, 3] / a[:, 0]):.3f}")  # fmt: skip
    print(f"pooled over batches: exact {a[:, 0].mean():.3f} +- {a[:, 0].std(ddof=1) / np.sqrt(len(a)):.3f} (state "
          f"sampling only), Hutchinson {a[:, 1].mean():.3f} +- {pooled_se:.3f}; time exact / Hutchinson "
          f"{a[:, 4].sum() / a[:, 5].sum():.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
