"""The preregistration as Markdown: generated from the YAML, so the document people read is the file the code reads."""

from __future__ import annotations

import math
from typing import Any

from rlflat.study.preregistration import LoadedPreregistration, Preregistration, TaskDesign

__all__ = ["design_table", "render_markdown"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "n/a"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(_fmt(c).replace("|", "\\|") for c in cells) + " |"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [_row(list(header)), "|" + "|".join(" --- " for _ in header) + "|", *(_row(r) for r in rows), ""]


def _configurations(task: TaskDesign) -> int:
    radii = len(task.levels.get("rho", []))
    shared = math.prod(len(v) for k, v in task.levels.items() if k != "rho")
    plain = sum(1 for a in task.algos if not a.endswith(("_sam", "_asam")))
    return shared * (plain + radii)


def design_table(prereg: Preregistration) -> list[list[Any]]:
    """One row per task: algorithms, suite, threshold, registered levels, configurations, runs."""
    seeds = len(prereg.design.seeds)
    rows = []
    for t in prereg.design.tasks:
        levels = "; ".join(f"{k}: {_fmt(v)}" for k, v in t.levels.items())
        n = _configurations(t)
        rows.append([t.task, t.algos, t.suite, t.solved_threshold, levels, n, n * seeds, t.config])
    return rows


def render_markdown(loaded: LoadedPreregistration) -> str:
    """The whole preregistration as a Markdown document (``preregistration.md``)."""
    p = loaded.prereg
    shown = "/".join(loaded.path.resolve().parts[-3:])  # studies/<name>/preregistration.yaml wherever it is read
    out = [
        f"# Preregistration: {p.title}",
        "",
        f"*Registered {p.registered.isoformat()} ({p.status}). Generated from `{loaded.path.name}` by "
        f"`python -m rlflat.study render {shown}`; do not edit by hand. Body sha256 "
        f"`{loaded.body_hash}` (every key but `amendments`; the sweep locks it at a study's first run).*",
        "",
        "## Question",
        "",
        p.question,
        "",
        "## Hypotheses",
        "",
    ]
    out += _table(
        ["id", "test", "measure", "metric", "direction", "scope", "family", "runs"],
        [[h.id, h.test, h.measure or f"{h.treatment} vs {h.control}", h.metric, h.direction, h.scope, h.family, h.runs]
         for h in p.hypotheses],
    )  # fmt: skip
    for h in p.hypotheses:
        requires = " *Requires:* " + ", ".join(f"{k} = {v}" for k, v in h.requires.items()) if h.requires else ""
        out += [f"- **{h.id}.** {h.statement} *Why:* {h.reason}{requires}"]
    out += ["", "## Measures", ""]
    out += [f"- `{name}`: {text}" for name, text in p.measures.items()]
    out += ["", f"**Probe version.** {p.probe_version}", "", f"**Robustness.** {p.robustness}", "", "## Design", ""]
    seeds = p.design.seeds
    out += [
        f"Seeds {seeds[0]}-{seeds[-1]} ({len(seeds)} per configuration; none used by a committed study). "
        f"Strata (configurations): {' x '.join(p.design.strata)}; the plain algorithm has `sam_rho` = 0. "
        f"H3's matching cells: {' x '.join(p.design.cells)}. Granulated-Kendall factors: "
        f"{', '.join(p.design.factors)}. Probe options: `{p.design.probe}`; evaluate options: `{p.design.evaluate}`.",
        "",
    ]
    rows = design_table(p)
    out += _table(["task", "algorithms", "suite", "solved threshold", "levels", "configurations", "runs", "config"],
                  rows)  # fmt: skip
    out += [f"Total: {sum(r[6] for r in rows)} runs.", "", "**PG, per task.**", ""]
    out += [f"- {t.task}: {t.pg}" for t in p.design.tasks]
    out += ["", "## Unsolved rule", "", p.unsolved_rule.statement, "", "## Exclusions", ""]
    out += [f"- {e}" for e in p.exclusions]
    a = p.analysis
    out += ["", "## Analysis", "", f"Alpha {a.alpha}, correction {a.correction} within each family only:", ""]
    out += [f"- `{name}`: {text}" for name, text in a.families.items()]
    out += ["", f"**Statistic.** {a.statistic}", "", f"**Interval.** {a.interval}", "", f"**H3.** {a.difference}", ""]
    out += ["## Sample size and power", "", p.power.method, ""]
    out += _table(
        ["hypothesis", "scope", "effect", "solve rate", "strata/cells", "runs each", "level per test", "analytic",
         "simulated"],
        [[r.hypothesis, r.scope, r.effect, r.solve_rate, r.strata, r.per_stratum, r.alpha_per_test, r.analytic,
          "n/a" if r.simulated is None else r.simulated] for r in p.power.rows],
    )  # fmt: skip
    out += [
        f"Simulation: seed {p.power.seed}, {p.power.replicates} replicates, {p.power.n_perm} permutations each.",
        "",
    ]
    out += ["## Stopping rule", "", p.stopping_rule, "", "## Exploratory", "", p.exploratory, ""]
    if p.deviations_from_issue:
        out += ["## Deviations from the issue", ""] + [f"- {d}" for d in p.deviations_from_issue] + [""]
    out += ["## Amendments", ""]
    if p.amendments:
        out += [
            f"- {m.date.isoformat()}: {m.changes} *Reason:* {m.reason} (body sha256 `{m.body_sha256[:16]}`)"
            for m in p.amendments
        ]
    else:
        out += ["None."]
    return "\n".join(out).rstrip() + "\n"
