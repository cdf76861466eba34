"""The `minima` command. Heavy imports (torch, ray, mlflow) happen inside each command, so
`minima --help` and config errors answer at once."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

EXIT_BAD_INPUT = 2


def parse_value(text: str) -> Any:
    """A `--set` value as the type a YAML file would give it; `1e-3` is a float, `null` is None."""
    lowered = text.strip().lower()
    if lowered in ("null", "none", "~"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: expected key=value, e.g. --set weight_decay=5e-4")
        values[key.strip()] = parse_value(value)
    return values


def _json_safe(value: Any) -> Any:
    """NaN/inf become null so diverged trials still print valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def cmd_trial(args: argparse.Namespace) -> int:
    from trainables.config import ConfigError, make_config

    try:
        cfg = make_config(parse_assignments(args.set), where="trial config (--set)")
    except (ConfigError, ValueError) as err:
        print(f"minima trial: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from trainables.data import DatasetUnavailable
    from trainables.trial import run_trial

    def progress(record: dict[str, Any], _snapshot) -> None:
        if not args.json:
            print(
                f"{record['stage']:>8} epoch {record['epoch']:4d}  train_acc {record['train_acc']:.4f}  "
                f"test_acc {record['test_acc']:.4f}  loss {record['train_loss']:.4f}",
                file=sys.stderr,
            )

    try:
        result = run_trial(cfg, on_epoch=progress)
    except DatasetUnavailable as err:
        print(f"minima trial: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    summary = _json_safe(result.summary)
    if args.json:
        out = {**summary, "history": _json_safe(result.history)} if args.history else summary
        print(json.dumps(out, indent=2))
    else:
        for key, value in summary.items():
            if key != "config":
                print(f"{key:>20}: {value}")
    return 0  # a diverged trial is a result (status: diverged), not a failure of the command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minima", description="Minima Atlas: when does SGD reach bad global minima?")
    sub = parser.add_subparsers(dest="command", required=True)

    trial = sub.add_parser("trial", help="run one trial and print its final metrics")
    trial.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a trial config field, e.g. --set pretrain_epochs=100 (repeatable)")
    trial.add_argument("--json", action="store_true", help="print the final metrics as JSON on stdout")
    trial.add_argument("--history", action="store_true", help="with --json: include the per-epoch records")
    trial.set_defaults(func=cmd_trial)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
