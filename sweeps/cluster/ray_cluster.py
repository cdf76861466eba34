"""Where a sweep runs: local Ray with this machine's CPUs and GPUs, or the cluster at RAY_ADDRESS.
Starting Ray, what it has, and the checks that fail before Ray schedules a trial."""

from __future__ import annotations

import os

from trainables.provenance import git_commit

from ..design.spec import SweepError, SweepSpec
from ..storage.sweep_files import check_storage_writable


def _on_cluster() -> bool:
    return bool(os.environ.get("RAY_ADDRESS"))


def init_ray(runtime_env: dict | None = None) -> None:
    """Local Ray with this machine's CPUs (dashboard off), or the cluster at RAY_ADDRESS;
    `runtime_env` adds to what every worker gets (a benchmark's data-staging hook).

    Ray's token authentication stays as Ray sets it: on for local Ray (a private token in
    ~/.ray/auth_token), on a cluster whatever its nodes were started with; a RAY_AUTH_MODE the
    user set is theirs. `minima run`/`resume` put Ray in its single-machine mode before it loads
    (ray_auth.advertise_loopback), so local Ray listens on and advertises 127.0.0.1 only.
    """
    import ray

    if ray.is_initialized():
        return
    # Each trial forces a save of the experiment state every CHECKPOINTS_TO_KEEP checkpoints; with
    # many short trials Ray warns about it every few seconds (0 turns the warning off). Saving a
    # sweep's state takes milliseconds.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    env = {"MINIMA_GIT_COMMIT": git_commit() or ""}
    for name in ("MINIMA_DATA_DIR", "MINIMA_NO_DOWNLOAD"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    runtime_env = {**(runtime_env or {}), "env_vars": env}
    if _on_cluster():
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=runtime_env, log_to_driver=False)
        return
    from .ray_auth import AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV, make_private_token

    if os.environ.get(AUTH_MODE_ENV, "token") == "token" and not (
            os.environ.get(TOKEN_ENV) or os.environ.get(TOKEN_PATH_ENV)):
        make_private_token()  # before Ray would write one readable by every local user
    ray.init(address="local", include_dashboard=False, runtime_env=runtime_env,
             log_to_driver=False, configure_logging=False)


def check_resources(spec: SweepSpec, have: dict[str, float], on_cluster: bool) -> str | None:
    """Refuse what local Ray could never schedule; on a cluster, return what it will wait for.

    Ray never fails a trial whose resources no node has: it waits forever. Locally nothing will
    ever join, so that is an error; an autoscaling cluster adds GPU nodes on demand.
    """
    want_gpu, want_cpu = spec.resources.gpu, spec.resources.cpu
    if on_cluster:
        if want_gpu > 0 and have.get("GPU", 0) < want_gpu:
            return (f"resources.gpu: {want_gpu:g} per trial; the cluster has {have.get('GPU', 0):g} GPUs now. "
                    f"Trials wait for GPU worker nodes, which the autoscaler adds on demand.")
        return None
    if want_gpu > 0 and have.get("GPU", 0) < want_gpu:
        raise SweepError(
            f"resources.gpu: {want_gpu:g} GPU per trial, but local Ray has {have.get('GPU', 0):g} GPUs, so the "
            f"trials would wait forever. Set resources.gpu: 0 (or --set resources.gpu=0), or run on a "
            f"cluster (RAY_ADDRESS=..., or minima submit)."
        )
    if want_cpu > have.get("CPU", 0):
        raise SweepError(f"resources.cpu: {want_cpu:g} CPUs per trial, but this machine has {have.get('CPU', 0):g}; "
                         f"lower it (e.g. --set resources.cpu=1).")
    return None


def local_resources() -> dict[str, float]:
    """What local Ray would have, without starting it: this machine's CPUs and CUDA GPUs."""
    have: dict[str, float] = {"CPU": float(os.cpu_count() or 1)}
    if os.path.exists("/dev/nvidiactl") or os.environ.get("CUDA_VISIBLE_DEVICES"):
        import torch

        have["GPU"] = float(torch.cuda.device_count())
    return have


