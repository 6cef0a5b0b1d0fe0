"""Itô SDE solvers: Euler–Maruyama, Milstein, stochastic Heun (additive noise), SRA1 (additive noise).

All steps accept decreasing times (``h = t1 - t0 < 0``): the problem is then integrated in reverse time
``s = -t`` with Brownian increments of variance ``|h|``, which is why Itô corrections use ``|h|``.
"""

from __future__ import annotations

import torch

from .._utils import time_like
from .base import Solver, Step, register


@register
class EulerMaruyama(Solver):
    """Euler–Maruyama: ``x1 = x0 + f(t0, x0) h + g(t0, x0) ΔW``.

    Strong order 0.5 (1.0 for additive noise), weak order 1.0, ODE order 1; one drift and one diffusion
    evaluation per step; every noise type (Kloeden & Platen 1992, §10.2).
    """

    name = "euler_maruyama"
    order = 1.0
    strong_order, weak_order = 0.5, 1.0
    additive_strong_order = 1.0
    noise_types = ("scalar", "diagonal", "additive", "general")
    evals_per_step = 1

    def step(self, problem, t0, t1, x0, noise, state):
        t = time_like(t0, x0)
        x1 = torch.add(x0, problem.drift(t, x0), alpha=t1 - t0)
        if noise is not None:
            x1 = x1.add_(problem.g_dw(problem.diffusion(t, x0), noise, x0))  # x1 is a fresh tensor
        return Step(x1)


@register
class Milstein(Solver):
    """Itô Milstein scheme: Euler–Maruyama plus ``½ (g ∂g/∂x)(ΔW² - |h|)``.

    Strong order 1.0, weak order 1.0; scalar and diagonal noise (``g_i`` depending on ``x_i`` only, as in
    torchsde); the derivative of ``g`` comes from the SDE's ``diffusion_jvp`` or autograd
    (Kloeden & Platen 1992, §10.3). One drift, one diffusion and one Jacobian-vector product per step.
    """

    name = "milstein"
    order = 1.0
    strong_order, weak_order = 1.0, 1.0
    noise_types = ("scalar", "diagonal", "additive")
    evals_per_step = 1

    def step(self, problem, t0, t1, x0, noise, state):
        t, h = time_like(t0, x0), t1 - t0
        x1 = x0 + problem.drift(t, x0) * h
        if noise is None:
            return Step(x1)
        g = problem.diffusion(t, x0)
        x1 = x1 + problem.g_dw(g, noise, x0)
        if problem.noise_type != "additive":  # ∂g/∂x = 0 for additive noise
            g_full = problem.g_dw(g, torch.ones_like(noise), x0)  # g broadcast to the state's shape
            lg = problem.diffusion_jvp(t, x0, g_full)  # (∂g/∂x) g, in g's shape
            x1 = x1 + 0.5 * problem.g_dw(lg, noise * noise - abs(h), x0)
        return Step(x1)


@register
class StochasticHeun(Solver):
    """Stochastic Heun (improved Euler) for additive noise, where Itô and Stratonovich coincide:
    predictor ``x̃ = x0 + f(t0, x0) h + g(t0) ΔW``, corrector
    ``x1 = x0 + ½(f(t0, x0) + f(t1, x̃)) h + ½(g(t0) + g(t1)) ΔW``.

    Strong order 1.0, weak order 2.0 on additive noise (Kloeden & Platen 1992, §15.1; the simplified
    weak order-2 scheme with ``ΔZ ≈ ½ ΔW h``); ODE order 2 (Heun). Two drift evaluations per step.
    """

    name = "stochastic_heun"
    order = 2.0
    strong_order, weak_order = 1.0, 2.0
    noise_types = ("additive",)
    evals_per_step = 2

    def step(self, problem, t0, t1, x0, noise, state):
        ta, tb, h = time_like(t0, x0), time_like(t1, x0), t1 - t0
        f0 = problem.drift(ta, x0)
        if noise is None:
            pred = x0 + f0 * h
            return Step(x0 + 0.5 * h * (f0 + problem.drift(tb, pred)))
        gw0 = problem.g_dw(problem.diffusion(ta, x0), noise, x0)
        pred = x0 + f0 * h + gw0
        f1 = problem.drift(tb, pred)
        gw1 = problem.g_dw(problem.diffusion(tb, pred), noise, x0)
        return Step(x0 + 0.5 * h * (f0 + f1) + 0.5 * (gw0 + gw1))


@register
class SRA1(Solver):
    """SRA1 of Rößler (2010, SIAM J. Numer. Anal. 48(3), Table 5.1) for additive noise.

    With ``J = I_(1,0)/h = ΔW/2 + H`` (``H`` the space-time Lévy area):
    ``H2 = x0 + ¾ f(t0, x0) h + (3/2) g(t1) J``;
    ``x1 = x0 + (⅓ f(t0, x0) + ⅔ f(t0 + ¾h, H2)) h + g(t1)(ΔW - J) + g(t0) J``.
    Strong order 1.5 and weak order 2.0 for additive noise; ODE order 2 (Ralston). Two drift
    evaluations per step; needs the Brownian path's Lévy area.
    """

    name = "sra1"
    order = 2.0
    strong_order, weak_order = 1.5, 2.0
    noise_types = ("additive",)
    evals_per_step = 2
    needs_levy_area = True

    def step(self, problem, t0, t1, x0, noise, state):
        ta, h = time_like(t0, x0), t1 - t0
        f0 = problem.drift(ta, x0)
        if noise is None:
            k2 = problem.drift(time_like(t0 + 0.75 * h, x0), x0 + 0.75 * h * f0)
            return Step(x0 + h * (f0 / 3 + 2 * k2 / 3))
        dw, area = noise
        j = 0.5 * dw + area
        g0 = problem.diffusion(ta, x0)
        g1 = problem.diffusion(time_like(t1, x0), x0)
        h2 = x0 + 0.75 * h * f0 + 1.5 * problem.g_dw(g1, j, x0)
        f2 = problem.drift(time_like(t0 + 0.75 * h, x0), h2)
        x1 = x0 + h * (f0 / 3 + 2 * f2 / 3) + problem.g_dw(g1, dw - j, x0) + problem.g_dw(g0, j, x0)
        return Step(x1)

