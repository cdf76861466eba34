"""The `minima` command. Heavy imports (torch, ray, mlflow) happen inside each command, so
`minima --help` and config errors answer at once."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from sweeps.design.assignments import parse_assignments
from .cluster_cli import UI_START, add_cluster_commands

EXIT_BAD_INPUT = 2


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

    from sweeps.design.spec import trial_value_type

    try:
        cfg = make_config(parse_assignments(args.set, trial_value_type), where="trial config (--set)")
    except ConfigError as err:
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


def _load(args: argparse.Namespace):
    from sweeps.design.spec import load_sweep_args

    return load_sweep_args(args.file, args.set, getattr(args, "name", None))


def cmd_validate(args: argparse.Namespace) -> int:
    """The file alone, offline (a cluster sweep is validated away from its cluster); with
    --online also what `minima run` checks before any trial: storage and the tracking server."""
    spec = _load(args)
    from sweeps.cluster.ray_cluster import (check_reach, check_resources, local_resources, local_slots,
                                            placeholder_fields, target_lines)
    from sweeps.design.spec import SweepError

    if args.online:
        check_reach(spec, args.file)
    if args.here:
        try:
            check_resources(spec, local_resources(), on_cluster=False)
        except SweepError as err:
            raise SweepError(f"{args.file}: {err}") from None
    notice = None
    if os.environ.get("RAY_ADDRESS") and spec.resources.gpu > 0:
        notice = "on the cluster, GPU trials wait for GPU worker nodes, which the autoscaler adds on demand"
    info = spec.summary()
    print(f"{args.file}: ok")
    print(f"  sweep     {info['name']} ({info['search']} search)")
    print(f"  trials    {'at most ' if spec.search.kind == 'boundary' else ''}{info['trials']}  "
          f"({len(info['seeds'])} seeds: {_brief(info['seeds'])})")
    if spec.search.kind == "boundary":
        from sweeps.design.boundary_grid import candidate_values, coarse_trials, slices

        print(f"  boundary  {len(slices(spec))} slices along {spec.search.x}; coarse grid {coarse_trials(spec)} trials; "
              f"then up to {len(candidate_values(spec))} x values; stop at ci_width {spec.search.ci_width or 'none'}")
    for axis, values in info["axes"].items():
        print(f"  axis      {axis}: {_brief(values)}")
    res = info["resources"]
    print(f"  resources cpu {res['cpu']:g}, gpu {res['gpu']:g} per trial; max_concurrent {spec.max_concurrent or 'auto'}")
    from sweeps.run.notices import plan_lines
    from sweeps.design.plan import planned

    _, plan = planned(spec, local_slots(spec))
    for line in plan_lines(plan):  # as `minima run` says it
        print(f"  {line}")
    print(f"  storage   {info['storage']}   tracking {info['tracking_uri']}")
    for line in target_lines(spec):
        print(f"  target    {line}")
    if fields := placeholder_fields(spec):
        print(f"  note      {', '.join(fields)}: shipped placeholders; set yours with "
              + " ".join(f"--set {f}=..." for f in fields))
    if notice:
        print(f"  note      {notice}")
    print("  checked   " + ("the file, a write to the storage, the tracking server's answer" if args.online else
                            "the file only (offline); --online also tries the storage and the tracking server, "
                            "as `minima run` does before any trial"))
    return 0


def _brief(values, most: int = 12):
    """A long list as a line: a run of integers as `first..last`, others cut after `most`."""
    if not isinstance(values, list) or len(values) <= most:
        return values
    if all(isinstance(v, int) for v in values) and values == list(range(values[0], values[0] + len(values))):
        return f"{values[0]}..{values[-1]}"
    return f"[{', '.join(map(str, values[:most]))}, ... {len(values) - most} more]"


def _report(outcome) -> int:
    counts = ", ".join(f"{v} {k}" for k, v in sorted(outcome.counts.items()))
    print(f"sweep {outcome.name}: {outcome.total} trials: {counts}")
    audit = outcome.mlflow
    if audit is not None and not audit.complete:
        why = f" (tracking server: {audit.error})" if audit.error else ""
        print(f"MLflow: {audit.missing} of {audit.trials} finished trials are not fully logged at "
              f"{outcome.tracking_uri}{why}. Nothing is lost: every result is in {outcome.path}. Replay them with:\n"
              f"  minima sync-mlflow {outcome.name} --storage {outcome.storage}"
              + (f" --tracking-uri {outcome.tracking_uri}" if outcome.tracking_uri else ""), file=sys.stderr)
    print(f"results: {outcome.path}")
    if not outcome.all_finished:
        print(f"unfinished trials remain: `minima resume {outcome.name}` finishes them")
        return 1
    if outcome.counts.get("error"):
        print(f"{outcome.counts['error']} trials raised (see the MLflow runs' `error` tag); "
              f"`minima resume {outcome.name}` retries them")
        return 1
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from sweeps.cluster.ray_auth import advertise_loopback

    advertise_loopback()
    spec = _load(args)
    from sweeps.run.runner import extend_sweep, resume_sweep, run_sweep
    from sweeps.run.tuner import has_results

    if has_results(spec):  # the file may add trials to the stored sweep: only those run
        outcome = extend_sweep(spec, log_to_mlflow=not args.no_mlflow, on_notice=lambda m: print(m, file=sys.stderr),
                               source=args.file)
        if outcome is not None:
            return _report(outcome)
    if args.resume and has_results(spec):
        print(f"sweep {spec.name} has results: resuming it (finished trials are kept)", file=sys.stderr)
        return _report(resume_sweep(spec.name, spec.storage, on_notice=lambda m: print(m, file=sys.stderr)))

    print(f"sweep {spec.name}: {spec.num_trials()} trials; MLflow: {spec.tracking_uri} (experiment {spec.name!r})",
          file=sys.stderr)
    return _report(run_sweep(spec, log_to_mlflow=not args.no_mlflow, on_notice=lambda m: print(m, file=sys.stderr),
                             source=args.file))


def cmd_resume(args: argparse.Namespace) -> int:
    from sweeps.cluster.ray_auth import advertise_loopback

    advertise_loopback()
    from sweeps.run.runner import resume_sweep

    return _report(resume_sweep(args.name, args.storage, on_notice=lambda m: print(m, file=sys.stderr)))


def _export(name: str, storage: str, out: str, use_mlflow: bool = True):
    from analysis.export import export_sweep

    from sweeps.design.spec import RangeAxis
    from sweeps.storage.sweep_files import experiment_path, held_resources, read_spec

    spec = read_spec(name, storage)
    meta = {"minima.tracking_uri": spec.tracking_uri, "minima.axes": list(spec.axes)}
    if spec.search.kind == "boundary":  # its x values are uneven: the fit must not guess their scale
        meta["minima.axis_scales"] = {n: a.scale for n, a in spec.axes.items() if isinstance(a, RangeAxis)}
    return spec, export_sweep(experiment_path(spec), out, spec.name, spec.tracking_uri if use_mlflow else None, meta,
                              held=held_resources(spec))


def cmd_export(args: argparse.Namespace) -> int:
    _, result = _export(args.name, args.storage, args.out, not args.no_mlflow)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(result.status_counts.items()))
    print(f"{result.trials_path}: {result.trials} trials ({counts})")
    print(f"{result.curves_path}: {result.curve_rows} rows (trial x stage x epoch)")
    return 0


def cmd_phase(args: argparse.Namespace) -> int:
    from analysis.diagram import run_phase

    result = run_phase(args.trials, args.x, args.y, args.by, args.delta, args.out, log_to_mlflow=not args.no_mlflow)
    print(format_boundaries(result.phase))
    print(format_effects(result.phase))
    for path in result.files:
        print(f"wrote {path}")
    if result.logged_to_mlflow:
        print("attached to the sweep's parent MLflow run (artifacts/phase/)")
    return 0


def format_boundaries(phase: dict) -> str:
    from sweeps.fit.phase_fit import fmt_interval

    lines = [f"critical {phase['x']} per {phase['y']} (P(bad) = 0.5, 90% posterior interval; '..' open past the range):"]
    for b in phase["boundary"]:
        where = ", ".join([f"{phase['y']}={b['y']}"] + [f"{k}={v}" for k, v in b["by"].items()])
        if b["x_critical"] is None:
            lines.append(f"  {where}: none ({b['reason']}; n={b['n_trials']})")
        else:
            lines.append(f"  {where}: {b['x_critical']:.3g} {fmt_interval(b['ci_low'], b['ci_high'])} "
                         f"(n={b['n_trials']} trials, {b['n_seeds']} seeds)")
    return "\n".join(lines)


def format_effects(phase: dict) -> str:
    """The joint model's answer: each level's shift of the boundary, or why there is none."""
    from sweeps.fit.phase_fit import fmt, fmt_interval

    if not phase["effects"]:
        return f"what moves the boundary: no effects ({phase['effects_reason']})"
    joint = phase["joint"]
    ref = ", ".join(f"{a}={fmt(v)}" for a, v in joint["reference"]["levels"].items())
    lines = [f"what moves critical {phase['x']} (joint model, {joint['n_trials']} trials; others at {ref}):"]
    for e in phase["effects"]:
        at = "none" if e["x_critical"] is None else f"{e['x_critical']:.3g} {fmt_interval(*e['ci'])}"
        shift = "reference" if e.get("reference") else (
            f"shift {'?' if e['shift'] is None else format(e['shift'], '.2f')} {fmt_interval(*e['shift_ci'])}")
        lines.append(f"  {e['axis']}={fmt(e['value'])}: {at}; {shift}")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import write_report

    spec, export = _export(args.name, args.storage, args.out, not args.no_mlflow)
    path = write_report(spec, export, args.out, x=args.x, y=args.y, by=args.by, delta=args.delta,
                        log_to_mlflow=not args.no_mlflow)
    phase = json.loads((path.parent / "phase.json").read_text())
    print(format_boundaries(phase))
    print(format_effects(phase))
    print(f"\nphase diagram: {path.parent / 'phase.png'}")
    print(f"report:        {path}")
    print(f"parquet:       {export.trials_path}  {export.curves_path}")
    print(f"MLflow UI:     minima ui --tracking-uri {spec.tracking_uri}   (then open http://127.0.0.1:5000{UI_START})")
    return 0


def cmd_sync_mlflow(args: argparse.Namespace) -> int:
    from sweeps.tracking.mlflow_sync import sync_from_storage
    from sweeps.tracking.mlflow_writer import MLflowWriter
    from sweeps.storage.sweep_files import experiment_path, read_spec

    from sweeps.run.runner import claim_tracking

    spec = read_spec(args.name, args.storage)
    uri = args.tracking_uri or spec.tracking_uri
    claim_tracking(spec.model_copy(update={"tracking_uri": uri}), args.name)
    counts = sync_from_storage(MLflowWriter(uri, spec.name, list(spec.axes)), experiment_path(spec))
    print(f"sweep {spec.name}: {counts['trials']} trials synced to {uri} ({counts['finished']} finished, "
          f"{counts['failed']} failed, {counts['unfinished']} unfinished)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from sweeps.run.status import storage_status, sweep_status
    from sweeps.run.status_lines import status_lines, table_lines

    status = sweep_status(args.name, args.storage) if args.name else storage_status(args.storage)
    lines = status_lines(status) if args.name else table_lines(status)
    print(json.dumps(_json_safe(status), indent=2) if args.json else "\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minima", description="Minima Atlas: when does SGD reach bad global minima?")
    sub = parser.add_subparsers(dest="command", required=True)

    trial = sub.add_parser("trial", help="run one trial and print its final metrics")
    trial.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a trial config field, e.g. --set pretrain_epochs=100 (repeatable)")
    trial.add_argument("--json", action="store_true", help="print the final metrics as JSON on stdout")
    trial.add_argument("--history", action="store_true", help="with --json: include the per-epoch records")
    trial.set_defaults(func=cmd_trial)

    def sweep_file_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", help="sweep file (YAML), e.g. sweeps/smoke.yaml")
        p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                       help="override a field of the file, e.g. --set base.epochs=5 --set resources.gpu=0")
        p.add_argument("--name", help="sweep name (default: the file's name:)")

    validate = sub.add_parser("validate", help="check a sweep file offline; print trial count, axes, resources "
                              "and where it can run")
    sweep_file_args(validate)
    validate.add_argument("--online", action="store_true",
                          help="also write to the storage and ask the tracking server, as `minima run` does first")
    validate.add_argument("--here", action="store_true",
                          help="also refuse a trial bigger than this machine (CPUs, GPUs), as local Ray would")
    validate.set_defaults(func=cmd_validate)

    run = sub.add_parser("run", help="run a sweep on local Ray, or on the cluster at RAY_ADDRESS")
    sweep_file_args(run)
    run.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow (results stay in storage)")
    run.add_argument("--resume", action="store_true", help="if the sweep already has results, resume it instead of refusing")
    run.set_defaults(func=cmd_run)

    resume = sub.add_parser("resume", help="finish an interrupted sweep from its storage")
    resume.add_argument("name")
    resume.add_argument("--storage", default="minima_results", help="where the sweep stored its results")
    resume.set_defaults(func=cmd_resume)

    add_cluster_commands(sub, sweep_file_args)

    def stored_sweep_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("name", help="the sweep's name")
        p.add_argument("--out", required=True, help="folder for the files written")
        p.add_argument("--storage", default="minima_results", help="where the sweep stored its results")
        p.add_argument("--no-mlflow", action="store_true", help="do not read from or write to MLflow")

    export = sub.add_parser("export", help="write DIR/trials.parquet and DIR/curves.parquet from a sweep's results")
    stored_sweep_args(export)
    export.set_defaults(func=cmd_export)

    phase = sub.add_parser("phase", help="label phases and fit the good/bad boundary from trials.parquet")
    phase.add_argument("trials", help="trials.parquet from minima export")
    phase.add_argument("--x", default="pretrain_epochs", help="the axis along which the boundary is fitted")
    phase.add_argument("--y", required=True, help="one boundary per value of this axis")
    phase.add_argument("--by", nargs="*", default=[], help="further axes: one diagram per combination")
    phase.add_argument("--delta", type=float, default=0.05, help="test-accuracy drop that makes a minimum bad")
    phase.add_argument("--out", required=True)
    phase.add_argument("--no-mlflow", action="store_true", help="do not attach the files to the parent run")
    phase.set_defaults(func=cmd_phase)

    report = sub.add_parser("report", help="export, fit and write a self-contained HTML report")
    stored_sweep_args(report)
    report.add_argument("--x", default="pretrain_epochs")
    report.add_argument("--y", help="default: the sweep's first other axis")
    report.add_argument("--by", nargs="*", help="default: the sweep's remaining axes")
    report.add_argument("--delta", type=float, default=0.05)
    report.set_defaults(func=cmd_report)

    sync = sub.add_parser("sync-mlflow", help="re-log a sweep's trials to MLflow from its stored results (idempotent)")
    sync.add_argument("name")
    sync.add_argument("--storage", default="minima_results", help="where the sweep stored its results")
    sync.add_argument("--tracking-uri", help="default: the sweep's own tracking_uri")
    sync.set_defaults(func=cmd_sync_mlflow)

    status = sub.add_parser("status", help="where every sweep in a storage stands, or one sweep in detail "
                            "(reads the storage only: no Ray, no tracking server)")
    status.add_argument("name", nargs="?", help="a sweep: adds its parts, slowest trials, ETA and failures")
    status.add_argument("--storage", default="minima_results", help="where the sweeps stored their results")
    status.add_argument("--json", action="store_true", help="print it as JSON")
    status.set_defaults(func=cmd_status)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from analysis.phase import PhaseInputError
    from trainables.config import ConfigError
    from trainables.uri import password_problem

    from sweeps.design.spec import SweepError

    try:
        if getattr(args, "tracking_uri", None) and (why := password_problem(args.tracking_uri)):
            raise SweepError(f"--tracking-uri {why}")
        return args.func(args)
    except (SweepError, ConfigError, PhaseInputError) as err:
        print(f"minima {args.command}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: `minima resume NAME` continues the sweep from its checkpoints", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `minima validate big.yaml | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not raise again
        return 1


if __name__ == "__main__":
    sys.exit(main())
