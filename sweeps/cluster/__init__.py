"""Reaching a Ray cluster: starting local Ray or joining one, preflight checks and trial slots
(`ray_cluster`), Ray's auth token (`ray_auth`), the MLflow server's accounts and secrets on a
cluster head (`mlflow_auth`), and the AWS security group made before `ray up`
(`aws_security_group`). Imports `sweeps.design`, `sweeps.storage` and `trainables`."""
