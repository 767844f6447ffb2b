"""The exact toys (workbench/toys.py): the loop's mix policies against closed-form model-collapse curves."""
from __future__ import annotations

import numpy as np
import pytest

from workbench.errors import InputDataError
from workbench.toys import gaussian_exact, regression_exact, run_toys, simulate

N, G = 50, 10


def assert_within_mc_error(frame, k=4.0):
    z = (frame["mean"] - frame["exact"]) / frame["se"]
    assert (frame["exact_kind"] == "exact").all()
    assert (z.abs() <= k).all(), frame.assign(z=z).to_string()


@pytest.mark.parametrize("policy", ["replace", "accumulate", {"keep_real": 0.5}])
def test_gaussian_matches_closed_form(policy):
    frame = simulate("gaussian", policy, generations=G, n=N, repeats=1000, seed=1)
    assert list(frame["generation"]) == list(range(G + 1))
    assert_within_mc_error(frame)
    last = frame.iloc[-1]
    if policy == "replace":  # collapse: the variance shrinks, significantly, like ((n-1)/n)^(g+1)
        assert last["mean"] + 4 * last["se"] < 1.0
        assert last["exact"] == pytest.approx(((N - 1) / N) ** (G + 1))
    else:  # real data in the mix: no collapse, within a few 1/n of 1
        assert last["mean"] - 4 * last["se"] > ((N - 1) / N) ** (G + 1)
        assert last["exact"] > 1 - np.pi ** 2 / (6 * N) - 1e-12


def test_gaussian_keep_real_subset_matches_closed_form():
    # f < 0.5 draws a random subset of the real rows: mix() is called per repeat; m = round(n/3) = 10 of 30
    frame = simulate("gaussian", {"keep_real": 0.25}, generations=4, n=30, repeats=300, seed=2)
    assert_within_mc_error(frame)
    a = 1 / 30
    for _ in range(4):
        a = (30 * 29 * a + 30 + 3 * 10) / 40 ** 2
    assert frame["exact"].iloc[-1] == pytest.approx(1 - a)


def test_gaussian_exact_formulas():
    g = np.arange(6)
    assert np.allclose(gaussian_exact("replace", 20, 5), (19 / 20) ** (g + 1))
    assert np.allclose(gaussian_exact({"keep_real": 0.0}, 20, 5), gaussian_exact("replace", 20, 5))
    prod = np.cumprod(1 - 1 / (20 * (g + 1.0) ** 2))
    assert np.allclose(gaussian_exact("accumulate", 20, 5), prod)
    assert np.allclose(gaussian_exact({"keep_real": 0.75}, 20, 5), gaussian_exact({"keep_real": 0.5}, 20, 5))


@pytest.mark.parametrize("policy", ["replace", "accumulate", {"keep_real": 0.5}])
def test_regression_matches_closed_form(policy):
    d = 5
    frame = simulate("regression", policy, generations=G, n=N, repeats=1000, seed=3, d=d)
    assert_within_mc_error(frame)
    c = d / (N - d - 1)
    mean = frame["mean"].to_numpy()
    if policy == "replace":  # linear growth, c per generation
        slope, _ = np.polyfit(frame["generation"], mean, 1)
        assert slope == pytest.approx(c, rel=0.1)
        assert mean[-1] - 4 * frame["se"].iloc[-1] > 0.5 * (G + 1) * c
    elif policy == "accumulate":  # bounded by c pi^2/6
        assert (mean - 4 * frame["se"] <= c * np.pi ** 2 / 6).all()
        assert frame["exact"].iloc[-1] == pytest.approx(c * sum(1 / k ** 2 for k in range(1, G + 2)))
    else:
        assert (mean - 4 * frame["se"] <= c * 4 / 3).all()


def test_regression_exact_formulas():
    c = 5 / (20 - 5 - 1)
    assert np.allclose(regression_exact("replace", 20, 5, 3), c * np.array([1, 2, 3, 4]))
    assert np.allclose(regression_exact("accumulate", 20, 5, 2), c * np.array([1, 1.25, 1.25 + 1 / 9]))
    assert np.allclose(regression_exact({"keep_real": 0.5}, 20, 5, 2), c * np.array([1, 1.25, 1 + 5 / 16]))
    assert np.isnan(regression_exact({"keep_real": 0.1}, 20, 5, 2)).all()


def test_detector_weighted_gaussian_does_not_collapse():
    frame = simulate("gaussian", "replace", generations=G, n=N, repeats=1000, seed=4, detector="odds")
    assert frame["policy"].iloc[0] == "replace+detector(odds)" and (frame["exact_kind"] == "limit").all()
    last, half = frame.iloc[-1], frame.iloc[G // 2]
    shrink = 1 - ((N - 1) / N) ** (G + 1)  # plain replace's expected shortfall at G
    assert last["mean"] - 4 * last["se"] > 1 - shrink  # well above replace
    assert 1 - last["mean"] < shrink / 2  # near 1: a finite-n resampling bias, not a compounding one
    assert abs(last["mean"] - half["mean"]) <= 4 * np.hypot(last["se"], half["se"])  # no drift


def test_detector_weighted_regression_stays_bounded():
    frame = simulate("regression", "replace", generations=8, n=N, repeats=300, seed=5, detector="odds")
    assert frame["exact"].isna().all()
    last, half = frame.iloc[-1], frame.iloc[4]
    assert last["mean"] + 4 * last["se"] < regression_exact("replace", N, 5, 8)[-1] / 2
    assert abs(last["mean"] - half["mean"]) <= 4 * np.hypot(last["se"], half["se"])


def test_run_toys_and_figure():
    frame = run_toys(seed=0, repeats=40, generations=2, detector_repeats=10)
    assert set(frame["toy"]) == {"gaussian", "regression"}
    assert set(frame["policy"]) == {"replace", "accumulate", "keep_real(0.5)", "replace+detector(odds)"}
    assert len(frame) == 2 * 4 * 3 and np.isfinite(frame["mean"]).all()
    pytest.importorskip("plotly")
    from workbench.toys import figure

    fig = figure(frame)
    assert len(fig.data) >= 2 * 4 + 7  # a simulated curve per toy and policy, plus the closed forms


@pytest.mark.parametrize("kwargs, needle", [
    (dict(toy="poisson"), "Unknown toy"),
    (dict(policy="bogus"), "Unknown data-mix policy"),
    (dict(policy={"accumulate_subsample": 10}), "no closed form"),
    (dict(generations=0), "generations"),
    (dict(repeats=1), "repeats"),
    (dict(toy="regression", n=6, d=5), "too small"),
    (dict(toy="gaussian", n=1), "too small"),
    (dict(toy="regression", noise=0.0), "noise"),
    (dict(detector="logit"), "detector"),
])
def test_bad_input(kwargs, needle):
    args = dict(toy="gaussian", policy="replace", generations=2, n=10, repeats=10) | kwargs
    with pytest.raises(InputDataError, match=needle):
        simulate(**args)
