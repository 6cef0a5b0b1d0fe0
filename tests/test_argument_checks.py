"""Argument checks of the processes, the discrete schedule and ScoreModel: out-of-range inputs raise a one-line
ValueError/TypeError naming the argument and the allowed range; valid inputs (including the ends of every range)
still work."""

import math

import pytest
import torch

from sdekit import EDM, VE, VP, ScoreModel, SubVP
from sdekit.schedules import CosineSchedule, DiscreteSchedule, LinearSchedule

from .helpers import DDPM_BETAS, PROCESS_NAMES, all_processes

PROCS = all_processes()


def _lam_range(p):
    """[lambda(t_max), lambda(t_domain_min)] in float64 (the upper end is +inf where sigma(t_domain_min) = 0)."""
    return tuple(float(p.log_snr(torch.tensor(t, dtype=torch.float64)).detach()) for t in (p.t_max, p.t_domain_min))


# --- 1. t_from_log_snr -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_t_from_log_snr_refuses_values_outside_the_log_snr_range(name):
    p = PROCS[name]
    lo, hi = _lam_range(p)
    bad = [lo - 1e-3, -30.0, torch.tensor([lo, lo - 1.0], dtype=torch.float64), torch.tensor(lo - 1e-3)]
    if math.isfinite(hi):  # VE: sigma(0) = sigma_min > 0, so lambda is bounded above too
        bad += [hi + 1e-3, float("inf")]
    for lam in bad:
        with pytest.raises(ValueError, match=r"log_snr=.* outside the log-SNR range"):
            p.t_from_log_snr(lam)
    with pytest.raises(ValueError, match="log_snr contains NaN"):
        p.t_from_log_snr(torch.tensor([0.0, float("nan")], dtype=torch.float64))
    with pytest.raises(TypeError, match="log_snr"):
        p.t_from_log_snr("0.5")


def test_t_from_log_snr_reported_case():
    with pytest.raises(ValueError, match=r"log_snr=-30 is outside .*\[-5.02498, inf\]"):
        VP().t_from_log_snr(torch.tensor(-30.0))


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_t_from_log_snr_round_trip_to_float64_accuracy(name):
    p = PROCS[name]
    t = torch.tensor([p.t_min, max(p.t_min, 1e-4), 0.5 * (p.t_min + p.t_max), p.t_max], dtype=torch.float64)
    back = p.t_from_log_snr(p.log_snr(t))
    torch.testing.assert_close(back, t, rtol=1e-12, atol=1e-13 * max(1.0, p.t_max))
    # the ends of the log-SNR range map to the ends of the time domain (+inf is t = 0 where sigma(0) = 0)
    lo, hi = _lam_range(p)
    ends = p.t_from_log_snr(torch.tensor([lo, hi], dtype=torch.float64))
    torch.testing.assert_close(ends, torch.tensor([p.t_max, p.t_domain_min], dtype=torch.float64), rtol=0, atol=1e-12)
    # numbers work as well as tensors
    assert abs(float(p.t_from_log_snr(float(p.log_snr(0.5 * p.t_max)))) - 0.5 * p.t_max) < 1e-12 * max(1, p.t_max)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_float32_log_snr_at_the_ends_is_accepted_and_stays_in_the_domain(name):
    """lambda computed in float32 at t_max rounds past lambda(t_max): the check allows that rounding, and the
    inverse returns a time that the other methods accept."""
    p = PROCS[name]
    t = torch.tensor([p.t_max, p.t_min], dtype=torch.float32)
    back = p.t_from_log_snr(p.log_snr(t))
    assert back.dtype == torch.float32
    assert bool((back >= p.t_domain_min).all()) and bool((back <= p.t_max).all())
    p.alpha(back)  # in the time domain: no error
    torch.testing.assert_close(back, t, rtol=1e-4, atol=1e-5 * max(1.0, p.t_max))


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_non_cpu_log_snr_is_not_checked(name):
    """A check would synchronise a GPU; on the meta device it would fail (no data), so passing shows none ran."""
    lam = torch.tensor([-30.0, 0.0], dtype=torch.float64, device="meta")
    assert PROCS[name].t_from_log_snr(lam).device.type == "meta"


def test_log_snr_is_infinite_not_nan_where_sigma_vanishes():
    """sigma(0) = 0 for the cosine schedule (log f(t) - log f(0) rounded to > 0 and made sigma(0) NaN), and
    lambda = +inf maps back to t = 0 for sub-VP and for a linear schedule with beta_min = 0 (both gave NaN)."""
    cos = VP("cosine")
    assert float(cos.sigma(0.0)) == 0.0 and float(cos.alpha(0.0)) == 1.0 and float(cos.log_snr(0.0)) == math.inf
    for p in (SubVP(), VP(beta_min=0.0), VP("cosine")):
        assert float(p.t_from_log_snr(math.inf)) == 0.0


# --- 2. discrete index maps --------------------------------------------------------------------------------
@pytest.mark.parametrize("owner", ["process", "schedule"])
def test_t_from_index_refuses_indices_outside_minus_one_to_n_minus_one(owner):
    p = VP.from_betas(DDPM_BETAS)
    f = p.t_from_index if owner == "process" else p.schedule.t_from_index
    for i in (1000, -2, 999.5, -1.5, torch.tensor([0, 1000]), torch.tensor([-3.0]), float("inf")):
        with pytest.raises(ValueError, match=r"index i=.* outside the index range \[-1, 999\]"):
            f(i)
    with pytest.raises(ValueError, match="index i contains NaN"):
        f(float("nan"))
    for i in ("3", True, torch.tensor([True])):
        with pytest.raises(TypeError, match="index i"):
            f(i)


