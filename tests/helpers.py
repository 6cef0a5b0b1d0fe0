"""Shared test fixtures: the processes every test is parametrized over."""

import torch

from sdekit import EDM, VE, VP, SubVP

DDPM_BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)


def _learned():
    from sdekit.schedules import LearnedSchedule

    sched = LearnedSchedule(knots=6, log_snr_max=5.0, log_snr_min=-5.0)
    with torch.no_grad():
        for p in sched.parameters():
            p.copy_(torch.linspace(-1.0, 1.0, p.numel(), dtype=p.dtype).reshape(p.shape))
    return sched


def all_processes():
    return {
        "vp_linear": VP(),
        "vp_cosine": VP("cosine"),
        "vp_discrete": VP.from_betas(DDPM_BETAS),
        "vp_quadratic": VP("quadratic"),
        # a learned schedule with non-uniform increments (so it is not the log-SNR-linear one it starts as)
        "vp_learned": VP(_learned()),
        "subvp": SubVP(),
        "ve": VE(),
        "edm": EDM(),
    }


PROCESS_NAMES = list(all_processes())
