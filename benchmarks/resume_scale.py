"""Claim (issue 33 item 5): resuming or extending a 10,000-trial sweep reads back only what it
must: the MLflow audit skips the Tune experiments (parts) that an earlier check confirmed at the
same tracking URI (`confirmed` in the sweep's minima_mlflow.json), where commit 1f73c8e read the
whole MLflow experiment back after a resume or an extension whose first parts were skipped.

Evidence: the CLI driven as a user drives it, one subprocess per step, on a stored, finished
sweep made with MLflow on: the folder `benchmarks/sweep_scale.py --trials N --modes unpacked
--mlflow on --no-warmup --keep --dir DIR` leaves (its sweep.yaml, results/ and mlflow.db; `--dir`
names it or a folder up to two levels above it), or, without `--dir`, one made here that way
(10,000 trials of `pack: 1`: 10 parts of 1,000 Ray trials; `--part-ray-trials K` cuts a toy
sweep into parts of K as well). Each version, "new" (this checkout) and "old" (a clone of
`--old`, run with PYTHONPATH at it), gets its own copy of the stored sweep for each repeat
(results/ and mlflow.db copied, the tracking URI and storage its stored minima_*.json files hold
pointed at the copy), and on it: `minima resume NAME` twice in a row (the first may confirm
parts that the sweep's own end did not record; the second is the steady state), then `minima
run EXT.yaml`, the sweep file with `--extend-fraction` more trials as further seeds. The
versions alternate (old, new; then new, old; ...), each after one unmeasured import of its
code. Recorded per step: wall seconds, the load average around it, the trial counts it printed,
and the `confirmed` entry of minima_mlflow.json after it; per step and version the median, and
new/old of the medians. A step that fails, or an MLflow store left without a FINISHED run for
every trial, ends the run with a non-zero exit that names the step. Prints JSON; `--out` writes
it to a file. A sweep run as one Tune experiment (no parts) is refused unless
`--allow-one-experiment`: its resume restores that experiment, and the MLflow callback Tune
pickled with it still names the stored sweep's tracking URI, so each resume of a copy ends the
stored sweep's own MLflow parent run again (its end time changes; the audit reads the copy).

    python benchmarks/resume_scale.py [--dir DIR | --trials 10000] [--part-ray-trials K]
        [--extend-fraction 0.01] [--repeats 1] [--old 1f73c8e] [--versions old,new]
        [--allow-one-experiment] [--work DIR] [--keep] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from sweep_scale import mlflow_counts  # the same store query as the sweep that made it

REPO = Path(__file__).resolve().parent.parent
OLD_COMMIT = "1f73c8e"  # the audit before `confirmed`: it read every run back after skipped parts
PART_ENV = "MINIMA_PART_RAY_TRIALS"  # sweeps/run/parts.py
STEPS = ("resume_1", "resume_2", "extend")
RUN_FILES = ("minima_sweep.json", "minima_run.json", "minima_mlflow.json")  # sweeps/storage/sweep_files.py


class StepFailed(RuntimeError):
    pass


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "minima.cli", *args]


def child_env(code: Path, part_limit: int | None) -> dict:
    """Local Ray, this version's code first on the path, its own commit on the MLflow runs."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("MINIMA_GIT_COMMIT", None)
    others = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO]
    env["PYTHONPATH"] = os.pathsep.join([str(code), *others])
    if part_limit:
        env[PART_ENV] = str(part_limit)
    return env


def run_step(what: str, cmd: list[str], cwd: Path, env: dict, log: Path) -> tuple[float, str, list, list]:
    """Wall seconds, the output, and the load average before and after."""
    load = os.getloadavg()
    started = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    text = log.read_text(errors="replace")
    if code != 0:
        raise StepFailed(f"{what} failed (exit {code}); its output, last lines:\n"
                         + "\n".join(text.splitlines()[-15:]) + f"\n(full log: {log})")
    return wall, text, [round(x, 2) for x in load], [round(x, 2) for x in os.getloadavg()]


def find_stored(folder: Path) -> Path:
    """The sweep folder sweep_scale.py left (sweep.yaml, results/, mlflow.db) at or under `folder`."""
    found = [p.parent for pattern in ("sweep.yaml", "*/sweep.yaml", "*/*/sweep.yaml") for p in folder.glob(pattern)
             if (p.parent / "mlflow.db").is_file() and (p.parent / "results").is_dir()]
    if len(found) != 1:
        raise StepFailed(f"--dir {folder}: {len(found)} sweep folders (sweep.yaml, results/, mlflow.db) found at "
                         f"most two levels down{': ' + ', '.join(map(str, found)) if found else ''}; name one")
    return found[0].resolve()


