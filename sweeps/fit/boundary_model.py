"""The boundary model: one Bayesian logistic fit of P(bad) over x and every other varying axis.

    logit P(bad) = k * (u(x) - u(x_c)),   e(x_c) = c0 + sum_a delta_a[level_a] + tau * w_slice + sigma * z_seed

u is x on its fit scale (`AxisScale`: the sweep's declared scale, or log1p for log-spaced
values), mapped to [0, 1] over the swept range and flipped when P(bad) falls with x: it sets the
shape of the transition. x_c, the crossing of P(bad) = 0.5, is placed on the effect scale e: log(x)
(log(x + 1) when x reaches 0) mapped to [0, 1] over the range, so that a level moves the crossing
by a factor (its `shift`) wherever the others are. c0 is the crossing with every axis at its
reference level (the smallest value, `none` first), delta_a[level] how far a level moves it, as a
fraction of the range on the effect scale. Every other axis enters as a factor (any shape of
effect, numeric or not). A slice (one combination of levels) departs from the additive effects by
tau * w_slice, with one spread tau learned from the trials: the interactions the data support,
pooled away when there are none. The seed is a random effect shared by all of that seed's trials,
since a seed's network and data order are shared across the cells it runs in.

Why a posterior and not a maximum-likelihood fit: phases on a sweep's grid are often perfectly
separated (every seed agrees in every cell), where the likelihood has no maximum and a bootstrap
over three seeds has nothing to resample. The posterior under weak priors (below) stays proper:
with separation it spreads the crossing over the bracket between the two grid values around it.
Its 90% intervals are checked for coverage on synthetic sweeps with known boundaries
(`benchmarks/interval_coverage.py`). Draws come from emcee's affine-invariant ensemble started at
the posterior mode, moved by differential evolution (`sampler="de"`): at the same chain length
its intervals vary less with the sampler's seed than the stretch move's and sit nearer a long
chain's (`benchmarks/sampler_spread.py`).

A per-slice fit is the same model with no axes (`fit_model(rows, x, [], ...)`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .phase_fit import AxisScale, fmt, is_null, sorted_values

INTERVAL = (5.0, 95.0)  # a 90% interval
# Priors, in units of the swept range: the crossing anywhere in or somewhat beyond the range, a
# level's shift by a factor rarely beyond 1/7..7 (a move of up to the range when x goes negative), transitions from a third of the range wide to sharper
# than any grid (k = 50: 10% to 90% over 9% of the range), seeds that move the crossing by a few
# percent of the range.
PRIOR_C0 = (0.5, 0.75)
PRIOR_DELTA = 0.75  # on a linear effect scale (x goes negative), a fraction of the range
PRIOR_LOG_SHIFT = 1.0  # on a log effect scale, the sd of a level's log factor: most shifts within 1/7x..7x
PRIOR_LOG_K = (np.log(50.0), 1.5)
PRIOR_SIGMA = 0.05  # half-normal scale of the seed effect
WALKERS_MIN, BURN, KEEP = 32, 400, 400


@dataclass
class Crossing:
    """Where P(bad) crosses 0.5 for one combination of levels, in x units, with its 90% interval.

    A bound is None when the interval reaches past the swept range on that side (the data bound
    the crossing from one side only); x_critical is None, with a reason, when the posterior puts
    the crossing outside the range more often than not."""

    x_critical: float | None
    ci_low: float | None
    ci_high: float | None
    p_in_range: float  # posterior probability that the crossing lies inside the swept range
    reason: str | None = None


def _from_fit(scale: AxisScale, t):
    t = np.asarray(t, dtype=float)
    return np.exp(t) - scale.offset if scale.log else t


def effect_scale(values) -> AxisScale:
    """The scale a level's move is a factor on: log(x), log(x + 1) when x reaches 0, linear when
    x goes negative."""
    low = float(np.min(values))
    return AxisScale(False) if low < 0 else AxisScale(True, 1.0 if low == 0 else 0.0)


@dataclass
class Coordinates:
    """x to u (the link's [0, 1], flipped when P(bad) falls with x) and e (the crossing's [0, 1])."""

    scale: AxisScale
    effect: AxisScale
    t_range: tuple[float, float]
    e_range: tuple[float, float]
    direction: int  # +1: P(bad) rises with x

    @classmethod
    def of(cls, x: np.ndarray, scale: AxisScale) -> "Coordinates":
        effect = effect_scale(x)
        t, e = scale.to_fit(x), effect.to_fit(x)
        return cls(scale, effect, (float(t.min()), float(t.max())), (float(e.min()), float(e.max())), 1)

    def to_u(self, x) -> np.ndarray:
        lo, hi = self.t_range
        with np.errstate(divide="ignore", invalid="ignore"):  # a crossing far below the range: u = -inf
            u = (self.scale.to_fit(x) - lo) / (hi - lo)
        return u if self.direction > 0 else 1.0 - u

    def to_e(self, x) -> np.ndarray:
        lo, hi = self.e_range
        return (self.effect.to_fit(x) - lo) / (hi - lo)

    def to_x(self, e) -> np.ndarray:
        lo, hi = self.e_range
        return _from_fit(self.effect, lo + np.asarray(e, dtype=float) * (hi - lo))


@dataclass
class BoundaryModel:
    x: str
    coords: Coordinates
    levels: dict[str, list]  # per axis, its levels, the reference first
    thresholds: np.ndarray  # (draws, 1 + sum(levels - 1)): c0, then each non-reference level's delta (e units)
    n_trials: int
    n_seeds: int
    acceptance: float
    columns: list[tuple[str, Any]] = field(default_factory=list)  # (axis, level) of each delta
    slices: list[tuple[str, ...]] = field(default_factory=list)  # slices with trials, as slice_key
    departures: np.ndarray | None = None  # (draws, slices): each slice's departure from the additive crossing
    tau: np.ndarray | None = None  # (draws,): the spread of departures the data support
    k: np.ndarray | None = None  # (draws,): the transition's steepness on u
    seed_values: list = field(default_factory=list)  # the seeds with trials, in order
    seed_offsets: np.ndarray | None = None  # (draws, seeds): each seed's move of the crossing (e units)

    def threshold_draws(self, combo: dict[str, Any]) -> np.ndarray:
        """Draws of the crossing (e units) with each axis at combo's level, others at reference:
        the additive part plus that slice's own departure (a slice never run: a fresh one of the
        spread the data support)."""
        c = self.thresholds[:, 0].copy()
        for j, (axis, level) in enumerate(self.columns, start=1):
            if axis in combo and _same(combo[axis], level):
                c += self.thresholds[:, j]
        if not self.slices:
            return c
        key = slice_key(self.levels, combo)
        if key in self.slices:
            return c + self.departures[:, self.slices.index(key)]
        fresh = np.random.default_rng(zlib.crc32("|".join(key).encode())).standard_normal(len(c))
        return c + self.tau * fresh

    def departs(self, combo: dict[str, Any]) -> bool:
        """Whether a slice's own crossing departs from the additive pattern beyond its 90% interval
        (an interaction between axes that the data support)."""
        key = slice_key(self.levels, combo)
        if key not in self.slices:
            return False
        low, high = np.percentile(self.departures[:, self.slices.index(key)], INTERVAL)
        return bool(low > 0 or high < 0)

    def p_bad(self, thresholds: np.ndarray, x, seed, draws: np.ndarray) -> np.ndarray:
        """P(bad) of a trial of `seed` at each x, per draw (len(draws), len(x)), given `thresholds`,
        its slice's crossing (e units) at those draws; a seed with no trials sits at the median."""
        e = thresholds
        if seed in self.seed_values:
            e = e + self.seed_offsets[draws, self.seed_values.index(seed)]
        threshold = self.coords.to_u(self.coords.to_x(np.clip(e, -10.0, 10.0)))
        logit = self.k[draws, None] * (self.coords.to_u(np.asarray(x, dtype=float))[None, :] - threshold[:, None])
        return 1.0 / (1.0 + np.exp(-np.clip(logit, -50, 50)))

    def to_x(self, e) -> np.ndarray:
        return self.coords.to_x(e)

    def to_e(self, x) -> np.ndarray:
        return self.coords.to_e(x)

    def crossing(self, combo: dict[str, Any]) -> Crossing:
        return summarize(self.threshold_draws(combo), self)


