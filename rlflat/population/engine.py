"""``train_population``: train K members of one shape and publish each one's run directory as it finishes.

Members the batched engine supports (:func:`rlflat.population.batched.supports`) train together, stacked on a
leading K axis; any other population falls back to one :func:`rlflat.train.train_run` per member, which writes
the same directories. Either way a member whose run directory is already complete is not retrained (a killed
population resumes), and a member that diverges fails alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rlflat.errors import RlflatError
from rlflat.io import read_json
from rlflat.population.members import Member, MemberResult, check_members, population_id

ENGINE = "population"


def train_population(members: Sequence[Member], *, progress: bool = True, device: str = "cpu") -> list[MemberResult]:
    """Train ``members`` (equal :func:`shape_key`) and return one result per member, in order.

    Each member's run directory is what ``python -m rlflat.train`` writes for its config and seed, with
    ``engine: population`` and ``population_id`` in ``config.json`` (outside the hashed part: run ids do not
    change). Members already published are returned as they are.
    """
    from rlflat.train import check_device

    members = list(members)
    check_members(members)
    device = check_device(device)
    pid = population_id(members)
    results: dict[int, MemberResult] = {}
    pending: list[int] = []
    for index, member in enumerate(members):
        done = finished_result(member.run_dir)
        if done is not None:
            results[index] = done
        else:
            pending.append(index)
    if pending:
        todo = [members[i] for i in pending]
        extra = {"engine": ENGINE, "population_id": pid}
        trained = _train(todo, extra, progress=progress, device=device)
        results.update(zip(pending, trained, strict=True))
    return [results[i] for i in range(len(members))]


def _train(members: list[Member], extra: dict[str, str], *, progress: bool, device: str) -> list[MemberResult]:
    from rlflat.population import batched

    if batched.supports(members[0].config, device):
        results = batched.train_batched(members, extra, progress=progress, device=device)
        if results is not None:
            return results
    return [_train_one(m, extra, progress=progress, device=device) for m in members]


def _train_one(member: Member, extra: dict[str, str], *, progress: bool, device: str) -> MemberResult:
    """One member through the single-run path (what train_run publishes on divergence is kept as it is)."""
    from rlflat import algos
    from rlflat.train import train_run

    try:
        train_run(member.config, out=member.run_dir, device=device, progress=progress, force=True, extra=extra)
    except algos.TrainingDiverged as exc:
        return MemberResult(member.run_dir, "failed", str(exc))
    return MemberResult(member.run_dir, "ok", None)


def finished_result(run_dir: Path) -> MemberResult | None:
    """The result of an already published run directory (its metrics.json), or None if it is not complete."""
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        return None
    try:
        metrics = read_json(metrics_path)
    except (OSError, ValueError, RlflatError):
        return None
    status = metrics.get("status") if isinstance(metrics, dict) else None
    if status not in ("ok", "failed"):
        return None
    return MemberResult(run_dir, str(status), metrics.get("error"))
