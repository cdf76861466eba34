"""`minima --help` and `minima validate` answer without importing torch, Ray or MLflow (each takes
seconds to import); the commands that run or read a sweep import them inside themselves."""

import json
import os
import subprocess
import sys
from pathlib import Path

DEMO = str(Path(__file__).resolve().parent.parent / "sweeps" / "demo.yaml")
HEAVY = ("torch", "ray", "mlflow")
# Runs the command in this process, then lists the heavy packages that got imported.
PROBE = """
import json, sys
from minima.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit_:
    code = exit_.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(%r)))
print(json.dumps({"code": code, "heavy": heavy}))
"""


def imported_by(*args: str, cwd: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE % json.dumps(HEAVY), *args], capture_output=True, text=True,
                         timeout=120, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_imports_no_torch_ray_or_mlflow(tmp_path):
    assert imported_by("--help", cwd=tmp_path) == {"code": 0, "heavy": []}


def test_validate_imports_no_torch_ray_or_mlflow(tmp_path):
    got = imported_by("validate", DEMO, "--set", f"storage={tmp_path / 'r'}", "--set",
                      f"tracking_uri=sqlite:///{tmp_path / 'm.db'}", cwd=tmp_path)
    # On a machine with an NVIDIA driver, the local resource check asks torch how many GPUs there are.
    allowed = {"torch"} if os.path.exists("/dev/nvidiactl") or os.environ.get("CUDA_VISIBLE_DEVICES") else set()
    assert got["code"] == 0 and set(got["heavy"]) <= allowed, got


def test_status_imports_no_torch_ray_or_mlflow(tmp_path):
    """`minima status` reads the storage only: from a laptop, nothing heavy to import."""
    import tarfile

    with tarfile.open(Path(__file__).parent / "fixtures" / "stored_sweeps.tar.gz") as archive:
        archive.extractall(tmp_path / "store", filter="data")  # two stored sweeps (and files beside them)
    assert imported_by("status", "--storage", "store", cwd=tmp_path) == {"code": 0, "heavy": []}
    assert imported_by("status", "fx_grid", "--storage", "store", cwd=tmp_path) == {"code": 0, "heavy": []}
