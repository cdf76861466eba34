"""`--set KEY=VALUE` on the command line, each value read as the field at KEY declares it."""

from __future__ import annotations

import types
from typing import Any, Callable, Literal, Union, get_args, get_origin

NULLS = ("null", "none", "~")
TypeAt = Callable[[tuple], Any]  # path of a value (("base", "lr"), ("axes", "clip_norm", 0)) -> its declared type


def _plain(text: str) -> Any:
    """A scalar read without a declared type: `1e-3` is a float, `true` a bool, `none`/`null`/`~` None."""
    lowered = text.strip().lower()
    if lowered in NULLS:
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def _members(annotation: Any) -> tuple:
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(m for a in get_args(annotation) for m in _members(a))
    return (annotation,)


def _is_scalar(annotation: Any) -> bool:
    return annotation in (int, float, bool, str, type(None)) or get_origin(annotation) is Literal


def _describe(annotation: Any) -> str:
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "text", type(None): "none"}
    parts = []
    for member in _members(annotation):
        choices = [str(c) for c in get_args(member)] if get_origin(member) is Literal else None
        parts.append(names[member] if choices is None else
                     choices[0] if len(choices) == 1 else f"one of {', '.join(choices)}")
    return " or ".join(parts)


def _typed_scalar(text: str, annotation: Any, key: str, field: str) -> Any:
    """`text` as the first of (its plain reading, the text itself) that the declared type takes."""
    from pydantic import TypeAdapter, ValidationError

    from trainables.config import ConfigError

    value = _plain(text)
    if annotation is None or not all(map(_is_scalar, _members(annotation))):
        return value  # a mapping or a model (search: random): the sweep's own validation reads it
    for candidate in (value, text.strip()):
        try:
            TypeAdapter(annotation).validate_python(candidate, strict=True)
            return candidate
        except ValidationError:
            pass
    raise ConfigError(f"--set {key}: {field} takes {_describe(annotation)} (got {text.strip()!r})")


def _typed(raw: Any, type_at: TypeAt, path: tuple, key: str) -> Any:
    if isinstance(raw, dict):
        return {k: _typed(v, type_at, (*path, k), key) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_typed(v, type_at, (*path, i), key) for i, v in enumerate(raw)]
    field = next((p for p in reversed(path) if isinstance(p, str)), "the value")
    return _typed_scalar(raw, type_at(path), key, field)


def parse_value(text: str, type_at: TypeAt, path: tuple) -> Any:
    """A `--set` value read as the field at `path` declares it: `augmentation=none` is the string
    (a choice), `clip_norm=none` is null; `[...]` and `{...}` are read item by item."""
    import yaml

    from trainables.config import ConfigError

    key = f"{'.'.join(path)}={text}"
    raw = text
    if text.strip().startswith(("[", "{")):
        try:  # every scalar stays text here, so each is typed by its own field below
            raw = yaml.load(text, Loader=yaml.BaseLoader)  # noqa: S506 - BaseLoader builds no objects
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: not a YAML list or mapping ({err.problem})") from None
    return _typed(raw, type_at, path, key)


def parse_assignments(pairs: list[str], type_at: TypeAt) -> dict[str, Any]:
    from trainables.config import ConfigError

    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. --set weight_decay=5e-4")
        path = tuple(key.strip().split("."))
        values[key.strip()] = parse_value(value, type_at, path)
    return values
