"""What a table of trials says about the boundary: phase labels (`phase_fit`: good, bad, not fit;
the axis scale) and the Bayesian model of P(bad) over every varying axis (`boundary_model`).
Both the boundary search and `analysis` read it. Imports only `trainables.config`, numpy,
pandas, scipy and emcee: no Ray, no MLflow, no other sweeps package."""