def make_stored(base: Path, trials: int, env: dict) -> tuple[Path, float]:
    made = base / "stored"
    made.mkdir()
    cmd = [sys.executable, str(REPO / "benchmarks" / "sweep_scale.py"), "--trials", str(trials), "--modes",
           "unpacked", "--mlflow", "on", "--no-warmup", "--keep", "--dir", str(made)]
    wall, *_ = run_step(f"making the stored sweep (sweep_scale.py --trials {trials})", cmd, base, env,
                        base / "make.log")
    return find_stored(made), wall


def old_checkout(base: Path, commit: str) -> tuple[Path, str]:
    """A clone of `commit` (sharing this repository's objects) in the work folder."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{commit}^{{commit}}"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    if not sha:
        raise StepFailed(f"--old {commit}: no such commit in {REPO}")
    dest = base / "old"
    for cmd in (["git", "clone", "--quiet", "--shared", "--no-checkout", str(REPO), str(dest)],
                ["git", "-C", str(dest), "checkout", "--quiet", "--detach", sha]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise StepFailed(f"checking out the old version ({' '.join(cmd)}): {done.stderr.strip()}")
    return dest, sha


def commit_of(code: Path) -> str:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=code, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=code, capture_output=True,
                           text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")


def warm_up(version: str, code: Path, env: dict, cwd: Path) -> None:
    """Import the version's code once, unmeasured (page cache), and check it is the code imported."""
    probe = ("import mlflow, ray, torch, minima.cli, sweeps, trainables, sweeps.run.runner, "
             "sweeps.tracking.mlflow_audit; print(minima.cli.__file__, sweeps.__file__, trainables.__file__)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True)
    paths = done.stdout.split()
    if done.returncode != 0 or len(paths) != 3 or not all(Path(p).resolve().is_relative_to(code) for p in paths):
        raise StepFailed(f"{version}: importing its code from {code}: {paths or done.stderr[-1500:]}")


def repoint(value, old: dict[str, str]):
    if isinstance(value, dict):
        return {k: repoint(v, old) for k, v in value.items()}
    if isinstance(value, list):
        return [repoint(v, old) for v in value]
    return old.get(value, value) if isinstance(value, str) else value


def copy_sweep(stored: Path, name: str, dest: Path) -> None:
    """results/ and mlflow.db copied into `dest`; the stored files' storage and tracking URI
    pointed at the copy (a resume takes the tracking URI from minima_sweep.json, and the audit
    keeps `confirmed` only for the URI minima_mlflow.json names)."""
    dest.mkdir(parents=True)
    shutil.copytree(stored / "results", dest / "results", symlinks=True)
    for db in stored.glob("mlflow.db*"):  # with a -wal or -journal file, if one was left
        shutil.copy2(db, dest / db.name)
    spec = json.loads((stored / "results" / name / "minima_sweep.json").read_text())
    moved = {spec["tracking_uri"]: f"sqlite:///{dest / 'mlflow.db'}", spec["storage"]: str(dest / "results")}
    for file in RUN_FILES:
        path = dest / "results" / name / file
        if path.exists():
            path.write_text(json.dumps(repoint(json.loads(path.read_text()), moved)))


def extension_file(stored: Path, dest: Path, seeds_added: int) -> tuple[Path, int]:
    """The stored sweep file with `seeds_added` more seeds, at the copy: its new trial count."""
    sweep = yaml.safe_load((stored / "sweep.yaml").read_text())
    seeds = sweep.get("seeds", [0])
    if isinstance(seeds, int):  # a count n: seeds 0..n-1
        seeds += seeds_added
    else:
        seeds = seeds + list(range(max(seeds) + 1, max(seeds) + 1 + seeds_added))
    sweep.update(seeds=seeds, storage=str(dest / "results"), tracking_uri=f"sqlite:///{dest / 'mlflow.db'}")
    path = dest / "ext.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path, cells(sweep) * seeds_added


def cells(sweep: dict) -> int:
    axes = sweep.get("axes") or {}
    if bad := [axis for axis, values in axes.items() if not isinstance(values, list)]:
        raise StepFailed(f"sweep.yaml: axes {bad} are not lists of values: the extension adds seeds to a grid of lists")
    return math.prod(len(values) for values in axes.values())


def mlflow_check(dest: Path, name: str) -> dict | None:
    path = dest / "results" / name / "minima_mlflow.json"
    check = json.loads(path.read_text()) if path.exists() else None
    return check and {k: check.get(k) for k in ("confirmed", "finished", "missing", "error")}


def counts_line(text: str, name: str) -> str | None:
    """The `sweep NAME: T trials: ...` line `minima resume` and `minima run` end with."""
    return next((line.strip() for line in text.splitlines()
                 if line.startswith(f"sweep {name}: ") and " trials: " in line), None)


def measure(version: str, env: dict, stored: Path, name: str, dest: Path, seeds_added: int, repeat: int) -> dict:
    started = time.perf_counter()
    copy_sweep(stored, name, dest)
    record = {"version": version, "repeat": repeat, "copy_s": round(time.perf_counter() - started, 1),
              "mlflow_check_before": mlflow_check(dest, name), "steps": {}}
    storage = str(dest / "results")
    ext, trials_added = extension_file(stored, dest, seeds_added)
    commands = {"resume_1": cli("resume", name, "--storage", storage),
                "resume_2": cli("resume", name, "--storage", storage),
                "extend": cli("run", str(ext))}
    for step, cmd in commands.items():
        what = f"{version} (repeat {repeat}) {step}: `minima {' '.join(cmd[3:])}`"
        wall, text, load_before, load_after = run_step(what, cmd, dest, env, dest / f"{step}.log")
        if unlogged := next((line.strip() for line in text.splitlines() if "not fully logged" in line), None):
            raise StepFailed(f"{what}: {unlogged} (full log: {dest / f'{step}.log'})")
        entry = {"wall_s": round(wall, 2), "loadavg_before": load_before, "loadavg_after": load_after,
                 "printed": counts_line(text, name), "mlflow_check_after": mlflow_check(dest, name)}
        if step == "extend":
            said = re.search(r"extending it: (\d+) trials kept, (\d+) new", text)
            if said is None:
                raise StepFailed(f"{what}: it did not say it extends the sweep (full log: {dest / 'extend.log'})")
            entry.update(kept=int(said[1]), new=int(said[2]))
            finished = mlflow_counts(dest / "mlflow.db", name)["child_runs"].get("FINISHED", 0)
            if entry["new"] != trials_added or finished != entry["kept"] + entry["new"]:
                raise StepFailed(f"{what}: {entry['new']} new trials (planned {trials_added}), {finished} FINISHED "
                                 f"MLflow runs for {entry['kept'] + entry['new']} trials (folder {dest})")
            entry["mlflow_finished_runs"] = finished
        record["steps"][step] = entry
    return record


def summarize(records: list[dict], versions: list[str]) -> dict:
    out = {}
    for step in STEPS:
        walls = {v: [r["steps"][step]["wall_s"] for r in records if r["version"] == v] for v in versions}
        medians = {v: round(statistics.median(w), 2) for v, w in walls.items() if w}
        out[step] = {"n": min(len(w) for w in walls.values()), **{f"wall_s_{v}": w for v, w in walls.items()},
                     **{f"median_s_{v}": m for v, m in medians.items()},
                     "new_over_old": (round(medians["new"] / medians["old"], 3)
                                      if {"new", "old"} <= set(medians) else None)}
    return out


def stored_facts(stored: Path, name: str, allow_one_experiment: bool) -> dict:
    folder = stored / "results" / name
    if not (folder / "minima_sweep.json").is_file():
        raise StepFailed(f"{stored}: no stored sweep {name!r} in results/ (looked for {folder}/minima_sweep.json)")
    settings = json.loads((folder / "minima_run.json").read_text())
    if not settings.get("log_to_mlflow"):
        raise StepFailed(f"{stored}: sweep {name!r} ran without MLflow; make it with `--mlflow on`")
    if settings.get("extensions"):
        raise StepFailed(f"{stored}: sweep {name!r} was extended already; use a sweep as sweep_scale.py made it")
    parts = len(list(folder.glob("part-*")))
    if not parts and not allow_one_experiment:
        raise StepFailed(f"{stored}: sweep {name!r} ran as one Tune experiment: resuming a copy of it would end the "
                         f"MLflow parent run in {stored / 'mlflow.db'} again (Tune's pickled callback names that "
                         f"store); pass --allow-one-experiment to accept that, or make a sweep in parts "
                         f"(--part-ray-trials)")
    sweep = yaml.safe_load((stored / "sweep.yaml").read_text())
    seeds = sweep.get("seeds", [0])
    seed_count = seeds if isinstance(seeds, int) else len(seeds)
    return {"stored": str(stored), "name": name, "trials": cells(sweep) * seed_count,
            "cells": cells(sweep), "parts": parts or 1, "one_experiment": not parts,
            "ray_trials_per_part": settings.get("ray_trials_per_part"),
            "stored_mlflow_check": mlflow_check(stored, name)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="a stored sweep: the folder sweep_scale.py --keep left, or one up to two "
                                      "levels above it")
    parser.add_argument("--trials", type=int, default=10_000,
                        help="without --dir: the size of the sweep made here (sweep_scale.py)")
    parser.add_argument("--part-ray-trials", type=int,
                        help=f"sets {PART_ENV} for every step: Ray trials per part of the sweep made here and of "
                             f"the extension (default: sweeps/run/parts.py's 1,000)")
    parser.add_argument("--extend-fraction", type=float, default=0.01,
                        help="the extension adds about this fraction of the trials, as whole seeds (at least one)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every version, alternating which goes first")
    parser.add_argument("--old", default=OLD_COMMIT, help="the commit the new version is compared with")
    parser.add_argument("--versions", default="old,new", help="old, new or both")
    parser.add_argument("--allow-one-experiment", action="store_true",
                        help="accept a sweep run as one Tune experiment, whose resumes also end the parent run in "
                             "the stored sweep's own MLflow store again")
    parser.add_argument("--work", help="make the work folder here (default: the system's temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (copies, logs, the made sweep)")
    parser.add_argument("--out", help="write the JSON here too")
    args = parser.parse_args()
    versions = [v.strip() for v in args.versions.split(",")]
    if bad := [v for v in versions if v not in ("old", "new")]:
        parser.error(f"--versions: unknown {bad}; use old, new")
    if not args.dir and not args.allow_one_experiment and args.trials <= (args.part_ray_trials or 1_000):
        parser.error(f"--trials {args.trials} fits in one part: pass --part-ray-trials below it, "
                     f"or --allow-one-experiment")
    base = Path(tempfile.mkdtemp(prefix="minima-resume-", dir=args.work)).resolve()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        codes = {"new": REPO}
        commits = {"new": commit_of(REPO)}
        if "old" in versions:
            codes["old"], commits["old"] = old_checkout(base, args.old)
        envs = {v: child_env(codes[v], args.part_ray_trials) for v in versions}
        make_s = None
        if args.dir:
            stored = find_stored(Path(args.dir).expanduser().resolve())
        else:
            stored, make_s = make_stored(base, args.trials, envs.get("new") or child_env(REPO, args.part_ray_trials))
        name = yaml.safe_load((stored / "sweep.yaml").read_text())["name"]
        facts = stored_facts(stored, name, args.allow_one_experiment)
        seeds_added = max(1, round(args.extend_fraction * facts["trials"] / facts["cells"]))
        for v in versions:
            warm_up(v, codes[v], envs[v], base)
        records, order = [], []
        for repeat in range(args.repeats):
            for v in (versions if repeat % 2 == 0 else versions[::-1]):  # this machine's speed drifts within minutes
                dest = base / f"{v}-{repeat}"
                record = measure(v, envs[v], stored, name, dest, seeds_added, repeat)
                print(json.dumps(record), file=sys.stderr)
                records.append(record)
                order.append(f"{v}-{repeat}")
                if not args.keep:
                    shutil.rmtree(dest, ignore_errors=True)
    except StepFailed as err:
        print(f"resume_scale: {err}", file=sys.stderr)
        print(f"resume_scale: work folder kept for inspection: {base}", file=sys.stderr)
        return 1
    report = {
        "benchmark": "resume_scale", "started_utc": started, "cpus": os.cpu_count(),
        **facts, "made_here_s": round(make_s, 1) if make_s is not None else None,
        "part_ray_trials": args.part_ray_trials,
        "extension": {"seeds_added": seeds_added, "trials_added": seeds_added * facts["cells"],
                      "fraction": round(seeds_added * facts["cells"] / facts["trials"], 4)},
        "versions": {v: {"commit": commits[v], "code": str(codes[v])} for v in versions},
        "order": order,
        "summary": summarize(records, versions),
        "records": records,
        "kept": str(base) if args.keep else None,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
