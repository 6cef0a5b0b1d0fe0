"""``sdekit order``: convergence orders on problems with exact answers, as a table, JSON and a plot."""

from __future__ import annotations

import json
import math
import os

import torch

from ..analytic import GaussianMixture, GeometricBrownianMotion, OrnsteinUhlenbeck, reference_solve
from ..processes import VP
from ..reverse import probability_flow
from ..sampling import sample
from ..sde import ODE
from ..solvers import REGISTRY, DiffusionSampler
from .order import OrderRecord, convergence_order, fit_order

TOLERANCE = {"ode": 0.15, "strong": 0.2, "weak": 0.25}
F64 = torch.float64


def _ou_pathwise(ou, x0, bm, fine=2**12):
    ts = torch.linspace(0, 1, fine + 1, dtype=F64)
    tl = ts.tolist()
    ws = [torch.zeros_like(x0)]
    for i in range(fine):
        ws.append(ws[-1] + bm(tl[i], tl[i + 1]))
    return ou.pathwise(x0, ts, torch.stack(ws))


def _generic(noise=None):
    out = []
    for n in sorted(REGISTRY):
        cls = REGISTRY[n]
        if issubclass(cls, DiffusionSampler):
            continue
        if noise is None or noise in cls.noise_types:
            out.append(n)
    return out


def _pf_ode_record(name, steps, samples, seed) -> OrderRecord:
    p = VP()
    m = GaussianMixture.preset("ring2d").model(p)
    x = p.prior_sample((samples, 2), generator=torch.Generator().manual_seed(seed), dtype=F64)
    ref = reference_solve(probability_flow(p, m), x, p.t_max, p.t_min, rtol=1e-12, atol=1e-12)
    errs, nfes = [], []
    for n in steps:
        sol = sample(m, x, name, steps=n, spacing="log_snr")
        errs.append(float((sol.x - ref).pow(2).mean().sqrt()))
        nfes.append(int(sol.stats["nfe"]))
    dts = [1 / n for n in nfes]
    order, ci = fit_order(dts, errs)
    return OrderRecord(name, "ode", dts, errs, None, order, ci, REGISTRY[name]().order, nfes)


def run_order(args) -> int:
    problem = args.problem
    kind = args.kind or {"ou": "strong", "gbm": "strong", "linear": "ode", "pf-ode": "ode"}[problem]
    if problem == "pf-ode" and kind != "ode":
        raise ValueError("--problem pf-ode measures the deterministic order: use --kind ode")
    if problem == "linear" and kind != "ode":
        raise ValueError("--problem linear is an ODE: use --kind ode")
    if args.samples < 2:
        raise ValueError(f"--samples must be >= 2, got {args.samples}")
    default_steps = {"ode": "16,32,64,128", "strong": "8,16,32,64,128", "weak": "4,8,16,32"}[kind]
    if problem == "pf-ode":
        default_steps = "50,100,200,400"
    steps = [int(s) for s in (args.steps or default_steps).split(",")]
    if len(steps) < 2 or any(s <= 0 for s in steps):
        raise ValueError(f"--steps needs at least two positive integers, got {args.steps}")
    if args.solvers:
        names = [s.strip() for s in args.solvers.split(",") if s.strip()]
        for n in names:
            if n not in REGISTRY:
                raise ValueError(f"unknown solver {n!r}; registered: {', '.join(sorted(REGISTRY))}")
    else:
        names = {"ou": _generic("additive"), "gbm": _generic("diagonal"), "linear": _generic(),
                 "pf-ode": ["ddim", "dpm_solver_2", "dpm_solver_3", "dpmpp_2m", "dpmpp_3m", "unipc",
                            "edm_heun"]}[problem]
    records = []
    from tqdm.auto import tqdm

    lin_a = torch.tensor([[-0.3, 2.0], [-2.0, -0.3]], dtype=F64)
    lin_x0 = torch.tensor([[1.0, 0.0], [0.3, -0.7]], dtype=F64)
    lin = ODE(lambda t, x: x @ lin_a.T)
    lin_exact = lin_x0 @ torch.linalg.matrix_exp(3.0 * lin_a).T
    gbm = GeometricBrownianMotion(0.5, 0.8)
    ou = OrnsteinUhlenbeck(2.0, 0.5, 0.8)

    def gbm_exact(x0, bm):
        return gbm.exact(x0, 1.0, bm(0.0, 1.0))

    def ou_exact(x0, bm):
        return _ou_pathwise(ou, x0, bm)

    for name in tqdm(names, desc=f"order[{problem}]", leave=False):
        if problem == "pf-ode":
            rec = _pf_ode_record(name, steps, min(args.samples, 256), args.seed)
        elif problem == "linear":
            rec = convergence_order(lin, name, lin_x0, t0=0.0, t1=3.0, steps=steps, exact=lin_exact)
        elif problem == "gbm":
            x0 = torch.ones(args.samples, 1, dtype=F64)
            rec = convergence_order(gbm, name, x0, t0=0.0, t1=1.0, steps=steps, kind=kind, seed=args.seed,
                                    exact=gbm_exact)
        else:
            x0 = torch.full((args.samples, 1), 1.5, dtype=F64)
            rec = convergence_order(ou, name, x0, t0=0.0, t1=1.0, steps=steps, kind=kind, seed=args.seed,
                                    exact=ou_exact, phi=lambda x: x[:, 0] ** 2)
        records.append(rec)
    tol = TOLERANCE[kind]
    print(f"sdekit order: problem {problem}, {kind} order, steps {steps}; PASS = |order - declared| <= {tol}")
    print(f"{'solver':<18} {'order':>7} {'95% CI':>17} {'declared':>9}  result")
    for r in records:
        verdict = "PASS" if r.passed(tol) else ("n/a" if r.declared is None else "FAIL")
        print(f"{r.solver:<18} {r.order:7.3f} [{r.ci[0]:6.3f}, {r.ci[1]:6.3f}] {str(r.declared):>9}  {verdict}")
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, f"order-{problem}-{kind}.json")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"problem": problem, "kind": kind, "tolerance": tol,
                   "records": [r.to_dict() | {"passed": r.passed(tol)} for r in records]}, f, indent=1)
    os.replace(tmp, out)
    print(f"\nrecords: {out}")
    if not args.no_plots:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for r in records:
            ax.loglog(r.dts, r.errors, marker="o", label=f"{r.solver} ({r.order:.2f})")
        x_ref = [min(min(r.dts) for r in records), max(max(r.dts) for r in records)]
        e_mid = math.exp(sum(math.log(e) for r in records for e in r.errors) / sum(len(r.errors) for r in records))
        for p in sorted({r.declared for r in records if r.declared}):
            c = e_mid / math.sqrt(x_ref[0] * x_ref[1]) ** p
            ax.loglog(x_ref, [c * x**p for x in x_ref], "k--", lw=0.7, alpha=0.5)
            ax.text(x_ref[1], c * x_ref[1] ** p, f"slope {p:g}", fontsize=7)
        ax.set_xlabel("step size (1/NFE for samplers)")
        ax.set_ylabel(f"{kind} error")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        png = os.path.join(args.out, f"order-{problem}-{kind}.png")
        fig.savefig(png, dpi=120)
        plt.close(fig)
        print(f"plot: {png}")
    return 0 if all(r.passed(tol) or r.declared is None for r in records) else 1