def _same(a, b) -> bool:
    return (is_null(a) and is_null(b)) or fmt(a) == fmt(b)


def summarize(e: np.ndarray, model: BoundaryModel) -> Crossing:
    """A crossing's draws (e units) as x_critical, its interval and the chance it is in range."""
    inside = float(np.mean((e >= 0) & (e <= 1)))
    low, mid, high = np.percentile(e, [INTERVAL[0], 50.0, INTERVAL[1]])
    if not 0 <= mid <= 1:
        above = (mid < 0) == (model.coords.direction > 0)
        where = "above 0.5 from the smallest" if above else "below 0.5 up to the largest"
        return Crossing(None, None, None, inside, f"P(bad) stays {where} {model.x} swept (posterior: "
                                                  f"{inside:.2f} of draws cross inside the range)")
    bound = lambda v: float(model.to_x(v)) if 0 <= v <= 1 else None  # noqa: E731
    return Crossing(float(model.to_x(mid)), bound(low), bound(high), inside)


class ModelUnfit(ValueError):
    """The table cannot support the model; the message says why in one line."""


def design(trials: pd.DataFrame, x: str, axes: list[str], scale: AxisScale):
    """The coordinates, u of every trial, the 0/1 outcome, the crossing's design matrix, seed
    indices and levels."""
    values = trials[x].to_numpy(dtype=float)
    coords = Coordinates.of(values, scale)
    if coords.t_range[1] <= coords.t_range[0]:
        raise ModelUnfit(f"every trial that fit has the same {x}: no range to place a boundary in")
    bad = (trials["phase"] == "bad").to_numpy().astype(float)
    u = coords.to_u(values)
    coords.direction = _direction(u, bad)
    levels = {a: sorted_values(trials[a]) for a in axes}
    columns = [(a, v) for a in axes for v in levels[a][1:]]
    A = np.ones((len(trials), 1 + len(columns)))
    for j, (a, v) in enumerate(columns, start=1):
        A[:, j] = trials[a].map(lambda w, v=v: _same(w, v)).to_numpy(dtype=float)
    seeds, seed_index = np.unique(trials["seed"].to_numpy(), return_inverse=True)
    # with one axis a slice is a level, and its departure would repeat that level's effect
    keys = [slice_key(levels, row) for row in trials[axes].to_dict("records")] if len(axes) > 1 else [()] * len(trials)
    slice_keys = sorted(set(keys))
    slice_index = np.array([slice_keys.index(k) for k in keys], dtype=int)
    return coords, coords.to_u(values), bad, A, seed_index, len(seeds), levels, columns, slice_keys, slice_index


