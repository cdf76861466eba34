"""Ray's token authentication, as this project uses it: where a token is found, and a private one made.

Ray authenticates every RPC and HTTP request with one shared token when `RAY_AUTH_MODE=token`
(local `ray.init()` turns it on by default). Ray reads the token from, in order, `RAY_AUTH_TOKEN`,
the file at `RAY_AUTH_TOKEN_PATH`, then `~/.ray/auth_token`; this module follows the same order.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
LOOPBACK_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine mode
TOKEN_MARK = "minima-ray-token:"  # brackets the token in `ray exec` output, which also carries Ray's own lines

FETCH_HINT = ("Fetch the cluster's token once with `minima fetch-token deploy/aws/cluster.yaml` (it saves it "
              "readable by you only and prints the `export RAY_AUTH_TOKEN_PATH=...` line to use), or pass "
              "--cluster-config deploy/aws/cluster.yaml")


class TokenError(RuntimeError):
    """No usable token where one was asked for."""


@dataclass(frozen=True)
class Token:
    value: str
    source: str  # where it came from, for messages: never the value itself


def advertise_loopback() -> None:
    """Put Ray in its single-machine mode when this process starts local Ray, or joins one at a
    127.0.0.1 address: local Ray then listens on and advertises 127.0.0.1, and a loopback
    RAY_ADDRESS is not rewritten to the machine's network address. Ray reads this when it is
    first imported, so call it before that; a user's setting wins."""
    address = os.environ.get("RAY_ADDRESS", "")
    host = address.split("://")[-1].rsplit(":", 1)[0]
    if not address or host in ("127.0.0.1", "localhost"):
        os.environ.setdefault(LOOPBACK_NODE_ENV, "0")


def default_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


def make_private_token(path: Path | None = None) -> Path:
    """Make sure the token at `path` is this user's alone: write a new 256-bit token readable by
    this user only when there is none, and replace one that others could read (Ray's own writer
    leaves it readable by everyone; whoever read it meanwhile must not keep a way in)."""
    path = path or default_token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_private(path, new_token())
    except FileExistsError:
        info = path.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            write_private(path, new_token(), replace=True)
    return path


def new_token() -> str:
    return secrets.token_hex(32)  # the shape of Ray's own tokens


def write_private(path: Path, text: str, replace: bool = False) -> None:
    """A file only this user can read, from its first byte; an existing one raises
    FileExistsError unless `replace`, which swaps in a new file (never rewrites the old one in
    place, whose mode may let others read it)."""
    if not replace:
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(text)
        return
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read(path: Path, what: str) -> str:
    try:
        value = path.expanduser().read_text().strip()
    except OSError as err:
        raise TokenError(f"{what}: cannot read {path} ({err.strerror})") from None
    if not value:
        raise TokenError(f"{what}: {path} is empty")
    return value


def token_from_cluster(cluster_config: str) -> Token:
    """The head's token, read over SSH with `ray exec` (the cluster launcher's own login)."""
    cmd = ["ray", "exec", cluster_config, f"echo {TOKEN_MARK}$(ray get-auth-token 2>/dev/null)"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise TokenError(f"--cluster-config: `ray exec {cluster_config}` failed ({err})") from None
    value = parse_marked_token(out.stdout)
    if out.returncode != 0 or not value:
        raise TokenError(f"--cluster-config: could not read the token from the head of {cluster_config} "
                         f"(ray exec exited {out.returncode}: {out.stderr.strip()[-300:]})")
    return Token(value, f"the head of {cluster_config}")


def parse_marked_token(text: str) -> str | None:
    found = re.findall(re.escape(TOKEN_MARK) + r"(\S+)", text)
    return found[-1] if found else None


def find_token(cluster_config: str | None = None) -> Token | None:
    """The token a client should send, in Ray's order; an explicit cluster config comes before the
    default file, which holds this machine's own local token."""
    if os.environ.get(TOKEN_ENV):
        return Token(os.environ[TOKEN_ENV].strip(), TOKEN_ENV)
    if os.environ.get(TOKEN_PATH_ENV):
        path = Path(os.environ[TOKEN_PATH_ENV])
        return Token(_read(path, TOKEN_PATH_ENV), f"{TOKEN_PATH_ENV} ({path})")
    if cluster_config:
        return token_from_cluster(cluster_config)
    path = default_token_path()
    if path.exists():
        return Token(_read(path, str(path)), str(path))
    return None


def save_private(token: Token, path: Path) -> Path:
    """Keep a fetched token in a file only this user can read."""
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, token.value, replace=True)
    return path


def is_loopback_address(address: str) -> bool:
    """Whether an http(s) address is this machine (an SSH port-forward lands here too)."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(address if "://" in address else f"http://{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def send_problem(address: str, token: Token | None) -> str | None:
    """Why `token` must not go to the Ray Jobs `address`; None when it may. Over plain HTTP only
    to this machine (an SSH tunnel to the head, as `ray dashboard deploy/aws/cluster.yaml` makes): anyone on
    the path reads a bearer token. This machine's own local token never leaves it."""
    if token is None or is_loopback_address(address):
        return None
    if not address.startswith("https://"):
        return (f"--address {address}: the Ray token would cross the network unencrypted; forward the "
                f"dashboard with `ray dashboard deploy/aws/cluster.yaml` and use --address http://127.0.0.1:8265, "
                f"or give an https:// address")
    if token.source == str(default_token_path()):
        return (f"--address {address}: the only token found is this machine's own local Ray token "
                f"({token.source}), not the cluster's. {FETCH_HINT}")
    return None


def bearer_headers(token: Token | None) -> dict[str, str]:
    """What Ray's HTTP APIs (the Jobs API) read the token from."""
    return {"Authorization": f"Bearer {token.value}"} if token else {}
