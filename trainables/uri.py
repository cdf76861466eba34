"""Local paths and storage URIs (s3://, gs://, ...), read and written through one pyarrow filesystem."""

from __future__ import annotations


def is_uri(path: str) -> bool:
    return "://" in path


def filesystem(path: str):
    """(pyarrow filesystem, path inside it): the URI's own filesystem, or the local one for a path."""
    import pyarrow.fs

    if is_uri(path):
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def read_bytes(path: str) -> bytes | None:
    """The file's contents; None when it is missing or cannot be read."""
    fs, inner = filesystem(path)
    try:
        with fs.open_input_stream(inner) as f:
            return f.read()
    except (FileNotFoundError, OSError):
        return None


def read_text(path: str) -> str | None:
    data = read_bytes(path)
    return None if data is None else data.decode()


def password_problem(uri: str) -> str | None:
    """Why a URI may not carry a password (it would be printed, stored with the sweep and shown
    by `ps`), and where the password goes instead; None when it carries none."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:  # a malformed port, say: not this check's business
        return None
    if password is None:
        return None
    scheme = parts.scheme.split("+")[0]
    where = {"http": "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment",
             "https": "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment",
             "postgresql": "~/.pgpass (chmod 600) or PGPASSWORD", "mysql": "an option file (~/.my.cnf, chmod 600)",
             "s3": "the AWS credentials chain (an instance role, ~/.aws/credentials or AWS_* variables)",
             }.get(scheme, "the service's own credentials file or environment")
    return (f"holds a password, which would be printed, stored with the sweep and visible in `ps`: "
            f"give it without user:password@ and put the credentials in {where}")
