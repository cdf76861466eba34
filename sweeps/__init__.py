"""Sweeps: a study's spec and plan, the search over its trials, running them on Ray Tune,
tracking them in MLflow, and what its storage holds.

Its sub-packages, bottom to top. Each imports only the ones listed before it, `trainables`
and libraries; nothing here imports `analysis` or `minima`:

- `fit`: phase labels and the Bayesian boundary model (read by the search and by `analysis`);
- `design`: the sweep file's model, `--set` assignments, trial and cell keys, the plan, the
  boundary search's grid;
- `storage`: a sweep's folder layout, reading its stored trial results, crash-safe writes;
- `cluster`: starting or joining Ray, its token, MLflow accounts on a cluster head;
- `search`: the grid's shared-pretraining gate and the boundary search, as Tune searchers;
- `tracking`: the MLflow callback, its writer process, sync from storage and audit;
- `run`: a sweep's Tuner, its parts, progress, outcome and notices; `run_sweep` and `resume_sweep`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# Tune pickles a sweep's searcher, callbacks and storage filesystem (tuner.pkl, searcher
# state) by module path, and sweeps stored before these sub-packages name the flat modules
# (`sweeps.tuner`). They stay resumable: each flat name resolves to the module it now is.
_FLAT_NAMES = {
    "fit": ["phase_fit", "boundary_model"],
    "design": ["spec", "assignments", "plan", "keys", "boundary_grid"],
    "storage": ["sweep_files", "results", "safe_storage"],
    "cluster": ["ray_auth", "mlflow_auth", "ray_cluster"],
    "search": ["boundary", "boundary_searcher", "search_space", "snapshot_gate"],
    "tracking": ["mlflow_audit", "mlflow_batches", "mlflow_events", "mlflow_logger", "mlflow_runs", "mlflow_sync",
                 "mlflow_writer", "mlflow_writer_process"],
    "run": ["runner", "tuner", "parts", "lean_results", "progress", "outcome", "notices", "missing_pretrainings"],
}
_HOME = {module: package for package, modules in _FLAT_NAMES.items() for module in modules}


class _FlatNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`sweeps.<module>` as the module `sweeps.<package>.<module>` (the same object)."""

    def find_spec(self, fullname, path=None, target=None):
        parent, _, name = fullname.rpartition(".")
        if parent == __name__ and name in _HOME:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__name__.rpartition(".")[2]
        # the import system returns what sys.modules holds under the name once this returns
        sys.modules[module.__name__] = importlib.import_module(f"{__name__}.{_HOME[name]}.{name}")


# first, so that a stale flat file (an editable install's old checkout) is never taken instead
if not any(isinstance(finder, _FlatNames) for finder in sys.meta_path):
    sys.meta_path.insert(0, _FlatNames())
