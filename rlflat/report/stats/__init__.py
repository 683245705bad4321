"""Statistics for the report: does sharpness predict collapse, and does a flatness-seeking optimiser buy robustness?

Pure functions over numpy arrays and the runs table (one row per run), one job per module:

* :mod:`.correlation`: Spearman / Kendall with Fisher-z intervals and permutation p-values, per task,
  pooled over tasks and within algorithms;
* :mod:`.granulated`: the granulated Kendall coefficient of Jiang et al. (2020);
* :mod:`.comparison`: Welch differences, the probability of improvement with Newcombe's interval, IQMs,
  censored medians;
* :mod:`.sentences`: the plain sentences the report prints.

The ``rliable`` package is not used: it pins ``arch<8`` and ``absl-py`` and its percentile bootstrap is
what undercovers at five runs. Every random function takes an explicit ``seed`` (int or Generator).
"""

from rlflat.report.stats._common import POOLED, SeedLike, holm
from rlflat.report.stats.comparison import (
    AGG_STATS,
    AGGREGATE_COLUMNS,
    COMPARISON_COLUMNS,
    aggregate_table,
    censored_median,
    compare_algorithms,
    interquartile_mean,
    mean_interval,
    poi_interval,
    prob_improvement,
    welch_interval,
)
from rlflat.report.stats.correlation import (
    ACROSS,
    CORR_COLUMNS,
    CORR_METHODS,
    MIN_N,
    MIN_N_CI,
    ROW_STATS,
    WITHIN_ALGO,
    CorrResult,
    correlation_table,
    fisher_z_interval,
    rank_correlation,
)
from rlflat.report.stats.granulated import (
    GRANULATED_COLUMNS,
    KENDALL_ALL,
    MIN_CONFIGS,
    PSI_OVERALL,
    GranulatedKendall,
    granulated_kendall,
    granulated_kendall_table,
)
from rlflat.report.stats.sentences import SPANS_ZERO, describe_comparison, describe_correlation

__all__ = [
    "ACROSS",
    "AGGREGATE_COLUMNS",
    "AGG_STATS",
    "COMPARISON_COLUMNS",
    "CORR_COLUMNS",
    "CORR_METHODS",
    "GRANULATED_COLUMNS",
    "KENDALL_ALL",
    "MIN_CONFIGS",
    "MIN_N",
    "MIN_N_CI",
    "POOLED",
    "PSI_OVERALL",
    "ROW_STATS",
    "SPANS_ZERO",
    "WITHIN_ALGO",
    "CorrResult",
    "GranulatedKendall",
    "SeedLike",
    "aggregate_table",
    "censored_median",
    "compare_algorithms",
    "correlation_table",
    "describe_comparison",
    "describe_correlation",
    "fisher_z_interval",
    "granulated_kendall",
    "granulated_kendall_table",
    "holm",
    "interquartile_mean",
    "mean_interval",
    "poi_interval",
    "prob_improvement",
    "rank_correlation",
    "welch_interval",
]
