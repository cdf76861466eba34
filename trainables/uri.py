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
