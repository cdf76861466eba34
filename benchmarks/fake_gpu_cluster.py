"""A simulated autoscaling GPU cluster on this machine, and a sweep run against it.

Ray's fake multi-node provider (`ray.autoscaler._private.fake_multi_node`) starts each "node" the
autoscaler launches as a raylet on this machine, with the resources its node type declares, so a
`GPU` worker type exists without a GPU (trials then train on CPU: torch sees no CUDA). The node
types mirror deploy/aws/cluster.yaml: a head without GPUs, GPU worker types with `min_workers: 0`.

Not `ray.cluster_utils.AutoscalingCluster`: it needs `fake_multi_node/example.yaml` (not in this
Ray wheel) and runs `ray stop --force`, which kills every Ray process of this user, other
clusters included. This one gets its own ports and temp dir and stops only its own processes.

    python benchmarks/fake_gpu_cluster.py     # one sweep, prints its timeline as JSON
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "sweeps" / "smoke.yaml"

# Shaped like deploy/aws/cluster.yaml's workers: a 1-GPU type and a bigger multi-GPU one, both from 0.
# Small CPU counts: every fake node is real processes on this (2-core) machine.
WORKER_TYPES = {
    "gpu-1": {"min_workers": 0, "max_workers": 4, "resources": {"CPU": 1, "GPU": 1}, "node_config": {}},
    "gpu-4": {"min_workers": 0, "max_workers": 1, "resources": {"CPU": 2, "GPU": 4}, "node_config": {}},
}
HEAD_TYPE = "ray.head.default"  # the name the fake provider gives its head


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_config(gcs_address: str, idle_timeout_s: float, worker_types: dict, head_cpus: int) -> dict:
    """The autoscaler config the fake provider runs on (what Ray's missing example.yaml holds)."""
    return {
        "cluster_name": "minima-fake-gpu",
        "max_workers": sum(t["max_workers"] for t in worker_types.values()),
        "upscaling_speed": 2.0,  # as deploy/aws/cluster.yaml
        "idle_timeout_minutes": idle_timeout_s / 60,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,  # else it assumes port 6379, another cluster's perhaps
            "use_node_id_as_ip": True,
            "launch_multiple": True,  # start all `count` nodes of a launch, as a cloud would (else one)
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "head_node_type": HEAD_TYPE,
        "available_node_types": {
            HEAD_TYPE: {"resources": {"CPU": head_cpus, "GPU": 0}, "node_config": {}, "max_workers": 0},
            **worker_types,
        },
        "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


class FakeGpuCluster:
    """Head (no GPU) plus an autoscaler that adds and removes fake GPU worker nodes."""

    def __init__(self, idle_timeout_s: float = 15, worker_types: dict | None = None, head_cpus: int = 1):
        self.idle_timeout_s = idle_timeout_s
        self.worker_types = worker_types if worker_types is not None else WORKER_TYPES
        self.head_cpus = head_cpus
        # Short: Ray's unix socket paths under it must stay under 108 characters.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rayfake-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._gcs = None

    def env(self) -> dict:
        """Environment of the head's processes (the autoscaler's fake nodes inherit it)."""
        env = dict(os.environ)
        env.update({
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "RAY_AUTH_MODE": "token",  # token from RAY_AUTH_TOKEN(_PATH) or ~/.ray/auth_token
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every node on 127.0.0.1
        })
        env.pop("RAY_ADDRESS", None)
        return env

    def start(self) -> None:
        from sweeps.cluster.ray_auth import TOKEN_ENV, TOKEN_PATH_ENV, make_private_token

        if not (os.environ.get(TOKEN_ENV) or os.environ.get(TOKEN_PATH_ENV)):
            make_private_token()
        config = self.temp_dir / "autoscaler.json"
        config.write_text(json.dumps(cluster_config(self.address, self.idle_timeout_s, self.worker_types,
                                                    self.head_cpus)))
        cmd = ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
               f"--temp-dir={self.temp_dir}", f"--autoscaling-config={config}",
               f"--num-cpus={self.head_cpus}", "--num-gpus=0", "--include-dashboard=false",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               f"--metrics-export-port={free_port()}", "--disable-usage-stats"]
        ray_bin = str(Path(sys.executable).parent / "ray")
        out = subprocess.run([ray_bin, *cmd[1:]], env=self.env(), capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            self.shutdown()
            raise RuntimeError(f"ray start --head failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")

    def nodes(self) -> list[dict]:
        """Alive nodes: {"id", "type", "resources"} (type from the fake provider's node ids)."""
        from ray._raylet import GcsClient

        if self._gcs is None:
            self._gcs = GcsClient(address=self.address)
        alive = []
        for node_id, info in self._gcs.get_all_node_info(timeout=30).items():
            if info.state != 0:  # GcsNodeInfo.ALIVE
                continue
            alive.append({"id": info.node_id.hex() if isinstance(info.node_id, bytes) else str(node_id),
                          "head": info.is_head_node,
                          "resources": dict(info.resources_total)})
        return alive

    def workers(self) -> list[dict]:
        return [n for n in self.nodes() if not n["head"]]

    def own_pids(self) -> list[int]:
        """Processes of this cluster: every Ray process here names this cluster's temp dir
        (session dir, sockets, logs) on its command line."""
        mark = str(self.temp_dir).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if mark in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    def shutdown(self) -> None:
        """SIGTERM, then SIGKILL, to this cluster's processes only (never `ray stop`)."""
        self._gcs = None
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            pids = self.own_pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while pids and time.monotonic() < deadline:
                time.sleep(0.5)
                pids = self.own_pids()
            if not pids:
                break
        if not os.environ.get("MINIMA_KEEP_FAKE_CLUSTER_LOGS"):
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def wait_for(what: str, check, timeout_s: float, poll_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not seen within {timeout_s:.0f} s")
        time.sleep(poll_s)


SWEEP_SETTINGS = {
    # 8 Ray trials, each asking for a quarter GPU: demand 2 GPUs, none on the head.
    "pack": "1", "resources.gpu": "0.25", "resources.cpu": "0.25",
    # The fake GPUs have no CUDA. With `device: auto` and GPUs asked for, the driver keys shared
    # pretraining snapshots by "cuda" while the trials train (and save) on CPU.
    "base.device": "cpu",
    "base.width": "16", "base.depth": "1", "base.epochs": "2", "base.flatness_samples": "0",
    "base.stop_at_train_acc": "null", "axes.pretrain_epochs": "[0, 1]",
}


def run_sweep(root: Path, cluster: FakeGpuCluster, settings: dict | None = None, timeout_s: float = 600,
              first_worker_timeout_s: float = 120, log=print) -> dict:
    """`minima run` of a tiny smoke sweep on the cluster: its output, and the worker nodes seen
    while it ran (seconds from this call)."""
    settings = {**SWEEP_SETTINGS, **(settings or {}), "storage": str(root / "results"),
                "tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}
    cmd = [sys.executable, "-m", "minima.cli", "run", str(SMOKE)]
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    # `minima run` keeps a 127.0.0.1 RAY_ADDRESS as it is (ray_auth.advertise_loopback): the head
    # listens on 127.0.0.1 only.
    env = dict(os.environ, RAY_ADDRESS=cluster.address, RAY_AUTH_MODE="token")
    t0 = time.monotonic()
    log_path = root / "minima-run.log"
    seen, max_workers, max_gpus, first_worker = set(), 0, 0.0, None
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
        try:
            while proc.poll() is None:
                if first_worker is None and time.monotonic() - t0 > first_worker_timeout_s:
                    raise TimeoutError(f"no worker node within {first_worker_timeout_s:.0f} s of the sweep's start: "
                                       f"the autoscaler saw no demand it could meet; log {log_path}")
                if time.monotonic() - t0 > timeout_s:
                    raise TimeoutError(f"minima run: not done within {timeout_s:.0f} s; log {log_path}")
                workers = cluster.workers()
                if workers and first_worker is None:
                    first_worker = time.monotonic() - t0
                    log(f"  first worker node at {first_worker:.1f} s after the sweep started")
                seen.update(w["id"] for w in workers)
                max_workers = max(max_workers, len(workers))
                max_gpus = max(max_gpus, sum(w["resources"].get("GPU", 0) for w in workers))
                time.sleep(1)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"returncode": proc.returncode, "output": log_path.read_text(), "seconds": time.monotonic() - t0,
            "first_worker_s": first_worker, "worker_nodes_seen": len(seen), "max_workers": max_workers,
            "max_worker_gpus": max_gpus}


def autoscaling_run(root: Path, idle_timeout_s: float = 15, worker_types: dict | None = None,
                    settings: dict | None = None, log=print) -> dict:
    """Cluster up, sweep, wait for the idle workers to go; a timeline in seconds from the start."""
    root.mkdir(parents=True, exist_ok=True)
    cluster = FakeGpuCluster(idle_timeout_s=idle_timeout_s, worker_types=worker_types)
    t0 = time.monotonic()
    timeline: dict = {}
    try:
        cluster.start()
        wait_for("the head node", lambda: cluster.nodes(), 60)
        timeline["cluster_up"] = round(time.monotonic() - t0, 1)
        log(f"cluster up at {cluster.address} in {timeline['cluster_up']} s")
        time.sleep(3)  # the autoscaler's first rounds: with no demand it must add nothing
        workers_before = len(cluster.workers())
        sweep_start = time.monotonic() - t0
        sweep = run_sweep(root, cluster, settings, log=log)
        timeline["sweep_started"] = round(sweep_start, 1)
        if sweep["first_worker_s"] is not None:
            timeline["first_worker_added"] = round(sweep_start + sweep["first_worker_s"], 1)
        timeline["sweep_done"] = round(time.monotonic() - t0, 1)
        log(f"sweep done at {timeline['sweep_done']} s (rc {sweep['returncode']})")
        removed = None
        if sweep["returncode"] == 0:
            # idle timeout plus the autoscaler's rounds and the node's own shutdown, on a loaded machine
            removed = wait_for("worker nodes removed after the idle timeout",
                               lambda: not cluster.workers(), idle_timeout_s + 120)
            timeline["workers_removed"] = round(time.monotonic() - t0, 1)
            log(f"workers removed at {timeline['workers_removed']} s")
        return {"timeline": timeline, "workers_before_sweep": workers_before,
                "workers_after": len(cluster.workers()), "removed": bool(removed), **sweep}
    finally:
        cluster.shutdown()
        timeline["torn_down"] = round(time.monotonic() - t0, 1)


def main() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    root = Path(tempfile.mkdtemp(prefix="minima-autoscale-"))
    try:
        result = autoscaling_run(root, log=lambda m: print(m, file=sys.stderr))
        tail = re.findall(r"^.*trials:.*$", result["output"], flags=re.M)
        result["output"] = tail or result["output"][-2000:]
        print(json.dumps(result, indent=1))
    finally:
        if not os.environ.get("MINIMA_KEEP_FAKE_CLUSTER_LOGS"):
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