def preflight(spec: SweepSpec, source: str = "sweep", tracking: bool = True) -> None:
    """Checks that need no Ray: storage, resources when the sweep runs on local Ray, and that a
    tracking server with accounts takes this client's credentials."""
    try:
        check_storage_writable(spec.storage)
        if not _on_cluster():
            check_resources(spec, local_resources(), on_cluster=False)
        if tracking:
            _check_tracking(spec.tracking_uri)
    except SweepError as err:
        raise SweepError(f"{source}: {err}") from None


def check_reach(spec: SweepSpec, source: str = "sweep") -> None:
    """`minima validate --online`: the storage takes a write and the tracking server answers and
    takes this client's credentials, as seen from this machine. No resource check: a cluster
    sweep is validated away from its cluster."""
    try:
        check_storage_writable(spec.storage)
        _check_tracking(spec.tracking_uri, require_answer=True)
    except SweepError as err:
        raise SweepError(f"{source}: {err}") from None


def _check_tracking(uri: str, require_answer: bool = False) -> None:
    from .mlflow_auth import access_problem

    problem = access_problem(uri, require_answer=require_answer)
    if problem:
        raise SweepError(f"tracking_uri: {problem}")


PLACEHOLDERS = ("CHANGE-ME", "HEAD_PRIVATE_IP")  # what the shipped cluster sweeps ask the user to replace


def target_lines(spec: SweepSpec) -> list[str]:
    """Where the sweep can run as its file stands, from the file and this machine alone: no
    storage or tracking server is contacted (`check_reach` does that)."""
    from trainables.uri import is_uri

    lines = []
    gpus = f" with GPU workers ({spec.resources.gpu:g} GPU per trial)" if spec.resources.gpu > 0 else ""
    if is_uri(spec.storage):
        lines.append(f"a Ray cluster{gpus}: storage is an object store (deploy/aws, deploy/gcp, deploy/kuberay)")
    elif os.path.isabs(os.path.expanduser(spec.storage)):
        lines.append(f"this machine, or a cluster{gpus} whose nodes all mount {spec.storage}")
    else:
        lines.append("this machine: storage is a folder relative to where `minima run` starts "
                     "(a cluster needs an s3:// or gs:// URI, or an absolute shared path)")
    if not _on_cluster():
        have = local_resources()
        if spec.resources.gpu > have.get("GPU", 0):
            lines.append(f"not this machine as it is: {spec.resources.gpu:g} GPU per trial, {have.get('GPU', 0):g} here "
                         f"(`minima run` here refuses it; --set resources.gpu=0 runs it on CPUs)")
        elif spec.resources.cpu > have.get("CPU", 0):
            lines.append(f"not this machine as it is: {spec.resources.cpu:g} CPUs per trial, {have.get('CPU', 0):g} here")
    return lines


def placeholder_fields(spec: SweepSpec) -> list[str]:
    """The fields still holding a shipped placeholder (an address or bucket to replace)."""
    return [field for field, value in (("storage", spec.storage), ("tracking_uri", spec.tracking_uri))
            if any(mark in value for mark in PLACEHOLDERS)]


def cluster_cpus() -> float:
    import ray

    return ray.cluster_resources().get("CPU", 1.0)


def cluster_notice(spec: SweepSpec) -> str | None:
    import ray

    return check_resources(spec, ray.cluster_resources(), _on_cluster())


def local_slots(spec: SweepSpec) -> int | None:
    """Trials that run at once on local Ray (None on a cluster, which grows and shrinks)."""
    if _on_cluster():
        return None
    return _slots(spec, local_resources())


def _slots(spec: SweepSpec, have: dict[str, float]) -> int:
    slots = int(have.get("GPU", 0) // spec.resources.gpu) if spec.resources.gpu > 0 else int(have.get("CPU", 1) // spec.resources.cpu)
    return max(1, min(slots, spec.max_concurrent or slots))


def trial_slots(spec: SweepSpec) -> int:
    """Trials that can run at once now: local Ray's slots, or what the cluster holds at this moment."""
    local = local_slots(spec)
    if local is not None:
        return local
    import ray

    return _slots(spec, ray.cluster_resources())
