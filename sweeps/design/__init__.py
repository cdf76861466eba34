"""A sweep as declared and as planned: the sweep file's model and its validation (`spec`), `--set`
overrides (`assignments`), trial and cell keys (`keys`), the plan of trials, packs and shared
pretrainings made once per sweep (`plan`), and the boundary search's coarse grid and candidate
values (`boundary_grid`). Imports `sweeps.fit` and `trainables` only; no torch, Ray or MLflow at
import time, so `minima validate` stays light."""
