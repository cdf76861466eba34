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
    """A new account that can read every sweep and change none; returns its password. Needs the
    admin's credentials in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD."""
    from mlflow.server import get_app_client

    password = secrets.token_urlsafe(18)
    get_app_client("basic-auth", tracking_uri=tracking_uri).create_user(username=username, password=password)
    return password


def access_problem(tracking_uri: str, timeout_s: float = 5.0, require_answer: bool = False) -> str | None:
    """Why a tracking server refuses this client's credentials, or None. A server that does not
    answer is no problem for a sweep, which runs without it and replays later; it is one when
    `require_answer` (`minima validate --online` asks whether the server can be reached)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    import requests

    user = os.environ.get(USERNAME_ENV)
    auth = (user, os.environ.get(PASSWORD_ENV, "")) if user else None
    try:
        r = requests.get(f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
                         params={"max_results": 1}, auth=auth, timeout=timeout_s)
    except requests.RequestException as err:
        if not require_answer:
            return None
        return (f"no answer from the MLflow server at {tracking_uri} ({type(err).__name__}); check the address "
                f"(a cluster's server answers only inside the cluster or through a port-forward)")
    if r.status_code == 401:
        who = f"user {user!r} and its password" if user else "no credentials"
        return (f"the MLflow server at {tracking_uri} refused {who} (401): set {USERNAME_ENV} and "
                f"{PASSWORD_ENV} (on a cluster head: `. ~/.minima/mlflow-client.env`), or run with --no-mlflow")
    if r.status_code == 403:
        return (f"the MLflow server at {tracking_uri} lets {user!r} in but not read experiments (403): "
                f"use an account that may write, or run with --no-mlflow")
    return None


WRITES = ("EDIT", "MANAGE")  # MLflow permissions that change or delete an experiment's runs


def claim_experiment(tracking_uri: str, name: str, tags: dict[str, str], timeout_s: float = 15.0) -> str | None:
    """Before a sweep logs into experiment `name` on a server with accounts: make it (as this
    client, which then manages it) if it does not exist, and say why not to log into it when an
    account other than this one and the admins may change its runs. With basic-auth any account,
    a read account too, may create an experiment and manages what it creates: a reader who made
    the experiment of a sweep it saw in a sweep file could delete its runs or plant finished
    ones the writer would take as logged. Returns the problem, or None (also for a server without
    accounts, where anyone may write anyway, and for a client that is not an admin, which cannot
    list the accounts)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    import requests

    base = tracking_uri.rstrip("/")
    user = os.environ.get(USERNAME_ENV)
    if not user:
        return None
    session = requests.Session()
    session.auth = (user, os.environ.get(PASSWORD_ENV, ""))

    def get(path: str, **params):
        return session.get(f"{base}{path}", params=params, timeout=timeout_s)

    try:
        me = get("/api/2.0/mlflow/users/current")
        if me.status_code == 404:  # no accounts on this server
            return None
        if me.status_code != 200 or not me.json().get("user", {}).get("is_admin"):
            return None
        found = get("/api/2.0/mlflow/experiments/get-by-name", experiment_name=name)
        if found.status_code == 404:
            made = session.post(f"{base}/api/2.0/mlflow/experiments/create", timeout=timeout_s, json={
                "name": name, "tags": [{"key": k, "value": v} for k, v in tags.items()]})
            if made.status_code != 200 and "RESOURCE_ALREADY_EXISTS" not in made.text:
                made.raise_for_status()
            found = get("/api/2.0/mlflow/experiments/get-by-name", experiment_name=name)
        found.raise_for_status()
        experiment = found.json()["experiment"]
        users = get("/api/2.0/mlflow/users/list")
        users.raise_for_status()
        writers = []
        for account in users.json().get("users", []):
            if account.get("is_admin") or account.get("username") == user:
                continue
            held = get("/api/3.0/mlflow/users/permissions/get", username=account["username"],
                       resource_type="experiment", resource_id=experiment["experiment_id"])
            held.raise_for_status()
            if held.json().get("permission") in WRITES:
                writers.append(account["username"])
    except (requests.ConnectionError, requests.Timeout):
        return None  # a server that does not answer: the writer checks again when it connects
    except requests.HTTPError as err:
        return (f"could not check who may change MLflow experiment {name!r} at {tracking_uri}: {err}; "
                f"fix the server, or run with --no-mlflow and `minima sync-mlflow` later")
    if not writers:
        return None
    return (f"MLflow experiment {name!r} at {tracking_uri} (id {experiment['experiment_id']}) can be changed by "
            f"account(s) {', '.join(sorted(writers))}, which did not start this sweep: its runs could be deleted "
            f"or planted. Run the sweep under another name (--name NEW_NAME), or, as the admin, delete that "
            f"experiment and remove it for good (`mlflow gc`) first")
