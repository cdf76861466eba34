"""Where the Ray token is found and how the secrets files are made (the CLI in a subprocess at most; see
test_locked_doors.py for the real Ray and MLflow servers)."""

import os
import stat
from pathlib import Path

import pytest

from sweeps.cluster.mlflow_auth import HeadSecrets, provision, read_env_file
from sweeps.cluster.ray_auth import TokenError, find_token, make_private_token, parse_marked_token, save_private


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_a_private_token_is_made_once_and_one_others_could_read_is_replaced(home):
    path = make_private_token()
    first = path.read_text()
    assert path == home / ".ray" / "auth_token" and len(first) == 64 and mode(path) == 0o600
    assert make_private_token().read_text() == first  # kept
    path.chmod(0o644)  # as Ray's own writer leaves it: anyone may have read it meanwhile
    inode = path.stat().st_ino
    make_private_token()
    assert mode(path) == 0o600 and len(path.read_text()) == 64 and path.read_text() != first
    assert path.stat().st_ino != inode  # a new file, private from its first byte, not the old one rewritten
    assert [p.name for p in path.parent.iterdir()] == ["auth_token"]  # no temporary file left


def test_the_token_is_found_in_rays_order(home, monkeypatch):
    assert find_token() is None
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("default\n")
    assert (find_token().value, find_token().source) == ("default", str(home / ".ray" / "auth_token"))
    (home / "cluster.token").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(home / "cluster.token"))
    assert find_token().value == "from-path" and "cluster.token" in find_token().source
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert find_token().value == "from-env" and find_token().source == "RAY_AUTH_TOKEN"


def test_an_empty_or_missing_token_file_is_an_error_naming_it(home, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(home / "nope"))
    with pytest.raises(TokenError, match="RAY_AUTH_TOKEN_PATH: cannot read .*nope"):
        find_token()
    (home / "empty").write_text("\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(home / "empty"))
    with pytest.raises(TokenError, match="is empty"):
        find_token()


def test_the_token_is_read_from_ray_exec_output_among_rays_own_lines():
    out = "Loaded cached provider configuration\nFetched IP: 10.0.0.1\nminima-ray-token:abc123\nShared connection closed.\n"
    assert parse_marked_token(out) == "abc123"
    assert parse_marked_token("Fetched IP: 10.0.0.1\nminima-ray-token:\n") is None  # the head had no token
    assert parse_marked_token("error: no cluster\n") is None


def test_a_fetched_token_is_saved_readable_by_its_owner_only(home):
    from sweeps.cluster.ray_auth import Token

    target = home / "keys" / "c.token"
    target.parent.mkdir()
    target.write_text("old")
    target.chmod(0o644)
    save_private(Token("new", "test"), target)
    assert target.read_text() == "new" and mode(target) == 0o600


def test_head_secrets_are_private_random_and_kept(tmp_path):
    where = HeadSecrets(tmp_path / "secrets")
    made = provision(where)
    assert set(made) == {where.auth_config, where.server_env, where.client_env}
    assert mode(where.root) == 0o700 and all(mode(p) == 0o600 for p in made)
    client, server = read_env_file(where.client_env), read_env_file(where.server_env)
    assert client["MLFLOW_TRACKING_USERNAME"] == "admin" and len(client["MLFLOW_TRACKING_PASSWORD"]) >= 32
    assert client["MLFLOW_TRACKING_PASSWORD"] != "password1234"
    assert f"admin_password = {client['MLFLOW_TRACKING_PASSWORD']}" in where.auth_config.read_text()
    assert server["MLFLOW_AUTH_CONFIG_PATH"] == str(where.auth_config) and len(server["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == 64
    assert provision(where) == [] and read_env_file(where.client_env) == client  # a second start keeps them
    other = HeadSecrets(tmp_path / "other")
    provision(other)
    assert read_env_file(other.client_env) != client  # made anew for each head, never a fixed value


@pytest.mark.parametrize("address, single_machine", [
    (None, True), ("127.0.0.1:6379", True), ("localhost:6379", True), ("ray://127.0.0.1:10001", True),
    ("10.0.0.5:6379", False), ("auto", False)])
def test_single_machine_mode_for_local_ray_and_loopback_addresses_only(monkeypatch, address, single_machine):
    from sweeps.cluster.ray_auth import LOOPBACK_NODE_ENV, advertise_loopback

    monkeypatch.delenv(LOOPBACK_NODE_ENV, raising=False)
    if address is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", address)
    advertise_loopback()
    assert (os.environ.get(LOOPBACK_NODE_ENV) == "0") == single_machine
    monkeypatch.setenv(LOOPBACK_NODE_ENV, "1")  # the user's own setting wins
    advertise_loopback()
    assert os.environ[LOOPBACK_NODE_ENV] == "1"


def test_submit_sends_no_token_in_plain_http_to_another_machine_nor_the_local_token_anywhere(home, tmp_path):
    """A listener on this machine's network address stands for a Ray head reached without a
    tunnel: `minima submit` refuses before it connects, so the listener sees no request."""
    import socket
    import subprocess
    import sys
    import threading

    repo = Path(__file__).resolve().parent.parent
    ip = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout.split()[0]
    listener = socket.create_server((ip, 0))
    listener.settimeout(0.2)
    seen: list = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                seen.append(listener.accept())
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    token_file = make_private_token(tmp_path / "cluster.token")
    make_private_token()  # this machine's own local token, in the default place
    places = ["--working-dir", str(repo), "--set", "storage=/srv/results", "--set", "tracking_uri=http://10.0.0.1:5000"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    try:
        for extra_env, address, says in (
                ({"RAY_AUTH_TOKEN_PATH": str(token_file)}, f"http://{ip}:{listener.getsockname()[1]}", "unencrypted"),
                ({}, f"https://{ip}:{listener.getsockname()[1]}", "this machine's own local Ray token")):
            out = subprocess.run([sys.executable, "-m", "minima", "submit", str(repo / "sweeps" / "smoke.yaml"),
                                  "--address", address, *places], capture_output=True, text=True, timeout=120,
                                 env={**env, "HOME": str(home), **extra_env}, cwd=tmp_path)
            assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert seen == []
