"""MLflow: the Tune callback that turns trial reports into run events (`mlflow_logger`,
`mlflow_events`), the one writer and its process (`mlflow_writer`, `mlflow_writer_process`,
`mlflow_batches`), run lookups (`mlflow_runs`), re-logging from storage (`mlflow_sync`) and the
check that MLflow holds every stored trial (`mlflow_audit`). Imports `sweeps.design`,
`sweeps.storage` and `trainables`."""
