"""Convergence-order estimation and (later) solver comparisons: records that benchmarks and the CLI reuse."""

from .order import OrderRecord, convergence_order, fit_order

__all__ = ["OrderRecord", "convergence_order", "fit_order"]
