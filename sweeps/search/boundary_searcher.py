"""Boundary search as a Ray Tune `Searcher`, so it runs on a cluster like any search and resumes
with the sweep (Tune saves and restores its state with the experiment).

It works in rounds: the coarse grid first; then, once a round's trials have all finished, one fit
of the boundary model over every finished trial (sweeps.search.boundary) and the next round's
trials, as many as fill the trial slots, until every slice is settled or the budget is spent.
Waiting for the whole round keeps the search a function of the trials' results alone, not of the
order they finish in: a resumed search runs the same trials.
Each round's fits are saved with the experiment as `<experiment>/boundary_search.json`, so the
path to the answer can be read back.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any

import numpy as np
from ray.tune.search import Searcher

from trainables.reports import FINAL_KEY, is_final

from .boundary import RESULT_FIELDS, Strategy, fit_joint, next_trials, slice_fits
from ..design.boundary_grid import cell_id, coarse_grid, trial_id
from ..fit.phase_fit import fmt, fmt_interval
from ..design.spec import SweepSpec, parse_sweep

HISTORY_FILE = "boundary_search.json"


def _to_stderr(message: str) -> None:
    """Round notices go where the CLI's notices go, never into a command's stdout (JSON)."""
    print(message, file=sys.stderr, flush=True)


def _plain(v):
    """numpy scalars in results and fits as JSON numbers."""
    return v.item() if isinstance(v, np.generic) else str(v)


class BoundarySearcher(Searcher):
    def __init__(self, spec: SweepSpec, on_notice=None, slots: int | None = None,
                 stored: list[tuple[dict[str, Any], dict[str, Any]]] = (), strategy: Strategy = Strategy()):
        """`stored`: (config values, final report) of the trials a grid of the same sweep ran that
        this search could run itself (`boundary_grid.search_cell`); refining the grid, it takes
        them as its first round instead of the coarse grid, and runs none of those trials again.
        `strategy`: how it spends its trials (the default, or `Strategy.CELLS` to compare)."""
        super().__init__()
        self.spec_data = spec.model_dump()
        self.slots = slots or len(spec.seeds)  # trials that run at once: a round fills them
        self.on_notice = on_notice or _to_stderr
        self.queue: list[dict[str, Any]] = []  # trial values not yet handed out
        self.pending: dict[str, dict[str, Any]] = {}  # Tune trial id -> values, running
        self.rows: list[dict[str, Any]] = []  # finished trials: values and results
        self.cells: set[str] = set()  # every cell with a trial handed out or queued
        self.tried: set[str] = set()  # every trial (cell and seed) handed out or queued
        self.rounds: list[dict[str, Any]] = []
        self.issued = 0
        self.finished = False
        self.strategy = strategy.as_dict()
        if stored:
            axes = list(spec.axes)
            self.rows = [{**spec.base, **{n: values[n] for n in axes}, "seed": values["seed"],
                          **{k: final.get(k) for k in RESULT_FIELDS}, "status": final.get("status") or "ok"}
                         for values, final in stored]
            self._mark([{**{n: values[n] for n in axes}, "seed": values["seed"]} for values, _ in stored])
            self.rounds.append({"round": 0, "trials_done": 0, "fits": [], "queued": 0, "stored": len(stored)})

    @functools.cached_property
    def spec(self) -> SweepSpec:
        """Parsed once: validating a sweep checks every config it can produce."""
        return parse_sweep(self.spec_data)

    # --- the Searcher API ----------------------------------------------------------------
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is the sweep file's; the param space only holds constants

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.finished:
            return Searcher.FINISHED
        if not self.queue and not self.pending:
            self._plan_round()
            if self.finished:
                return Searcher.FINISHED
        if not self.queue:
            return None  # the round's trials are still running: refit once they are all in
        values = self.queue.pop(0)
        self.pending[trial_id] = values
        self.issued += 1
        return dict(values)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        values = self.pending.pop(trial_id, None)
        if values is None:
            return
        final = result if (result and is_final(result) and not error) else {}
        self.rows.append({**values, **{k: final.get(k) for k in RESULT_FIELDS}, "status": final.get("status") or "error"})

    # --- rounds --------------------------------------------------------------------------
    def _plan_round(self) -> None:
        spec, strategy = self.spec, Strategy(**self.strategy)
        budget = spec.search.max_trials - self.issued
        if not self.rounds:
            trials, fits = coarse_grid(spec, strategy.coarse_seeds), []
        else:
            seed = spec.search.seed + len(self.rounds)
            model, reason = fit_joint(spec, self.rows, seed, strategy.sampler)
            fits = slice_fits(spec, self.rows, model, reason)
            trials = next_trials(spec, strategy, model, fits, self.cells, self.tried, self.slots,
                                 np.random.default_rng(seed))
        trials = [{**spec.base, **t} for t in trials][: max(budget, 0)]
        self.rounds.append({"round": len(self.rounds), "trials_done": len(self.rows),
                            "fits": [f.as_dict() for f in fits], "queued": len(trials)})
        if fits:
            self._notice(fits, len(trials), budget)
        if not trials:
            self.finished = True
            return
        self._mark(trials)
        self.queue = trials

    def _mark(self, trials: list[dict[str, Any]]) -> None:
        for t in trials:
            cell = {n: t[n] for n in self.spec_data["axes"]}
            self.cells.add(cell_id(cell))
            self.tried.add(trial_id(cell, t["seed"]))

    def _notice(self, fits, queued: int, budget: int) -> None:
        open_ = [f for f in fits if f.settled is None]
        lines = [f"boundary search round {len(self.rounds) - 1}: {len(self.rows)} trials done, "
                 f"{len(open_)} of {len(fits)} slices open, {queued} trials next"
                 + (" (budget spent)" if budget <= 0 and open_ else "")]
        shown = fits if len(fits) <= 8 or not queued else [f for f in fits if f.proposed]
        for f in shown:
            b = f.boundary
            where = ", ".join(f"{k}={v}" for k, v in f.slice.items()) or "all"
            at = (f"{self.spec.search.x}_critical {b['x_critical']:.4g} {fmt_interval(b['ci_low'], b['ci_high'])}"
                  if b["x_critical"] is not None else "no crossing")
            lines.append(f"  {where}: {at}" + (f"; next {f.proposed}" if f.proposed else f"; settled: {f.settled}"))
        self.on_notice("\n".join(lines))

    # --- saved with the experiment -------------------------------------------------------
    STATE = ("spec_data", "queue", "pending", "rows", "cells", "tried", "rounds", "issued", "finished", "slots",
             "strategy")

    def get_state(self) -> dict[str, Any]:
        return {k: sorted(v) if isinstance(v, set) else v for k, v in ((k, getattr(self, k)) for k in self.STATE)}

    def set_state(self, state: dict[str, Any]) -> None:
        for k in self.STATE:
            setattr(self, k, state[k] if k in state else getattr(self, k, None))
        self.__dict__.pop("spec", None)  # parsed again from the restored spec_data
        if "strategy" not in state:  # saved by a search that ran whole cells: it goes on as it began
            self.strategy = Strategy.CELLS.as_dict()
            self.tried = [f"{c}#{fmt(s)}" for c in self.cells for s in self.spec_data["seeds"]]
        self.cells, self.tried = set(self.cells), set(self.tried)

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        """Tune saving the experiment's state: the searcher's, and the rounds as `boundary_search.json` (written
        here, in the folder Tune syncs to storage, so a restored run does not overwrite it)."""
        super().save_to_dir(checkpoint_dir, session_str)
        tmp = os.path.join(checkpoint_dir, f".{HISTORY_FILE}.tmp")
        with open(tmp, "w") as f:
            json.dump({"sweep": self.spec_data["name"], "x": self.spec_data["search"]["x"], "rounds": self.rounds},
                      f, indent=1, default=_plain)
        os.replace(tmp, os.path.join(checkpoint_dir, HISTORY_FILE))

    def save(self, checkpoint_path: str) -> None:
        """JSON, not pickle: the state is plain values, and reading it back runs no code."""
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f, default=_plain)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))

    def __getstate__(self):  # Tune pickles the searcher with the Tuner: not the print function
        return {**self.__dict__, "on_notice": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.on_notice = self.on_notice or _to_stderr


def run_without_ray(searcher: BoundarySearcher, result_of) -> int:
    """Drive a search as Tune would, a round at a time, with `result_of(values)` as each trial's
    final report (a benchmark's replay or a synthetic sweep); returns the trials it ran."""
    issued = 0
    while True:
        batch = []
        while (values := searcher.suggest(f"t{issued + len(batch)}")) not in (None, Searcher.FINISHED):
            batch.append((f"t{issued + len(batch)}", values))
        if values == Searcher.FINISHED and not batch:
            return issued
        for trial_id, values in batch:
            searcher.on_trial_complete(trial_id, {FINAL_KEY: True, **result_of(values)})
        issued += len(batch)
