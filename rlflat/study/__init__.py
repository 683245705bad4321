"""Confirmatory studies: a preregistration the code reads, its hash lock, its power and its registered analysis.

* :mod:`.preregistration`: the schema (``studies/<name>/preregistration.yaml``), loading, the registered body's hash;
* :mod:`.render`: the preregistration as Markdown (``preregistration.md`` beside the YAML);
* :mod:`.power`: the sample-size calculation the preregistration states (analytic, and simulated for the exact test);
* :mod:`.lock`: the hash recorded in each study directory at its first run, and the amendment rule;
* :mod:`.analysis`: exactly the registered tests over a runs table, with a verdict per hypothesis.

Why: every earlier finding chose its measures, strata and exclusions while looking at the runs that tested them
(Nosek et al. 2018 call that postdiction). A file fixed before the runs, read by the code, keeps the analysis from
drifting toward the data.
"""
