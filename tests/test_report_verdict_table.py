"""The unsolved / borderline tables tell runs apart by configuration and never round a return onto the threshold."""

from __future__ import annotations

import pandas as pd

from rlflat.report.render import _shown_to_the_hundredth, _verdict_table
from rlflat.report.stats.strata import configuration_columns


def test_verdict_table_names_the_configuration_and_keeps_two_decimals() -> None:
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c"],
            "algo": ["pg_sam", "pg_sam", "pg"],
            "seed": [3, 3, 3],
            "hp.rho": [0.02, 0.1, float("nan")],
            "hp.gamma": [0.99, 0.99, 0.99],  # the same everywhere: not a configuration column
            "robustness.nominal_return": [474.94, 433.0, 462.5],
            "robustness.nominal_return_se": [0.012, 16.9, 14.2],
            "robustness.solved_threshold": [475.0, 475.0, 475.0],
        }
    )
    table = _verdict_table(runs, configuration_columns(runs))
    assert list(table.columns) == ["run_id", "algo", "hp.rho", "seed", *runs.columns[-3:]]
    shown = _shown_to_the_hundredth(table)
    assert shown["robustness.nominal_return"].tolist() == ["474.94", "433.00", "462.50"]  # .3g would print 475
    assert shown["robustness.nominal_return_se"].iloc[0] == "0.01"
    assert table["robustness.nominal_return"].iloc[0] == 474.94  # the saved CSV keeps full precision
