"""Shared test fixtures: the processes every test is parametrized over."""

import torch

from sdekit import EDM, VE, VP, SubVP

DDPM_BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)


def all_processes():
    return {
        "vp_linear": VP(),
        "vp_cosine": VP("cosine"),
        "vp_discrete": VP.from_betas(DDPM_BETAS),
        "subvp": SubVP(),
        "ve": VE(),
        "edm": EDM(),
    }


PROCESS_NAMES = list(all_processes())
