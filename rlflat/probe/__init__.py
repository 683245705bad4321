"""Sharpness probes of trained policies: Hessian spectra, perturbation and worst-case sharpness, landscapes.

``probe_run(path, task=None, out=None, **options)`` is the public entry point (also ``python -m rlflat.probe``);
``validate_probe_options(options)`` checks options without running, ``make_options(**options)`` builds them, and
``load_probe_arrays(path)`` reads a probe's ``probe.npz`` back (keys: ``rlflat.probe.output.ARRAY_KEYS``). The
numerics live in :mod:`rlflat.probe.hvp`, :mod:`~rlflat.probe.spectrum`, :mod:`~rlflat.probe.directions` and
:mod:`~rlflat.probe.worst_case`. Imports are lazy so the numerics modules load without the evaluator.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DEFAULT_MEASURES",
    "MEASURES",
    "ProbeOptions",
    "load_probe_arrays",
    "make_options",
    "probe_run",
    "validate_probe_options",
]


def __getattr__(name: str) -> Any:
    if name == "load_probe_arrays":
        from rlflat.probe import output

        return output.load_probe_arrays
    if name in __all__:
        from rlflat.probe import run

        return getattr(run, name)
    raise AttributeError(f"module 'rlflat.probe' has no attribute {name!r}")
