"""sdekit: diffusion models as SDEs and ODEs, solved well."""

from . import adapters, analytic, bench, inverse, nets, schedules, solvers, training, zoo
from .bench.grid_opt import GridResult, optimize_grid
from .brownian import BrownianPath, FreshNoise, VirtualBrownianTree
from .inversion import interpolate, invert
from .likelihood import DDPMBoundResult, bits_per_dim, ddpm_bound, log_likelihood
from .models import ScoreModel, convert
from .processes import EDM, VE, VP, DiffusionProcess, SubVP
from .reverse import ProbabilityFlowODE, ReverseSDE, probability_flow, reverse_sde
from .sampling import ClassifierFreeGuidance, sample
from .schedules import LearnedSchedule, QuadraticSchedule, time_grid
from .sde import ODE, SDE, from_torchsde, to_torchsde
from .solve import PIController, Solution, solve  # noqa: E402  (the function shadows the module name)

__version__ = "0.1.0"

__all__ = [
    "SDE", "ODE", "from_torchsde", "to_torchsde",
    "DiffusionProcess", "VP", "SubVP", "VE", "EDM",
    "ScoreModel", "convert",
    "reverse_sde", "probability_flow", "ReverseSDE", "ProbabilityFlowODE",
    "analytic", "schedules", "bench", "solvers", "nets", "training", "zoo", "adapters", "inverse",
    "BrownianPath", "VirtualBrownianTree", "FreshNoise", "solve", "Solution", "PIController",
    "sample", "ClassifierFreeGuidance", "time_grid", "optimize_grid", "GridResult", "log_likelihood", "bits_per_dim",
    "ddpm_bound", "DDPMBoundResult", "QuadraticSchedule", "LearnedSchedule",
    "invert", "interpolate",
]
