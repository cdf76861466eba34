"""Reaching a Ray cluster: starting local Ray or joining one, preflight checks and trial slots
(`ray_cluster`), Ray's auth token (`ray_auth`), and the MLflow server's accounts and secrets on a
cluster head (`mlflow_auth`). Imports `sweeps.design`, `sweeps.storage` and `trainables`."""
