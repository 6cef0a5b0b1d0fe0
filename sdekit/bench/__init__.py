"""Convergence-order estimation and solver comparisons: records that benchmarks, the CLI and the tests reuse."""

from .order import OrderRecord, convergence_order, fit_order, ladder_order, sampler_order

__all__ = ["OrderRecord", "convergence_order", "fit_order", "ladder_order", "sampler_order"]