def slice_key(levels: dict[str, list], combo: dict[str, Any]) -> tuple[str, ...]:
    """A slice's identity: every axis's level (the reference where combo does not say)."""
    return tuple(fmt(combo[a]) if a in combo else fmt(levels[a][0]) for a in levels)


def _direction(u: np.ndarray, bad: np.ndarray) -> int:
    """+1 when bad trials sit at larger u than good ones on average."""
    return 1 if u[bad == 1].mean() >= u[bad == 0].mean() else -1


class _Posterior:
    """Log posterior over [c (n_c), log k, z (n_seeds), log sigma, w (n_slices), log tau] (w and
    tau only when there is more than one slice), vectorised over walkers."""

    def __init__(self, coords, u, bad, A, seed_index, n_seeds, slice_index, n_slices):
        self.coords, self.u, self.sign, self.A = coords, u, 2 * bad - 1, A
        self.seed_index, self.n_seeds = seed_index, n_seeds
        self.slice_index, self.n_slices = slice_index, (n_slices if n_slices > 1 else 0)
        self.n_c = A.shape[1]
        self.dim = self.n_c + 1 + n_seeds + 1 + (self.n_slices + 1 if self.n_slices else 0)
        mean = np.zeros(self.n_c)
        mean[0] = PRIOR_C0[0]
        e_width = coords.e_range[1] - coords.e_range[0]
        sd = np.full(self.n_c, PRIOR_LOG_SHIFT / e_width if coords.effect.log else PRIOR_DELTA)
        sd[0] = PRIOR_C0[1]
        self.c_mean, self.c_sd = mean, sd
        self.tau_scale = sd[1] if self.n_c > 1 else PRIOR_DELTA  # a slice may depart as much as a level moves

    def split(self, theta: np.ndarray):
        """(c, log k, z, log sigma, w, log tau) of each walker; w and log tau empty without slices."""
        n, s = self.n_c, self.n_seeds
        c, log_k, z, log_sigma = theta[:, :n], theta[:, n], theta[:, n + 1: n + 1 + s], theta[:, n + 1 + s]
        rest = theta[:, n + 2 + s:]
        return c, log_k, z, log_sigma, rest[:, : self.n_slices], rest[:, self.n_slices:].reshape(len(theta), -1)

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        theta = np.atleast_2d(theta)
        c, log_k, z, log_sigma, w, log_tau = self.split(theta)
        sigma = np.exp(log_sigma)
        crossing = c @ self.A.T + sigma[:, None] * z[:, self.seed_index]  # e units
        prior = (-0.5 * (((c - self.c_mean) / self.c_sd) ** 2).sum(axis=1)
                 - 0.5 * ((log_k - PRIOR_LOG_K[0]) / PRIOR_LOG_K[1]) ** 2
                 - 0.5 * (z ** 2).sum(axis=1)
                 - 0.5 * (sigma / PRIOR_SIGMA) ** 2 + log_sigma)  # half-normal sigma, on log sigma
        if self.n_slices:
            tau = np.exp(log_tau[:, 0])
            crossing = crossing + tau[:, None] * w[:, self.slice_index]
            prior = prior - 0.5 * (w ** 2).sum(axis=1) - 0.5 * (tau / self.tau_scale) ** 2 + log_tau[:, 0]
        # far past the range a crossing's place no longer matters; the bound keeps exp finite
        threshold = self.coords.to_u(self.coords.to_x(np.clip(crossing, -10.0, 10.0)))
        logit = np.exp(log_k)[:, None] * (self.u[None, :] - threshold)
        loglik = -np.logaddexp(0.0, -self.sign[None, :] * logit).sum(axis=1)
        return loglik + prior

    def start(self) -> np.ndarray:
        theta = np.zeros(self.dim)
        theta[0] = PRIOR_C0[0]
        theta[self.n_c] = PRIOR_LOG_K[0]
        theta[self.n_c + 1 + self.n_seeds] = np.log(PRIOR_SIGMA / 2)
        if self.n_slices:
            theta[-1] = np.log(self.tau_scale / 2)
        return theta


