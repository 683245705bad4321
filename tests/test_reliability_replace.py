"""The reliability benchmark's re-probe of changed measures (``--replace``), its full-precision ICC intervals, and the
report's sentence naming rows probed apart (issue 20 item 4: the exact Fisher trace's reliability)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("probe_reliability", REPO / "benchmarks" / "probe_reliability.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["probe_reliability"] = module
    spec.loader.exec_module(module)
    return module


def _values(seed: int, noise: dict[str, float], runs: int = 12) -> pd.DataFrame:
    """Two probes of ``runs`` policies per measure: a policy effect (sd 1) plus probe noise of the given sd."""
    rng = np.random.default_rng(seed)
    rows = []
    for measure, sd in noise.items():
        truth = rng.normal(size=runs)
        for probe in (0, 1):
            for i, value in enumerate(truth + sd * rng.normal(size=runs)):
                family = "ppo" if i % 2 else "pg"
                rows.append({"run": f"{family}-CartPole-s{i}", "probe": probe, "measure": measure, "value": value})
    return pd.DataFrame(rows)


def test_icc_intervals_keep_their_third_digit_and_pingouins_options() -> None:
    import pingouin

    bench = _benchmark()
    before = dict(pingouin.options)
    table = bench.reliability(_values(0, {"a": 0.3, "b": 1.0, "c": 0.1}))
    assert dict(pingouin.options) == before
    bounds = np.array([[float(x) for x in ci.strip("[]").split(",")] for ci in table["icc_ci95"]])
    assert np.all(bounds[:, 0] < table["icc"]) and np.all(table["icc"] < bounds[:, 1])
    assert not np.allclose(bounds * 100, np.round(bounds * 100))  # pingouin's default would round to 2 decimals


def test_replace_swaps_only_the_named_rows_in_both_tables(tmp_path: Path) -> None:
    bench = _benchmark()
    old = _values(1, {"a": 0.3, "b": 1.0, "c": 0.1})
    out = tmp_path / "probe_reliability.csv"
    table, families = bench.reliability(old), bench.by_family(old)
    table.assign(verdict="usable").to_csv(out, index=False)  # a table written before the probes column
    families.to_csv(tmp_path / "probe_reliability_by_family.csv", index=False)
    new = _values(2, {"b": 0.05, "c": 3.0})  # b re-measured with far less probe noise; c must stay the old one
    fresh, fresh_families = bench.reliability(new), bench.by_family(new)
    fresh["probes"] = fresh_families["probes"] = ".reliability_new"
    pooled, by_family = bench.merged(out, fresh, fresh_families, ["b"])
    for got, before, after in ((pooled, table, fresh), (by_family, families, fresh_families)):
        keys = ["measure", "family"] if "family" in got else ["measure"]
        got = got.set_index(keys)
        assert set(got.index) == set(before.set_index(keys).index)
        b_rows = after[after["measure"] == "b"].set_index(keys)
        assert got.loc[b_rows.index, "icc"].tolist() == b_rows["icc"].tolist()
        assert set(got.loc[b_rows.index, "probes"]) == {".reliability_new"}
        others = before[before["measure"] != "b"].set_index(keys)
        assert got.loc[others.index, "icc"].tolist() == others["icc"].tolist()
        assert set(got.loc[others.index, "probes"]) == {"unknown"}
    assert pooled["icc"].is_monotonic_decreasing and "verdict" not in pooled
    with pytest.raises(ValueError, match="--replace names zz, not measured here"):
        bench.merged(out, fresh, fresh_families, ["zz"])


def test_the_report_names_rows_probed_apart_and_its_own_hutchinson_traces() -> None:
    from rlflat.report.reliability import _probe_sets_sentence

    table = pd.DataFrame(
        {
            "measure": ["fisher_trace", "fisher_adaptive_trace", "kl_sigma0p1", "entropy"],
            "probes": [".reliability_exact_trace", ".reliability_exact_trace", ".reliability", ".reliability"],
        }
    )
    old_runs = pd.DataFrame({"probe.fisher_trace_method": ["hutchinson", "hutchinson"]})
    text = _probe_sets_sentence(table, old_runs)
    assert "fisher_trace (.reliability_exact_trace), fisher_adaptive_trace (.reliability_exact_trace)." in text
    assert "per-run fisher_trace and fisher_adaptive_trace are still the older Hutchinson" in text
    assert "reliability rows are the exact trace" in text
    one_set = table.assign(probes=".reliability")
    assert "here are the older Hutchinson estimates" in _probe_sets_sentence(one_set, old_runs)
    assert _probe_sets_sentence(one_set, pd.DataFrame({"probe.fisher_trace_method": ["exact"]})) == ""
