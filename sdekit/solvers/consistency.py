"""Multistep consistency sampling (Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models", Algorithm 1).

A consistency model ``f(x, t)`` maps a point of a probability-flow trajectory to its data end. The sampler
alternates denoising and re-noising along a decreasing grid ``t_0 > t_1 > ... > t_N``:
``x0 = f(x_{t_k}, t_k)``, then ``x_{t_{k+1}} = alpha(t_{k+1}) x0 + sigma(t_{k+1}) z`` with fresh ``z``: the
forward marginal of the process, exact for every process (for EDM, ``alpha = 1`` and ``sigma = t``; the
paper's ``sqrt(t² - eps²)`` accounts for its data end at ``sigma = eps`` instead of 0). A step onto
``sigma = 0`` returns ``f`` itself, so one step from ``t_max`` to 0 is the one-step consistency sample.
"""

from __future__ import annotations

from .base import register
from .diffusion import DiffusionSampler, Update


@register
class Consistency(DiffusionSampler):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1): denoise with the model's ``x0``
    prediction, re-noise to the next grid time, repeat. One evaluation per step.

    It needs a *consistency* model: ``predict(x, t, "x0")`` must be the flow map of the probability-flow ODE
    to the data end (a trained consistency model, or [`FlowMapModel`][sdekit.consistency.FlowMapModel] of any
    diffusion model; [`GaussianMixture.consistency_model`][sdekit.analytic.GaussianMixture.consistency_model] is
    exact). Then every grid gives samples of the data law exactly, one step included, and no order applies:
    ``order`` and ``weak_order`` are None. With an ordinary diffusion model the ``x0`` prediction is the
    posterior mean E[x0 | x_t] instead, whose law is narrower than the data's: the result is not a sample of the
    data law for any number of steps (``tests/test_consistency.py`` measures this). ``needs_consistency_model``
    keeps the sampler out of the ``all-stochastic`` comparison group and out of the generic diffusion checks of
    the conformance suite, which run it on the exact consistency function instead.
    """

    name = "consistency"
    order = None
    weak_order = None
    noise_types = ("additive",)
    evals_per_step = 1
    needs_consistency_model = True

    def _step(self, ev, x, s, t, noise, st):
        return Update([(t.alpha, ev.denoised(x, s))], noise=t.sigma)