def _mode(post: _Posterior) -> np.ndarray:
    from scipy.optimize import minimize

    with np.errstate(all="ignore"):  # the line search may step far out before it comes back
        found = minimize(lambda th: -float(post(th)[0]), post.start(), method="BFGS")
    return found.x


def fit_model(trials: pd.DataFrame, x: str, axes: list[str], scale: AxisScale, seed: int = 0,
              sampler: str = "de") -> BoundaryModel:
    """Fit the model to the good/bad trials of `trials` (others, and rows with a null x, are left
    out). `sampler`: emcee's moves, "stretch" or "de". Raises ModelUnfit with a one-line reason
    when the table cannot support it."""
    import emcee

    rows = trials[trials["phase"].isin(["good", "bad"]) & trials[x].notna()]
    if rows.empty:
        raise ModelUnfit("no trial reached a global minimum: there is no phase to model")
    bad = rows["phase"] == "bad"
    if bad.all() or not bad.any():
        raise ModelUnfit(f"all {len(rows)} trials that fit are {'bad' if bad.all() else 'good'}: one phase only, "
                         f"no boundary in the swept range")
    coords, u, y, A, seed_index, n_seeds, levels, columns, slice_keys, slice_index = design(rows, x, axes, scale)
    post = _Posterior(coords, u, y, A, seed_index, n_seeds, slice_index, len(slice_keys))
    n_params = post.n_c + 1  # seeds' and slices' departures are shrunk to a common prior, not free parameters
    if len(rows) < n_params:
        raise ModelUnfit(f"{len(rows)} trials that fit for {n_params} parameters (a threshold per level and a slope): "
                         f"run more trials")
    rng = np.random.default_rng(seed)
    walkers = max(WALKERS_MIN, 2 * post.dim + 2)
    start = _mode(post) + 1e-3 * rng.standard_normal((walkers, post.dim))
    moves = [(emcee.moves.DEMove(), 0.8), (emcee.moves.DESnookerMove(), 0.2)] if sampler == "de" else None
    ensemble = emcee.EnsembleSampler(walkers, post.dim, post, vectorize=True, moves=moves)
    ensemble.random_state = np.random.RandomState(int(rng.integers(2**31))).get_state()  # reproducible draws
    ensemble.run_mcmc(start, BURN + KEEP)
    chain = ensemble.get_chain(discard=BURN, flat=True)
    _, log_k, z, log_sigma, w, log_tau = post.split(chain)
    departures = np.exp(log_tau) * w if post.n_slices else np.zeros((len(chain), 0))
    return BoundaryModel(x, coords, levels, chain[:, : post.n_c], len(rows), n_seeds,
                         float(np.mean(ensemble.acceptance_fraction)), columns,
                         slice_keys if post.n_slices else [], departures,
                         np.exp(log_tau[:, 0]) if post.n_slices else np.zeros(len(chain)),
                         np.exp(log_k), np.unique(rows["seed"].to_numpy()).tolist(), np.exp(log_sigma)[:, None] * z)


