"""``sdekit info``: the version and the solver registry with declared orders."""

from __future__ import annotations

from .. import __version__


def _registry_table() -> str:
    from ..solvers import REGISTRY, DiffusionSampler

    rows = [f"{'name':<20} {'kind':<9} {'order':>5} {'strong':>7} {'weak':>5}  {'noise types':<32} evals/step"]
    for name in sorted(REGISTRY):
        s = REGISTRY[name]()
        fmt = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
        kind = "sampler" if isinstance(s, DiffusionSampler) else "generic"
        rows.append(f"{name:<20} {kind:<9} {fmt(s.order):>5} {fmt(s.strong_order):>7} {fmt(s.weak_order):>5}  "
                    f"{','.join(s.noise_types) or 'ODE only':<32} {s.evals_per_step}")
    return "\n".join(rows)


def cmd_info(args) -> int:
    print(f"sdekit {__version__}")
    print(_registry_table())
    return 0
