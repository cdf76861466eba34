"""Claim (issue 33): `minima status NAME` answers in at most 10 s for a 10,000-trial sweep on
local storage.

Evidence: the command as a user runs it, one subprocess per run (its imports included), on a
stored sweep (e.g. the 10,000-trial one `benchmarks/sweep_scale.py --trials 10000 --keep`
leaves), `--repeats` times in a row; wall seconds of each, their min, median and max, the
load average around them, and the sweep's counts from one more run with `--json` (timed
apart). The files are in the page cache after the first run, as they are for anyone who asks
twice. Prints JSON; `--out` writes it to a file.

    python benchmarks/status_scale.py NAME --storage DIR [--repeats 5] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def status(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "minima.cli", "status", *args], capture_output=True, text=True,
                          env=env, timeout=600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"`minima status {' '.join(args)}` failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return wall, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="a stored sweep")
    parser.add_argument("--storage", required=True, help="where it is stored")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="write the JSON here too")
    args = parser.parse_args()

    load_before = os.getloadavg()
    walls = [status(args.name, "--storage", args.storage)[0] for _ in range(args.repeats)]
    load_after = os.getloadavg()
    json_wall, done = status(args.name, "--storage", args.storage, "--json")
    s = json.loads(done.stdout)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    record = {
        "benchmark": "status_scale", "commit": commit, "cpus": os.cpu_count(),
        "command": f"minima status {args.name} --storage {args.storage}",
        "trials": s["trials"], "ray_trials": s["ray_trials"], "parts": len(s["parts"]), "counts": s["counts"],
        "n": len(walls), "wall_s": [round(w, 3) for w in walls],
        "min_s": round(min(walls), 3), "median_s": round(statistics.median(walls), 3), "max_s": round(max(walls), 3),
        "json_wall_s": round(json_wall, 3),
        "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in load_after],
        "claim_met": max(walls) <= 10.0,
    }
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
