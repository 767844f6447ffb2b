"""Exact toys for model collapse: the loop's data-mix policies on models with a closed-form answer.

Two models are refitted, generation after generation, on data the previous fit generated, mixed by the very
functions the self-learning loop uses (`mix.mix`, `mix.detector_resample`), so the loop's mix machinery is
checked against theory:

  gaussian    N(mu, sigma^2) refitted by MLE on its own samples (Shumailov et al. 2024, Nature, "AI models
              collapse when trained on recursively generated data"); metric: the fitted variance sigma^2_g.
  regression  OLS refitted on its own labels (Dohmatob, Feng & Kempe 2024, "Model collapse demystified: the
              case of regression"; Gerstgrasser et al. 2024, "Is model collapse inevitable? Breaking the curse
              of recursion by accumulating real and synthetic data"); metric: the excess test error
              ||w_g - w*||^2 = E_x (x'w_g - x'w*)^2 for x ~ N(0, I_d).

    frame = run_toys(seed=0)       # both toys x replace / accumulate / keep_real(0.5) / detector-weighted
    figure(frame).show()

Generation 0 is the fit on n real samples; generation g >= 1 draws n samples from fit g-1 (`accepted[g-1]`),
`mix(policy, accepted, real=real)` builds the training set and fit g is refitted on it. All repeats travel in
one frame (a `rep` column): exact for replace, accumulate and keep_real(f >= 0.5), which take whole frames;
keep_real(f < 0.5) draws real rows at random, so it (slower) and the detector's resampling are called per repeat.
Detector-weighted runs use the ideal detector P(real) = p(z) / (p(z) + q(z)) of the real density p and the
current fit's q (Drayson, Yilmaz & Lampos 2025), so weight 'odds' is the exact importance weight p/q.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import InputDataError
from .mix import DETECTOR_WEIGHTS, detector_resample, mix, parse_mix

TOYS = ("gaussian", "regression")
METRICS = {"gaussian": "fitted variance", "regression": "excess test error"}


def gaussian_exact(policy, n: int, generations: int) -> np.ndarray:
    """E[sigma^2_g], g = 0..generations, of the Gaussian toy (real data N(0, 1), MLE fits with ddof=0).

    Sketch: let fit g's training set have N rows, sum T and sum of squares Q (mu = T/N, sigma^2 = Q/N - mu^2).
    n draws from fit g-1 have E[sum^2 | fit] = n^2 mu^2 + n sigma^2 and E[sum of squares | fit] = n Q/N, so
    E[Q_g/N_g] = 1 under every policy here and E[sigma^2_g] = 1 - A_g with A_g = E[mu_g^2], A_0 = 1/n:
      replace       A_g = ((n-1) A_{g-1} + 1)/n                  =>  E[sigma^2_g] = ((n-1)/n)^(g+1)
      accumulate    N_g = (g+1) n: 1 - A_g = (1 - A_{g-1})(1 - 1/(n (g+1)^2))
                    =>  E[sigma^2_g] = prod_{j=1}^{g+1} (1 - 1/(n j^2)) > sin(pi/sqrt n)/(pi/sqrt n) >= 1 - pi^2/(6n)
      keep_real(f)  m = min(round(f/(1-f) n), n) of the n real rows, drawn afresh without replacement; their sum
                    has E[T_R^2] = m^2 xbar^2 + m s^2 (n-m)/(n-1) and E[mu_{g-1} | real] = xbar, so
                    A_g = (n (n-1) A_{g-1} + n + 3m) / (n+m)^2   (m = 0 is replace)
    """
    name, value = parse_mix(policy)
    m = _real_rows(name, value, n)
    a, out = 1.0 / n, [1.0 - 1.0 / n]
    for g in range(1, generations + 1):
        a = a + (1 - a) / (n * (g + 1) ** 2) if name == "accumulate" else (n * (n - 1) * a + n + 3 * m) / (n + m) ** 2
        out.append(1.0 - a)
    return np.array(out)


def regression_exact(policy, n: int, d: int, generations: int, noise: float = 1.0) -> np.ndarray:
    """E||w_g - w*||^2, g = 0..generations, of the regression toy (NaN where there is no closed form).

    Fixed design, as in Dohmatob et al. 2024 and Gerstgrasser et al. 2024: X (n x d, N(0, 1) entries) is drawn
    once per repeat; y_0 = X w* + e_0 and y_g = X w_{g-1} + e_g with fresh e_g ~ N(0, noise^2 I_n). The
    u_g = X^+ e_g are uncorrelated with E||u_g||^2 = noise^2 E tr (X'X)^-1 = noise^2 d/(n-d-1) =: c
    (inverse-Wishart mean), and w_0 - w* = u_0:
      replace            w_g - w* = u_0 + ... + u_g                          =>  c (g+1)  (linear growth)
      accumulate         OLS on [X; ..; X] is X^+ of the mean label: (g+1) e_g = sum_{i<=g} u_i + sum_{j<g} e_j,
                         solved by e_g = sum_{i<=g} u_i/(i+1)                 =>  c sum_{k=1}^{g+1} 1/k^2 < c pi^2/6
      keep_real(f>=0.5)  every real row plus the newest n: e_g = (u_0 + e_{g-1} + u_g)/2
                         =>  c (1 + (1 - 4^-g)/3) < 4c/3
    keep_real(f < 0.5) refits on a random subset of the real rows: no closed form.
    """
    name, value = parse_mix(policy)
    g, c = np.arange(generations + 1), noise ** 2 * d / (n - d - 1)
    if name == "replace":
        return c * (g + 1.0)
    if name == "accumulate":
        return c * np.cumsum(1.0 / (g + 1.0) ** 2)
    return c * (1 + (1 - 4.0 ** -g) / 3) if _real_rows(name, value, n) == n else np.full(len(g), np.nan)


def _real_rows(name: str, value: float | None, n: int) -> int:
    """Real rows keep_real adds to n synthetic ones, as mix() computes them."""
    return min(int(round(value / (1 - value) * n)), n) if name == "keep_real" and value else 0


class _Gaussian:
    """Real data N(0, 1); a fit is (mu, var) per repeat."""

    def __init__(self, n: int, repeats: int, d: int, noise: float):
        self.n, self.repeats, self.rep = n, repeats, np.repeat(np.arange(repeats), n)

    def real(self, rng: np.random.Generator) -> pd.DataFrame:
        return pd.DataFrame({"rep": self.rep, "x": rng.standard_normal(len(self.rep))})

    def fit(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        rep, x = frame["rep"].to_numpy(), frame["x"].to_numpy(float)
        count = np.bincount(rep, minlength=self.repeats)
        mu = np.bincount(rep, x, self.repeats) / count
        return mu, np.bincount(rep, (x - mu[rep]) ** 2, self.repeats) / count

    def metric(self, fit) -> np.ndarray:
        return fit[1]

    def sample(self, fit, real: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        mu, sd = fit[0][self.rep], np.sqrt(fit[1][self.rep])
        return pd.DataFrame({"rep": self.rep, "x": mu + sd * rng.standard_normal(len(self.rep))})

    def log_odds(self, frame: pd.DataFrame, fit) -> np.ndarray:  # log N(x; 0, 1) - log N(x; mu, var)
        mu, var = (np.asarray(a)[self.rep] for a in fit)
        x, var = frame["x"].to_numpy(float), np.maximum(var, 1e-300)
        return -x ** 2 / 2 + (x - mu) ** 2 / (2 * var) + np.log(var) / 2


class _Regression(_Gaussian):
    """y = x'w* + N(0, noise^2), x ~ N(0, I_d), fixed design; a fit is w (repeats x d)."""

    def __init__(self, n: int, repeats: int, d: int, noise: float):
        super().__init__(n, repeats, d, noise)
        self.d, self.noise, self.w = d, noise, np.ones(d) / np.sqrt(d)
        self.xs = [f"x{i}" for i in range(d)]

    def real(self, rng: np.random.Generator) -> pd.DataFrame:
        x = rng.standard_normal((len(self.rep), self.d))
        frame = pd.DataFrame(x, columns=self.xs)
        frame.insert(0, "rep", self.rep)
        frame["y"] = x @ self.w + self.noise * rng.standard_normal(len(x))
        return frame

    def fit(self, frame: pd.DataFrame) -> np.ndarray:
        frame = frame.iloc[np.argsort(frame["rep"].to_numpy(), kind="stable")]
        if len(frame) % self.repeats or not (np.bincount(frame["rep"]) == len(frame) // self.repeats).all():
            raise ValueError("regression toy: every repeat needs the same number of training rows")
        x = frame[self.xs].to_numpy(float).reshape(self.repeats, -1, self.d)
        y = frame["y"].to_numpy(float).reshape(self.repeats, -1, 1)
        return (np.linalg.pinv(np.einsum("rni,rnj->rij", x, x)) @ np.einsum("rni,rnk->rik", x, y))[..., 0]

    def metric(self, fit) -> np.ndarray:
        return ((fit - self.w) ** 2).sum(axis=1)

    def sample(self, fit, real: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        frame = real.copy()
        x = frame[self.xs].to_numpy(float)
        frame["y"] = (x * fit[self.rep]).sum(axis=1) + self.noise * rng.standard_normal(len(x))
        return frame

    def log_odds(self, frame: pd.DataFrame, fit) -> np.ndarray:  # log N(y; x'w*, s^2) - log N(y; x'w, s^2)
        x, y = frame[self.xs].to_numpy(float), frame["y"].to_numpy(float)
        return ((y - (x * fit[self.rep]).sum(axis=1)) ** 2 - (y - x @ self.w) ** 2) / (2 * self.noise ** 2)


def _check(toy, policy, generations, n, repeats, detector, d, noise) -> tuple[str, float | None, int]:
    if toy not in TOYS:
        raise InputDataError(f"Unknown toy {toy!r}.", f"Use one of {list(TOYS)}.")
    name, value = parse_mix(policy)  # raises InputDataError on an unknown policy
    if name == "accumulate_subsample":
        raise InputDataError("The toys have no closed form for accumulate_subsample.",
                             "Use 'replace', 'accumulate' or {'keep_real': f}.")
    if detector not in (None, *DETECTOR_WEIGHTS):
        raise InputDataError(f"Unknown detector weight {detector!r}.", f"Use None or one of {list(DETECTOR_WEIGHTS)}.")
    if int(generations) != generations or generations < 1:
        raise InputDataError(f"generations must be an integer >= 1, got {generations!r}.", "E.g. generations=10.")
    if int(repeats) != repeats or repeats < 2:
        raise InputDataError(f"repeats must be an integer >= 2 (for a standard error), got {repeats!r}.", "E.g. 1000.")
    if toy == "regression" and (int(d) != d or d < 1 or not noise > 0):
        raise InputDataError(f"The regression toy needs d >= 1 and noise > 0, got d={d!r}, noise={noise!r}.",
                             "E.g. d=5, noise=1.0.")
    low = d + 2 if toy == "regression" else 2
    if int(n) != n or n < low:
        raise InputDataError(f"n={n!r} is too small for the {toy} toy: E tr (X'X)^-1 is finite only for n > d + 1."
                             if toy == "regression" else f"n={n!r} is too small for the gaussian toy.",
                             f"Use n >= {low}.")
    return name, value, int(n)


def simulate(toy: str, policy="replace", generations: int = 10, n: int = 50, repeats: int = 1000, seed: int = 0,
             detector: str | None = None, d: int = 5, noise: float = 1.0) -> pd.DataFrame:
    """One toy under one data-mix policy: per generation 0..generations, the Monte-Carlo `mean` of the metric
    over `repeats`, its standard error `se`, and the closed form `exact` (`exact_kind` 'exact'; 'limit' for the
    Gaussian with detector weight 'odds': importance resampling targets N(0, 1), so sigma^2 -> 1 as n -> inf;
    'none' and NaN otherwise). detector: None, or 'odds'/'prob': each generation's samples are redrawn by
    `detector_resample` with the ideal detector's P(real) before the mix. Policies share each repeat's real data."""
    name, value, n = _check(toy, policy, generations, n, repeats, detector, d, noise)
    model = (_Gaussian if toy == "gaussian" else _Regression)(n, int(repeats), int(d), float(noise))
    rng = np.random.default_rng([seed, TOYS.index(toy)])
    real = model.real(rng)
    fit = model.fit(real)
    values, accepted = [model.metric(fit)], []
    pooled = name != "keep_real" or not value or value >= 0.5  # mix() then takes whole frames

    def block(frame: pd.DataFrame, r: int) -> pd.DataFrame:
        return frame.iloc[r * n:(r + 1) * n]

    for _ in range(int(generations)):
        frame = model.sample(fit, real, rng)
        if detector:
            p_real = 1 / (1 + np.exp(-np.clip(model.log_odds(frame, fit), -700, 700)))
            frame = pd.concat([detector_resample(block(frame, r), p_real[r * n:(r + 1) * n], detector, seed=int(s))
                               for r, s in enumerate(rng.integers(2 ** 31, size=repeats))], ignore_index=True)
            frame = frame.drop(columns="detector_weight")  # mix() needs the real frame's columns on every frame
        accepted.append(frame)
        if pooled:
            train = mix(policy, accepted, real=real, seed=seed)
        else:
            train = pd.concat([mix(policy, [block(a, r) for a in accepted], real=block(real, r), seed=int(s))
                               for r, s in enumerate(rng.integers(2 ** 31, size=repeats))], ignore_index=True)
        fit = model.fit(train)
        values.append(model.metric(fit))
    values = np.array(values)
    if detector:
        exact = np.ones(len(values)) if toy == "gaussian" and detector == "odds" else np.full(len(values), np.nan)
        kind = "limit" if toy == "gaussian" and detector == "odds" else "none"
    else:
        exact = gaussian_exact(policy, n, generations) if toy == "gaussian" else \
            regression_exact(policy, n, d, generations, noise)
        kind = "exact" if np.isfinite(exact).all() else "none"
    label = (name if value is None else f"{name}({value:g})") + (f"+detector({detector})" if detector else "")
    return pd.DataFrame({"toy": toy, "policy": label, "generation": np.arange(len(values)), "mean": values.mean(1),
                         "se": values.std(1, ddof=1) / np.sqrt(repeats), "exact": exact, "exact_kind": kind,
                         "n": n, "repeats": int(repeats)})


def run_toys(seed: int = 0, repeats: int = 1000, generations: int = 10, n: int = 50,
             detector_repeats: int = 300) -> pd.DataFrame:
    """Both toys (regression: d=5, noise 1) under replace, accumulate, keep_real(0.5) and detector-weighted
    ('odds') replace. The detector's resampling runs once per repeat and generation (~0.2 ms each), so it gets
    `detector_repeats`; the rest are one pooled mix() per generation. About 3 s with the defaults."""
    runs = [("replace", None), ("accumulate", None), ({"keep_real": 0.5}, None), ("replace", "odds")]
    return pd.concat([simulate(toy, policy, generations, n, detector_repeats if detector else repeats, seed, detector)
                      for toy in TOYS for policy, detector in runs], ignore_index=True)


def figure(frame: pd.DataFrame):
    """Plotly figure, one panel per toy: simulated mean +- 2 SE per policy against its closed form (dashed;
    dotted where it is only the n -> inf limit)."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    toys = list(dict.fromkeys(frame["toy"]))
    fig = make_subplots(rows=1, cols=len(toys), subplot_titles=[f"{t}: {METRICS.get(t, t)}" for t in toys])
    colors = {p: qualitative.Plotly[i % 10] for i, p in enumerate(dict.fromkeys(frame["policy"]))}
    for col, toy in enumerate(toys, start=1):
        for policy, rows in frame[frame["toy"] == toy].groupby("policy", sort=False):
            style = dict(legendgroup=policy, showlegend=col == 1)
            fig.add_trace(go.Scatter(x=rows["generation"], y=rows["mean"], error_y=dict(array=2 * rows["se"]),
                                     mode="lines+markers", name=policy, line_color=colors[policy], **style),
                          row=1, col=col)
            if rows["exact"].notna().any():
                dash = "dot" if (rows["exact_kind"] == "limit").all() else "dash"
                fig.add_trace(go.Scatter(x=rows["generation"], y=rows["exact"], mode="lines", name=f"{policy} (theory)",
                                         line=dict(color=colors[policy], dash=dash), legendgroup=policy,
                                         showlegend=False), row=1, col=col)
        fig.update_xaxes(title_text="generation", row=1, col=col)
    return fig.update_layout(title="Exact toys: simulated mean ± 2 SE vs closed form")