def _bound(v) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def level_effect(model: BoundaryModel, axis: str, level: Any, reference: Crossing) -> dict[str, Any]:
    """One level's entry of `effects`: its crossing with the other axes at their reference, and
    its ratio to the reference's crossing (the reference level itself: 1)."""
    u = model.threshold_draws({axis: level})
    here = summarize(u, model)
    out = {"axis": axis, "value": _json_value(level), "x_critical": here.x_critical,
           "ci": [here.ci_low, here.ci_high] if here.x_critical is not None else None,
           "p_in_range": round(here.p_in_range, 3)}
    if _same(level, model.levels[axis][0]):
        return {**out, "shift": 1.0, "shift_ci": [1.0, 1.0], "reference": True, **_reason(here)}
    x_level, x_ref = model.to_x(u), model.to_x(model.threshold_draws({}))
    x_min, x_max = sorted(float(v) for v in model.to_x(np.array([0.0, 1.0])))
    clip = lambda v: np.clip(v, x_min, x_max)  # a crossing past the range counts as at its edge: a safe bound
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = clip(x_level) / clip(x_ref)
    lo, mid, hi = np.nanpercentile(ratio, [INTERVAL[0], 50.0, INTERVAL[1]])
    known = lambda draws: (np.percentile(draws, INTERVAL[0]) >= x_min, np.percentile(draws, INTERVAL[1]) <= x_max)
    (level_low, level_high), (ref_low, ref_high) = known(x_level), known(x_ref)
    both = here.x_critical is not None and reference.x_critical is not None
    return {**out, "shift": _bound(mid) if both else None,
            "shift_ci": [_bound(lo) if level_low and ref_high else None,
                         _bound(hi) if level_high and ref_low else None],
            **_reason(here)}


