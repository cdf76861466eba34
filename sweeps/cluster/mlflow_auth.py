"""MLflow with accounts on a cluster head: the secrets made once, read accounts, a credentials check.

`mlflow server --app-name basic-auth` asks every request for a user and password. Its admin
password and Flask secret key are made here at the head's first start, in files only this user
can read: `mlflow-server.env` for the server, `mlflow-client.env` (MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD) for the sweep driver, which the head's Ray processes inherit.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .ray_auth import write_private

ADMIN = "admin"
USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"


@dataclass(frozen=True)
class HeadSecrets:
    """Where the secrets live; all files 0600 in a 0700 folder."""

    root: Path

    @property
    def auth_config(self) -> Path:  # MLflow's basic_auth.ini: admin password, user store
        return self.root / "mlflow-auth.ini"

    @property
    def user_store(self) -> Path:
        return self.root / "mlflow-auth.db"

    @property
    def server_env(self) -> Path:  # sourced before `mlflow server`
        return self.root / "mlflow-server.env"

    @property
    def client_env(self) -> Path:  # sourced before `ray start --head`: the sweep driver logs with it
        return self.root / "mlflow-client.env"


def default_secrets() -> HeadSecrets:
    return HeadSecrets(Path.home() / ".minima")


def provision(where: HeadSecrets) -> list[Path]:
    """Make the MLflow admin password and Flask secret key once; later calls keep them (the
    admin account exists from the server's first start on). Returns the files it wrote."""
    where.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    where.root.chmod(0o700)
    if where.auth_config.exists():
        return []
    password, flask_key = secrets.token_hex(24), secrets.token_hex(32)
    write_private(where.auth_config, "\n".join([
        "[mlflow]",
        "default_permission = READ",  # a new account reads every experiment and writes none it did not make
        f"database_uri = sqlite:///{where.user_store}",
        f"admin_username = {ADMIN}",
        f"admin_password = {password}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access = false",
        # A sweep's driver sends thousands of requests; each would hash the password again.
        "auth_cache_ttl_seconds = 60",
        ""]))
    write_private(where.server_env, f"export MLFLOW_AUTH_CONFIG_PATH={where.auth_config}\n"
                                     f"export MLFLOW_FLASK_SERVER_SECRET_KEY={flask_key}\n")
    write_private(where.client_env, f"export {USERNAME_ENV}={ADMIN}\nexport {PASSWORD_ENV}={password}\n")
    return [where.auth_config, where.server_env, where.client_env]


def read_env_file(path: Path) -> dict[str, str]:
    """The `export KEY=value` lines of a secrets file, as a mapping (for a child's environment)."""
    pairs = (line.removeprefix("export ").partition("=") for line in path.read_text().splitlines())
    return {key.strip(): value.strip() for key, sep, value in pairs if sep}


def create_read_account(tracking_uri: str, username: str) -> str:
    """A new account that can read every sweep and write none; returns its password. Needs the
    admin's credentials in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD."""
    from mlflow.server import get_app_client

    password = secrets.token_urlsafe(18)
    get_app_client("basic-auth", tracking_uri=tracking_uri).create_user(username=username, password=password)
    return password


def access_problem(tracking_uri: str, timeout_s: float = 5.0) -> str | None:
    """Why a tracking server refuses this client's credentials, or None. A server that does not
    answer is no problem here: the sweep runs without it and replays later."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    import requests

    user = os.environ.get(USERNAME_ENV)
    auth = (user, os.environ.get(PASSWORD_ENV, "")) if user else None
    try:
        r = requests.get(f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
                         params={"max_results": 1}, auth=auth, timeout=timeout_s)
    except requests.RequestException:
        return None
    if r.status_code == 401:
        who = f"user {user!r} and its password" if user else "no credentials"
        return (f"the MLflow server at {tracking_uri} refused {who} (401): set {USERNAME_ENV} and "
                f"{PASSWORD_ENV} (on a cluster head: `. ~/.minima/mlflow-client.env`), or run with --no-mlflow")
    if r.status_code == 403:
        return (f"the MLflow server at {tracking_uri} lets {user!r} in but not read experiments (403): "
                f"use an account that may write, or run with --no-mlflow")
    return None
