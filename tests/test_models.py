import pytest
import torch

from sdekit import EDM, VP, ScoreModel, convert

from .helpers import PROCESS_NAMES, all_processes

PROCS = all_processes()


def _truth(p, batch=6, dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    eps = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    t = torch.linspace(max(p.t_min, 0.05 * p.t_max), 0.95 * p.t_max, batch, dtype=torch.float64)
    a, s = p.alpha(t)[:, None], p.sigma(t)[:, None]
    x = a * x0 + s * eps
    truth = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": -eps / s}
    return x, t, truth, a, s


@pytest.mark.parametrize("name", PROCESS_NAMES)
@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score", "edm"])
def test_every_parameterization_round_trips(name, prediction):
    p = PROCS[name]
    x, t, truth, a, s = _truth(p)

    def net(x_in, t_in):
        # A network that returns the exact native prediction for the known (x0, eps) pair.
        if prediction == "edm":
            torch.testing.assert_close(x_in, x / a)
            torch.testing.assert_close(t_in, (s / a).squeeze(1))
            return truth["x0"]
        torch.testing.assert_close(t_in, t)
        return truth[prediction]

    m = ScoreModel(net, p, prediction=prediction)
    for kind in ("eps", "x0", "v", "score"):
        torch.testing.assert_close(m.predict(x, t, kind), truth[kind], rtol=1e-10, atol=1e-10)
    assert m.nfe == 4


def test_convert_is_exact_and_inverse():
    p = VP()
    x, t, truth, a, s = _truth(p)
    for src in truth:
        for dst in truth:
            torch.testing.assert_close(convert(truth[src], src, dst, x, a.squeeze(1), s.squeeze(1)), truth[dst])


@pytest.mark.parametrize("time_input", ["t", "index", "sigma", "log_sigma", "log_snr"])
def test_time_input_conventions(time_input):
    p = PROCS["vp_discrete"]
    seen = {}

    def net(x, t_in):
        seen["t"] = t_in
        return torch.zeros_like(x)

    m = ScoreModel(net, p, prediction="eps", time_input=time_input)
    t = torch.tensor(0.4567, dtype=torch.float64)
    m.eps(torch.zeros(3, 2, dtype=torch.float64), t)
    expect = {"t": t, "index": 1000 * t - 1, "sigma": p.sigma(t), "log_sigma": p.log_sigma(t),
              "log_snr": p.log_snr(t)}[time_input]
    assert seen["t"].shape == (3,)  # a scalar time is expanded per sample
    torch.testing.assert_close(seen["t"], expect.expand(3))


def test_bad_input():
    p = VP()
    with pytest.raises(ValueError, match="unknown prediction"):
        ScoreModel(lambda x, t: x, p, prediction="noise")
    with pytest.raises(ValueError, match="unknown time_input"):
        ScoreModel(lambda x, t: x, p, time_input="step")
    with pytest.raises(ValueError, match="discrete schedule"):
        ScoreModel(lambda x, t: x, p, time_input="index")
    with pytest.raises(TypeError, match="callable"):
        ScoreModel(3, p)
    with pytest.raises(TypeError, match="DiffusionProcess"):
        ScoreModel(lambda x, t: x, "vp")
    m = ScoreModel(lambda x, t: x[:, :1], p)
    with pytest.raises(ValueError, match=r"returned shape \(2, 1\); expected the input's shape \(2, 3\)"):
        m.eps(torch.zeros(2, 3), 0.5)
    m = ScoreModel(lambda x, t: x, p)
    with pytest.raises(ValueError, match="NaN"):
        m.eps(torch.tensor([[float("nan")]]), 0.5)
    with pytest.raises(ValueError, match="outside the time domain"):
        m.eps(torch.zeros(1, 1), 2.0)
    with pytest.raises(ValueError, match="t must be a scalar or of shape"):
        m.eps(torch.zeros(2, 1), torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="unknown kind"):
        m.predict(torch.zeros(1, 1), 0.5, "noise")
    # EDM denoiser on the EDM process: net sees x unchanged and sigma = t.
    e = EDM()
    m = ScoreModel(lambda x, s: x / (1 + s[:, None] ** 2), e, prediction="edm")
    torch.testing.assert_close(m.x0(torch.ones(2, 1), 1.0), torch.full((2, 1), 0.5))