def _reason(c: Crossing) -> dict[str, str]:
    return {"reason": c.reason} if c.reason else {}


def _json_value(v):
    if is_null(v):
        return None
    return v.item() if isinstance(v, np.generic) else v


def excludes_one(ci: list | None) -> bool:
    if not ci:
        return False
    lo, hi = ci
    return (lo is not None and lo > 1.0) or (hi is not None and hi < 1.0)


def effects(model: BoundaryModel) -> dict[str, Any]:
    """What each level of each axis does to the boundary: `effects` (one entry per level), the
    reference crossing, the axes ranked by how far their levels move the threshold (the largest
    posterior-median |delta|, as a fraction of the swept range on the fit scale), and the levels
    whose shift interval excludes 1."""
    reference = model.crossing({})
    entries = [level_effect(model, axis, level, reference) for axis, levels in model.levels.items() for level in levels]
    moves, base = {}, model.threshold_draws({})
    for axis, levels in model.levels.items():
        for level in levels[1:]:
            move = float(np.median(np.abs(model.threshold_draws({axis: level}) - base)))
            moves[axis] = max(moves.get(axis, 0.0), move)
    ranking = [{"axis": a, "largest_move": round(m, 4)} for a, m in sorted(moves.items(), key=lambda kv: -kv[1])]
    return {"effects": entries,
            "reference": {"levels": {a: _json_value(v[0]) for a, v in model.levels.items()},
                          "x_critical": reference.x_critical, "ci": [reference.ci_low, reference.ci_high],
                          **_reason(reference)},
            "ranking": ranking,
            "moved": [{"axis": e["axis"], "value": e["value"], "shift_ci": e["shift_ci"]}
                      for e in entries if not e.get("reference") and excludes_one(e["shift_ci"])],
            "n_trials": model.n_trials, "n_seeds": model.n_seeds, "draws": int(len(model.thresholds)),
            "acceptance": round(model.acceptance, 3)}


@dataclass
class Boundary:
    """One slice's crossing: the model fitted to that slice's trials alone."""

    y: Any
    by: dict[str, Any]
    x_critical: float | None
    ci_low: float | None
    ci_high: float | None
    n_trials: int
    n_seeds: int
    reason: str | None = None
    p_in_range: float = 0.0  # posterior probability that the crossing lies inside the swept range

    def as_dict(self) -> dict[str, Any]:
        out = {"y": _json_value(self.y), "by": {k: _json_value(v) for k, v in self.by.items()},
               "x_critical": self.x_critical, "ci_low": self.ci_low, "ci_high": self.ci_high,
               "n_trials": self.n_trials, "n_seeds": self.n_seeds, "p_in_range": round(self.p_in_range, 3)}
        if self.reason:
            out["reason"] = self.reason
        return out


def fit_boundary(trials: pd.DataFrame, x: str, scale: AxisScale, y_value, by: dict, seed: int = 0,
                 sampler: str = "de") -> Boundary:
    """The crossing of P(bad) along x in one slice (the model with no other axis). Trials whose x is
    null (clip_norm: none) have no place on the line and are left out."""
    fitted = trials[trials["phase"].isin(["good", "bad"]) & trials[x].notna()]
    n_seeds = int(fitted["seed"].nunique())
    if fitted.empty:
        return Boundary(y_value, by, None, None, None, 0, 0, "no trial in this slice reached a global minimum")
    try:
        model = fit_model(fitted, x, [], scale, seed, sampler)
    except ModelUnfit as why:
        return Boundary(y_value, by, None, None, None, len(fitted), n_seeds, str(why))
    c = model.crossing({})
    return Boundary(y_value, by, c.x_critical, c.ci_low, c.ci_high, len(fitted), n_seeds, c.reason, c.p_in_range)