def test_t_from_index_valid_inputs_and_index_from_t_symmetry():
    p = VP.from_betas(DDPM_BETAS)
    assert float(p.t_from_index(-1)) == 0.0 and float(p.t_from_index(999)) == 1.0
    i = torch.tensor([-1.0, 0.0, 2.25, 499.5, 998.75, 999.0], dtype=torch.float64)  # fractional is fine
    t = p.t_from_index(i)
    torch.testing.assert_close(t, (i + 1) / 1000)
    torch.testing.assert_close(p.index_from_t(t), i)
    torch.testing.assert_close(p.t_from_index(torch.arange(-1, 1000)), torch.arange(0, 1001).double() / 1000)
    torch.testing.assert_close(p.t_from_index([0, 1]), torch.tensor([0.001, 0.002], dtype=torch.float64))
    # index_from_t: the time domain [0, 1] is exactly the index range [-1, N-1], at both levels
    for f in (p.index_from_t, lambda t: p.schedule.index_from_t(torch.as_tensor(t, dtype=torch.float64))):
        for bad in (1.001, -0.001):
            with pytest.raises(ValueError, match=r"t=.* outside the time domain \[0, 1\]"):
                f(bad)
    assert p.t_from_index(torch.tensor([5000.0], device="meta")).device.type == "meta"  # not checked


# --- 3. constructor arguments ------------------------------------------------------------------------------
# each call as written, so that it is also the test id
BAD_CONSTRUCTIONS = [
    ("VP(t_min=2)", ValueError, r"t_min must be a number in \(0, t_max\) = \(0, 1\), got 2"),
    ("VP(t_min=0.0)", ValueError, r"t_min .* \(0, 1\)"),
    ("VP(t_min=1.0)", ValueError, r"t_min .* \(0, 1\)"),
    ("VP(t_min=float('nan'))", ValueError, "t_min"),
    ("VP(t_min='0.1')", ValueError, "t_min"),
    ("SubVP(t_min=-0.5)", ValueError, "t_min"),
    ("VP('cosine', t_min=0.995)", ValueError, r"t_min .* \(0, 0.9946\)"),
    ("VP('cosine', t_max=0.5, t_min=0.6)", ValueError, r"t_min .* \(0, 0.5\)"),
    ("VP('cosine', t_max='0.9')", ValueError, "t_max"),
    ("VP('cosine', t_max=float('nan'))", ValueError, "t_max"),
    ("VP('cosine', s=0.0)", ValueError, r"\bs must be"),
    ("VP(beta_min=float('nan'))", ValueError, "beta_min"),
    ("VP(beta_max=0.0)", ValueError, "beta_max"),
    ("VE(t_min=1.0)", ValueError, r"t_min must be a number in \[0, t_max\) = \[0, 1\)"),
    ("VE(t_min=-0.1)", ValueError, "t_min"),
    ("VE(t_min='0.5')", ValueError, "t_min"),
    ("VE(sigma_min=0.0)", ValueError, "sigma_min"),
    ("EDM(sigma_min=80.0, sigma_max=1.0)", ValueError, "sigma_min must be < sigma_max"),
    ("EDM(sigma_data=-1.0)", ValueError, "sigma_data"),
    ("DiscreteSchedule.linear_ddpm(num_steps=1)", ValueError, "num_steps must be an int >= 2"),
    ("DiscreteSchedule.linear_ddpm(num_steps=10.5)", ValueError, "num_steps"),
]


@pytest.mark.parametrize("call,error,match", BAD_CONSTRUCTIONS, ids=[c[0] for c in BAD_CONSTRUCTIONS])
def test_constructors_refuse_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        eval(call, {"VP": VP, "SubVP": SubVP, "VE": VE, "EDM": EDM, "DiscreteSchedule": DiscreteSchedule})


def test_constructors_accept_valid_arguments():
    assert VP(t_min=0.5).t_min == 0.5 and SubVP(t_min=1e-5).t_min == 1e-5
    cos = VP("cosine", t_min=1e-4, t_max=0.99, s=0.01)
    assert (cos.t_min, cos.t_max) == (1e-4, 0.99)
    assert VE(t_min=0.0).t_min == 0.0 and VE(t_min=0.5).t_min == 0.5
    assert VP(beta_min=0.0).schedule.beta_min == 0.0
    assert LinearSchedule(t_min=0.999).t_min == 0.999 and CosineSchedule(t_min=0.5).t_min == 0.5
    assert DiscreteSchedule.linear_ddpm(num_steps=2).num_steps == 2


# --- 4. ScoreModel sample_shape ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,error",
    [("ab", TypeError), (b"ab", TypeError), (3, TypeError), ((2.0,), TypeError), ((True, 2), TypeError),
     ((2, 0), ValueError), ([1, -4, 4], ValueError)],
)
def test_score_model_refuses_bad_sample_shape(shape, error):
    with pytest.raises(error, match="sample_shape"):
        ScoreModel(lambda x, t: x, VP(), sample_shape=shape)


def test_score_model_accepts_valid_sample_shapes():
    net = lambda x, t: x  # noqa: E731
    for shape, expect in [(None, None), ((2,), (2,)), ([1, 4, 4], (1, 4, 4)), (torch.Size([3, 5]), (3, 5)),
                          ((), ())]:
        assert ScoreModel(net, VP(), sample_shape=shape).sample_shape == expect
