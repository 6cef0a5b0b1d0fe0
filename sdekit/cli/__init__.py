"""The ``sdekit`` command: one module per command (``sdekit.cli.compare``, ``grid``, ``order``, ``likelihood``,
``info``, ``demo``); this module holds the parser and ``main``.

``sdekit compare``  plug a score model into a solver comparison (embedded analytic default, or
                    ``--model package.module:factory``): table, JSON records (resumable), PNG plots.
``sdekit grid``     optimise a sampler's time grid (``sdekit.optimize_grid``) and write a grid file for
                    ``compare --grid``.
``sdekit order``    convergence-order benchmark: fitted order with confidence interval vs declared, PASS/FAIL.
``sdekit info``     version and the registry with declared orders.
``sdekit demo``     the README's main job: ``compare`` on the embedded default with a modest budget.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..distributed import RankFailure
from .common import MAX_NFE, PROCESSES, REFERENCE_RTOL_ANALYTIC, REFERENCE_RTOL_NETWORK, load_model, make_process
from .compare import cmd_compare
from .demo import cmd_demo
from .grid import cmd_grid
from .info import cmd_info
from .likelihood import cmd_likelihood
from .order import cmd_order

__all__ = ["main", "build_parser", "load_model", "make_process", "PROCESSES", "cmd_compare", "cmd_demo", "cmd_info",
           "cmd_likelihood", "cmd_order"]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` to an option's help unless the help already states its default or it is None."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default is None:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors (``sdekit: error: ...``, exit 2) and defaults in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        sub = self.prog.split()[-1] if " " in self.prog else None
        where = f" {sub}" if sub else ""
        self.exit(2, f"sdekit: error: {message} (see sdekit{where} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from ..analytic import REFERENCE_METHODS

    p = _Parser(prog="sdekit", description="Diffusion models as SDEs and ODEs, solved well.")
    p.add_argument("--version", action="version", version=f"sdekit {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    sub.add_parser("info", help="version and registered solvers", description="Version and the solver registry.")

    c = sub.add_parser("compare", help="solver comparison on a score model",
                       description="Compare solvers on a score model: RMSE against a float64 reference solve of "
                                   "the PF-ODE from the same x_T, sliced W2 to data, tables, JSON records "
                                   "(resumable) and PNG plots.")
    c.add_argument("--model", default=None,
                   help="package.module:factory returning an sdekit model, or a zoo name (default: the analytic "
                        "--preset)")
    c.add_argument("--preset", default=None, help="analytic Gaussian-mixture preset (default ring2d; not with --model)")
    c.add_argument("--process", default=None,
                   help=f"process of the analytic preset: {', '.join(PROCESSES)} (default vp; not with --model)")
    c.add_argument("--solvers", default="ddim,dpmpp_2m,dpmpp_3m,unipc,edm_heun,ddpm",
                   help="comma-separated registry names or groups all-deterministic, all-stochastic")
    c.add_argument("--nfe", default="5,10,20,50",
                   help=f"comma-separated NFE budgets (model evaluations per sample), each in [1, {MAX_NFE}]")
    c.add_argument("--spacing", default="log_snr", choices=["time", "log_snr", "quadratic", "karras"],
                   help="time-grid spacing")
    c.add_argument("--samples", type=int, default=512, help="number of samples (trajectories from x_T)")
    c.add_argument("--seed", type=int, default=0, help="seed of x_T and of the stochastic samplers' noise")
    c.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="dtype of the samplers")
    c.add_argument("--device", default="cpu", help="device of the samplers (cpu, cuda, cuda:1, ...)")
    c.add_argument("--scatter-nfe", type=int, default=None,
                   help="NFE whose samples are plotted (scatter for 2-D data, image grids for images); one of "
                        "--nfe (default: the middle one)")
    c.add_argument("--reference-rtol", type=float, default=None,
                   help=f"rtol = atol of the float64 reference (default {REFERENCE_RTOL_ANALYTIC:g} for "
                        f"analytic models, {REFERENCE_RTOL_NETWORK:g} for networks)")
    c.add_argument("--reference-method", default="DOP853", choices=list(REFERENCE_METHODS),
                   help="scipy method of the float64 reference solve")
    c.add_argument("--no-reference-check", action="store_true",
                   help="skip the second reference solve at a 100 times looser tolerance")
    c.add_argument("--grid", default=None,
                   help="grid file (sdekit grid): a solver at a step count it holds runs on that grid, not --spacing")
    c.add_argument("--out", default="runs/compare", help="output folder (records, results.json, plots)")
    c.add_argument("--resume", action="store_true", help="skip configurations whose records exist")
    c.add_argument("--no-plots", action="store_true", help="write tables and JSON only")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.add_argument("--timeout", type=float, default=1800.0,
                   help="under torchrun: seconds a process waits at a collective for the others before it fails, "
                        "naming the ranks that did not arrive")

    g = sub.add_parser("grid", help="optimise sampler time grids and write a grid file",
                       description="Optimise the time grid of deterministic samplers on a model (sdekit.optimize_grid:"
                                   " selected on pilot trajectories, reported on fresh ones) and write a grid file "
                                   "for sdekit compare --grid.")
    g.add_argument("--model", default=None, help="zoo name or package.module:factory (default: the analytic preset)")
    g.add_argument("--preset", default=None, help="analytic Gaussian-mixture preset (default ring2d; not with --model)")
    g.add_argument("--process", default=None, help=f"process of the analytic preset: {', '.join(PROCESSES)}")
    g.add_argument("--solvers", default="dpmpp_2m", help="comma-separated deterministic samplers")
    g.add_argument("--steps", default="10", help="comma-separated step counts")
    g.add_argument("--method", default="dp", help="dp (GITS-style dynamic programming, then a short polish) or "
                                                  "nelder_mead")
    g.add_argument("--pilots", type=int, default=128, help="pilot trajectories (teachers)")
    g.add_argument("--fresh", type=int, default=256, help="fresh trajectories for the reported errors")
    g.add_argument("--candidates", type=int, default=100, help="candidate steps of the DP (candidate times - 1)")
    g.add_argument("--refine", type=int, default=100, help="Nelder–Mead evaluations of the polish (0: none)")
    g.add_argument("--seed", type=int, default=0, help="seed of the pilot and fresh x_T")
    g.add_argument("--out", default="runs/grids.json", help="grid file to write")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")

    o = sub.add_parser("order", help="convergence-order benchmark",
                       description="Measure convergence orders on problems with exact answers: fitted order "
                                   "with a confidence interval against the declared one, PASS/FAIL.")
    o.add_argument("--problem", default="ou", choices=["ou", "gbm", "linear", "pf-ode"], help="test problem")
    o.add_argument("--solvers", default=None,
                   help="comma-separated names (default: every registered solver the problem and kind apply to)")
    o.add_argument("--kind", default=None, choices=["ode", "strong", "weak"],
                   help="default: strong for ou/gbm, ode for linear/pf-ode; ou and gbm accept strong or weak")
    o.add_argument("--steps", default=None,
                   help="comma-separated step counts, each 1..65536 (default: the test suite's ladder: ODE by "
                        "declared order, strong 8..128, weak 8..64, pf-ode 50..400, 160..1280 above order 3.5)")
    o.add_argument("--samples", type=int, default=2000,
                   help="Brownian paths for strong orders; initial points for pf-ode (at most 256); unused by weak "
                        "orders (exact moments) and linear")
    o.add_argument("--seed", type=int, default=0, help="seed of the Brownian paths and initial states")
    o.add_argument("--out", default="runs/order", help="output folder (JSON, plot)")
    o.add_argument("--no-plots", action="store_true", help="JSON and table only")

    lk = sub.add_parser("likelihood", help="log-likelihood of data under a model (exact value beside it)",
                        description="Log-likelihood by the probability-flow ODE (exact or Hutchinson divergence), "
                                    "beside the exact value for analytic models, or bits/dim of held-out data.")
    lk.add_argument("--model", default=None,
                    help="package.module:factory or a zoo name (default: the analytic --preset)")
    lk.add_argument("--data", default=None,
                    help="samples to evaluate (.npy or .pt, samples first); default: the zoo model's held-out data")
    lk.add_argument("--preset", default="ring2d", help="analytic Gaussian-mixture preset")
    lk.add_argument("--process", default="vp", help=f"process of the analytic preset: {', '.join(PROCESSES)}")
    lk.add_argument("--samples", type=int, default=64, help="number of data points")
    lk.add_argument("--divergence", default="exact", choices=["exact", "hutchinson"], help="divergence estimator")
    lk.add_argument("--n-probes", type=int, default=16, help="Hutchinson probes per sample")
    lk.add_argument("--n-dequant", type=int, default=1, help="dequantization draws per image (quantized data)")
    lk.add_argument("--rtol", type=float, default=1e-5, help="rtol = atol of the adaptive ODE solve")
    lk.add_argument("--dtype", default=None, choices=["float64", "float32"],
                    help="default float64 for analytic presets, float32 for networks")
    lk.add_argument("--seed", type=int, default=0, help="seed of the data, probes and dequantization")
    lk.add_argument("--out", default="runs/likelihood", help="output folder (likelihood.json)")
    lk.add_argument("--no-progress", action="store_true", help="no progress bar")
    lk.add_argument("--resume", action="store_true", help="reuse the blocks of samples whose records exist")
    lk.add_argument("--timeout", type=float, default=1800.0,
                    help="under torchrun: seconds a process waits at a collective for the others before it fails, "
                         "naming the ranks that did not arrive")

    d = sub.add_parser("demo", help="the README main job: compare on the embedded analytic default",
                       description="The README's main job: sdekit compare on the embedded analytic ring mixture.")
    d.add_argument("--samples", type=int, default=1024, help="number of samples")
    d.add_argument("--seed", type=int, default=0, help="seed of x_T and the samplers' noise")
    d.add_argument("--out", default="runs/demo", help="output folder")
    d.add_argument("--no-plots", action="store_true", help="write tables and JSON only")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"info": cmd_info, "demo": cmd_demo, "compare": cmd_compare, "order": cmd_order,
                "likelihood": cmd_likelihood, "grid": cmd_grid, None: cmd_info}
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError, OSError, FloatingPointError, MemoryError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the exception's text
        print(f"sdekit: error: {msg}", file=sys.stderr)
        return 2
    except RankFailure as e:  # another process of a torchrun/srun launch died or hung
        print(f"sdekit: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sdekit: interrupted (finished configurations are kept; rerun with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


