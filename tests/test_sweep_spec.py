"""Sweep-file validation: every rule fails with the file, the field and what is allowed."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweeps.cluster.ray_cluster import check_resources
from sweeps.design.spec import SweepError, load_sweep, parse_sweep

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"
SHIPPED = sorted(SWEEPS.glob("*.yaml"))


def sweep(**overrides):
    data = {"name": "t", "base": {"width": 16, "epochs": 2}, "axes": {"weight_decay": [0.0, 1e-4]}, "seeds": 2}
    data.update(overrides)
    return data


def error_of(data) -> str:
    with pytest.raises(SweepError) as err:
        parse_sweep(data, "test.yaml")
    return str(err.value)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_sweep_files_are_valid(path):
    spec = load_sweep(path)
    assert spec.num_trials() >= 1


def test_grid_counts_trials_and_expands_ranges():
    spec = parse_sweep(sweep(axes={"weight_decay": [0.0, 1e-4], "lr": {"low": 0.01, "high": 1.0, "count": 3, "scale": "log"},
                                   "pretrain_epochs": {"low": 0, "high": 100, "count": 5}}))
    assert spec.axis_values("lr") == [0.01, 0.1, 1.0]
    assert spec.axis_values("pretrain_epochs") == [0, 25, 50, 75, 100]
    assert spec.num_trials() == 2 * 3 * 5 * 2


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"colour": "red"}, "colour: unknown key; allowed here: name,"),
        ({"base": {"widht": 3}}, "base.widht: unknown key; did you mean 'width'"),
        ({"axes": {"wd": [1]}}, "unknown axis 'wd'"),
        ({"axes": {"seed": [1, 2]}}, "seed is not an axis"),
        ({"axes": {"weight_decay": []}}, "axis 'weight_decay' is empty"),
        ({"axes": {"weight_decay": [-0.1, 0.0]}}, "axes.weight_decay = -0.1: Input should be greater than or equal to 0"),
        ({"axes": {"label_noise": [0.5, 1.5]}}, "axes.label_noise = 1.5: Input should be less than or equal to 1"),
        ({"axes": {"label_noise": {"low": 0.0, "high": 1.0, "scale": "log"}}}, "a log range needs low > 0"),
        ({"base": {"epochs": 2}, "axes": {"width": ["wide"]}}, "axes.width = 'wide': Input should be a valid integer"),
        ({"base": {"weight_decay": -1}}, "base.weight_decay: Input should be greater than or equal to 0"),
        ({"base": {"width": 16, "label_noise": 2}}, "base.label_noise: Input should be less than or equal to 1"),
        ({"base": {"weight_decay": 0.1}}, "weight_decay in both base and axes"),
        ({"seeds": []}, "seeds: at least one seed is needed"),
        ({"seeds": "three"}, "seeds:"),
        ({"search": {"kind": "random"}}, "needs num_samples"),
        ({"search": {"kind": "optuna", "num_samples": 4}}, "needs metric"),
        ({"search": "annealing"}, "search.kind: Input should be 'grid', 'random', 'optuna' or 'boundary'"),
        ({"resources": {"gpu": -1}}, "resources.gpu: Input should be greater than or equal to 0"),
        ({"resources": {"gpu": 1.5}}, "more than one GPU per trial must be a whole number"),
        ({"max_failures": "many"}, "max_failures: Input should be a valid integer"),
        ({"name": "has space"}, "name: String should match pattern"),
        ({"axes": {"augmentation": ["none", "flip_crop"]}}, "axes.augmentation = 'flip_crop': 'flip_crop' does not apply to mnist1d"),
    ],
)
def test_bad_sweep_files_name_the_field(overrides, expected):
    message = error_of(sweep(**overrides))
    assert message.startswith("test.yaml: invalid sweep file")
    assert expected in message, message


def test_gpu_on_local_ray_without_gpu_is_refused_but_a_cluster_waits():
    spec = parse_sweep(sweep(resources={"gpu": 0.25}))
    with pytest.raises(SweepError, match=r"resources.gpu: 0.25 GPU per trial, but local Ray has 0 GPUs"):
        check_resources(spec, {"CPU": 2.0}, on_cluster=False)
    assert check_resources(spec, {"CPU": 2.0, "GPU": 1.0}, on_cluster=False) is None
    notice = check_resources(spec, {"CPU": 8.0}, on_cluster=True)
    assert "wait for GPU worker nodes" in notice and "autoscaler" in notice


def test_sweep_files_are_read_with_the_safe_loader(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(SweepError, match="not valid YAML"):
        load_sweep(evil)
    assert not Path("pwned").exists()


def test_set_overrides_dotted_paths(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep()))
    spec = load_sweep(path, {"base.epochs": 7, "resources.cpu": 0.5, "seeds": [3]}, name="renamed")
    assert spec.base["epochs"] == 7 and spec.resources.cpu == 0.5 and spec.seeds == [3] and spec.name == "renamed"


def minima(*args):
    return subprocess.run([sys.executable, "-m", "minima.cli", *args], capture_output=True, text=True, timeout=120)


def test_validate_prints_the_plan_and_bad_files_exit_2(tmp_path):
    out = minima("validate", str(SWEEPS / "smoke.yaml"), "--set", f"storage={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert "trials    8" in out.stdout and "axis      weight_decay" in out.stdout and "resources cpu 1" in out.stdout
    assert "Ray trials of up to" in out.stdout  # width 64: packed
    assert "size      8 trials in " in out.stdout and "MLflow: 9 runs (a trial each, and the parent)" in out.stdout
    wide = minima("validate", str(SWEEPS / "smoke.yaml"), "--set", f"storage={tmp_path}", "--set", "base.width=1024")
    assert "packed    no: MLPs wider than 512 train faster alone on CPU" in wide.stdout, wide.stdout
    mixed = minima("validate", str(SWEEPS / "smoke.yaml"), "--set", f"storage={tmp_path}", "--set", "axes.width=[64, 1024]")
    assert "packed    10 Ray trials of up to 4 trials each" in mixed.stdout, mixed.stdout  # 8 of width 64 in 2 packs
    assert "alone     dataset=mnist1d model=mlp width=1024 depth=2 batch_size=64 device=auto torch_threads=1: " \
           "MLPs wider than 512 train faster alone on CPU" in mixed.stdout
    assert "pack      dataset=mnist1d model=mlp width=64 depth=2 batch_size=64 device=auto torch_threads=1: " \
           "up to 4 trials per Ray trial" in mixed.stdout
    bad = minima("validate", str(SWEEPS / "smoke.yaml"), "--set", "axes.weight_decay=[-1]", "--set", "resources.gpu=0.5")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "smoke.yaml" in bad.stderr and "axes.weight_decay = -1" in bad.stderr
    edge = minima("validate", str(SWEEPS / "smoke.yaml"), "--set", f"storage={tmp_path}",
                  "--set", "axes.pretrain_epochs={low: 0, high: 8, count: 3}", "--set", "search={kind: boundary, max_trials: 40}")
    assert edge.returncode == 0, edge.stderr
    assert "trials    at most 40" in edge.stdout and "2 slices along pretrain_epochs; coarse grid 8 trials" in edge.stdout



def test_validate_of_a_big_sweep_fits_in_a_terminal(tmp_path):
    many = minima("validate", str(SWEEPS / "smoke.yaml"), "--set", f"storage={tmp_path}", "--set", "seeds=2500",
                  "--set", "axes.weight_decay=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13.5]")
    assert many.returncode == 0, many.stderr
    assert "(2500 seeds: 0..2499)" in many.stdout, many.stdout
    assert "weight_decay: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ... 2 more]" in many.stdout, many.stdout
    assert max(map(len, many.stdout.splitlines())) < 300

def test_unwritable_storage_fails_before_anything_runs(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a folder cannot be made under a file, even by root
    out = minima("run", str(SWEEPS / "smoke.yaml"), "--set", f"storage={blocker / 'results'}",
                 "--set", f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}")
    assert out.returncode == 2, out.stderr
    assert "smoke.yaml: storage: cannot write to" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing started


def test_a_full_disk_fails_before_anything_runs(tmp_path):
    import subprocess

    disk = tmp_path / "tiny-disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("needs permission to mount a 256 KiB tmpfs as a full disk")
    try:
        out = minima("run", str(SWEEPS / "smoke.yaml"), "--set", f"storage={disk / 'results'}",
                     "--set", f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}")
        assert out.returncode == 2, out.stderr
        assert "storage: cannot write to" in out.stderr and "No space left on device" in out.stderr
        assert "Traceback" not in out.stderr and not (tmp_path / "mlflow.db").exists()
        assert not any(disk.rglob("*.json"))  # no sweep state was left on the full disk
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_exponent_floats_in_yaml_are_numbers(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: t\nbase: {width: 16}\naxes:\n  weight_decay: [0, 5e-4, 1e-3]\n")
    assert load_sweep(path).axis_values("weight_decay") == [0, 5e-4, 1e-3]


@pytest.mark.parametrize("field, uri, where", [
    ("tracking_uri", "http://alice:s3cr3t@10.0.0.1:5000", "MLFLOW_TRACKING_PASSWORD"),
    ("tracking_uri", "postgresql+psycopg2://bob:s3cr3t@db.internal/mlflow", "~/.pgpass"),
    ("storage", "s3://AKIAEXAMPLE:s3cr3t@bucket/sweeps", "AWS credentials"),
])
def test_a_uri_with_a_password_is_refused_before_it_is_printed_or_stored(field, uri, where):
    """A password in a URI would go into the run's output, minima_sweep.json, the report and `ps`."""
    out = minima("validate", "sweeps/smoke.yaml", "--set", f"{field}={uri}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert field in out.stderr and where in out.stderr and "s3cr3t" not in out.stdout + out.stderr
    assert parse_sweep({"name": "ok", "base": {}, field: uri.replace(":s3cr3t", "")})  # a user name alone is fine


def test_a_tracking_uri_flag_with_a_password_is_refused():
    for args in (("ui", "--tracking-uri", "postgresql://bob:s3cr3t@db/mlflow"),
                 ("sync-mlflow", "smoke", "--tracking-uri", "http://alice:s3cr3t@10.0.0.1:5000")):
        out = minima(*args)
        assert out.returncode == 2 and "--tracking-uri" in out.stderr and "s3cr3t" not in out.stdout + out.stderr
