"""``sdekit demo``: the README's main job, ``sdekit compare`` on the embedded analytic default."""

from __future__ import annotations

from .compare import cmd_compare


def cmd_demo(args) -> int:
    args.solvers = "ddim,dpm_solver_2,dpmpp_2m,dpmpp_3m,unipc,edm_heun,rk4,ddpm,dpmpp_2m_sde"
    args.nfe = "5,10,20,50"
    args.model, args.preset, args.process = None, "ring2d", "vp"
    args.spacing, args.dtype, args.device = "log_snr", "float64", "cpu"
    args.resume, args.scatter_nfe = False, 10
    args.reference_rtol, args.no_reference_check, args.reference_method = None, False, "DOP853"
    return cmd_compare(args)
