"""Run, resume and account for a sweep on Ray Tune (local Ray by default, a cluster via RAY_ADDRESS).

Every check that can fail does so before Ray schedules a trial: the sweep file, the storage
path, GPUs on local Ray, a name already used.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from trainables.provenance import git_commit, package_version
from trainables.tune_trainable import CHECKPOINT_EVERY_KEY, SNAPSHOTS_KEY, member_values, tune_trainable  # light: torch loads in workers

from .safe_storage import prune_unreferenced_checkpoints, storage_filesystem
from .spec import SweepError, SweepSpec, parse_sweep

SPEC_FILE = "minima_sweep.json"  # the resolved sweep, stored beside Ray's experiment state
RUN_FILE = "minima_run.json"  # how it was started (logged to MLflow or not)
CHECKPOINTS_TO_KEEP = 3  # each trial forces an experiment snapshot after this many checkpoints


@dataclass
class SweepOutcome:
    name: str
    path: str
    total: int
    counts: dict[str, int]  # ok / diverged / error / unfinished
    mlflow: "MlflowAudit | None" = None  # None when the sweep was not logged
    storage: str = ""
    tracking_uri: str = ""

    @property
    def all_finished(self) -> bool:
        return self.counts.get("unfinished", 0) == 0


def is_uri(storage: str) -> bool:
    return "://" in storage


def storage_root(storage: str) -> str:
    """Absolute local path, or the URI unchanged (Ray needs absolute paths)."""
    return storage if is_uri(storage) else str(Path(storage).expanduser().resolve())


def experiment_path(spec: SweepSpec) -> str:
    return f"{storage_root(spec.storage).rstrip('/')}/{spec.name}"


def check_storage_writable(storage: str) -> None:
    """Fail now, not mid-sweep, when results could not be written."""
    if is_uri(storage):
        import pyarrow.fs

        try:
            fs, path = pyarrow.fs.FileSystem.from_uri(storage)
            fs.create_dir(path, recursive=True)
        except Exception as err:
            raise SweepError(f"storage: cannot write to {storage} ({err}); check the URI and credentials") from None
        return
    root = Path(storage_root(storage))
    probe = root / f".minima-write-test-{uuid.uuid4().hex}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"\0" * 1024 * 1024)  # a full disk fails here, not at the first checkpoint
    except OSError as err:
        raise SweepError(f"storage: cannot write to {root} ({err.strerror}); choose a writable folder with free space") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


def _on_cluster() -> bool:
    return bool(os.environ.get("RAY_ADDRESS"))


def init_ray(runtime_env: dict | None = None) -> None:
    """Local Ray with this machine's CPUs (dashboard off), or the cluster at RAY_ADDRESS;
    `runtime_env` adds to what every worker gets (a benchmark's data-staging hook).

    Ray's token authentication stays as Ray sets it: on for local Ray (a private token in
    ~/.ray/auth_token), on a cluster whatever its nodes were started with; a RAY_AUTH_MODE the
    user set is theirs. Local Ray's ports listen on every interface, so the token is what keeps
    other machines out.
    """
    import ray

    if ray.is_initialized():
        return
    # Each trial forces an experiment snapshot every CHECKPOINTS_TO_KEEP checkpoints; with many
    # short trials Ray warns about it every few seconds (0 turns the warning off). A snapshot of
    # a sweep's state takes milliseconds.
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
            from .mlflow_auth import access_problem

            problem = access_problem(spec.tracking_uri)
            if problem:
                raise SweepError(f"tracking_uri: {problem}")
    except SweepError as err:
        raise SweepError(f"{source}: {err}") from None


def _cluster_cpus() -> float:
    import ray

    return ray.cluster_resources().get("CPU", 1.0)


def _cluster_notice(spec: SweepSpec) -> str | None:
    import ray

    return check_resources(spec, ray.cluster_resources(), _on_cluster())


def _write_spec(spec: SweepSpec, log_to_mlflow: bool) -> None:
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path(spec)) if is_uri(spec.storage) else (
        pyarrow.fs.LocalFileSystem(), experiment_path(spec))
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{SPEC_FILE}") as f:
        f.write(json.dumps(spec.model_dump(), indent=2).encode())
    with fs.open_output_stream(f"{root}/{RUN_FILE}") as f:
        f.write(json.dumps({"log_to_mlflow": log_to_mlflow, "json_logger_only": True}).encode())


def read_spec(name: str, storage: str) -> SweepSpec:
    import pyarrow.fs

    path = f"{storage_root(storage).rstrip('/')}/{name}/{SPEC_FILE}"
    fs, inner = pyarrow.fs.FileSystem.from_uri(path) if is_uri(storage) else (pyarrow.fs.LocalFileSystem(), path)
    try:
        with fs.open_input_stream(inner) as f:
            data = json.loads(f.read())
    except (FileNotFoundError, OSError):
        raise SweepError(f"no sweep named {name!r} under {storage_root(storage)} (looked for {path}); "
                         f"pass --storage where it ran") from None
    return parse_sweep(data, path)


AUTO_LOGGERS_OFF = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"


def _only_json_results(on: bool) -> None:
    """Ray's result.json (the source of truth for exports) without its CSV and TensorBoard loggers:
    they print a pack's batched `records` in full as an 'invalid value' warning and copy it into
    progress.csv. A stored sweep whose run file does not ask for it (`json_logger_only`) resumes
    with Ray's defaults."""
    if on:
        os.environ[AUTO_LOGGERS_OFF] = "1"
    else:
        os.environ.pop(AUTO_LOGGERS_OFF, None)


def _callbacks(spec: SweepSpec, log_to_mlflow: bool) -> list:
    from ray.tune.logger import JsonLoggerCallback

    from .mlflow_logger import MLflowSweepLogger
    from .progress import SweepProgress

    callbacks: list = [SweepProgress(spec.num_trials(), capped=spec.search.kind == "boundary"), JsonLoggerCallback()]
    if log_to_mlflow:
        tags = {"git_commit": git_commit() or "unknown", "package_version": package_version()}
        callbacks.append(MLflowSweepLogger(spec.tracking_uri, spec.name, list(spec.axes), tags))
    return callbacks


def trial_dirname(trial) -> str:
    """Short folder names: Ray's default embeds the whole config and hits path-length limits."""
    return f"trial_{trial.trial_id}"


def snapshot_store(spec: SweepSpec) -> str:
    """Where a sweep's shared pretraining snapshots live: beside its trials, in its storage."""
    return f"{experiment_path(spec)}/pretrained"


def planned(spec: SweepSpec) -> SweepSpec:
    """The spec with `pack: auto` resolved per architecture for where it runs, as its
    `pack_plan` (stored, so a resume agrees)."""
    from .plan import pack_plan

    if spec.pack != "auto" or spec.search.kind != "grid" or spec.pack_plan is not None:
        return spec
    return spec.model_copy(update={"pack_plan": pack_plan(spec, local_slots(spec))})


def describe_packing(spec: SweepSpec) -> str | None:
    """How a planned grid's trials are packed into Ray trials (None when none is packed)."""
    from .plan import largest_pack, ray_trials, unpacked_reasons

    largest = largest_pack(spec)
    if largest == 1:
        return None
    text = (f"{spec.num_trials()} trials as {len(ray_trials(spec))} Ray trials of up to {largest} "
            f"(one stacked model each; set pack: 1 to turn off)")
    alone = unpacked_reasons(spec)
    return text + "".join(f"; alone: {name} ({why})" for name, why in alone.items())


def local_slots(spec: SweepSpec) -> int | None:
    """Trials that run at once on local Ray (None on a cluster, which grows and shrinks)."""
    if _on_cluster():
        return None
    have = local_resources()
    slots = int(have.get("GPU", 0) // spec.resources.gpu) if spec.resources.gpu > 0 else int(have["CPU"] // spec.resources.cpu)
    return max(1, min(slots, spec.max_concurrent or slots))


def announce_sharing(spec: SweepSpec, on_notice=print) -> None:
    """What the sweep shares before it runs: each pretraining runs once, in its first trial."""
    from .plan import pretraining_jobs

    jobs = pretraining_jobs(spec)
    if jobs:
        on_notice(f"shared pretraining: {len(jobs)} runs (up to {max(j.durations[-1] for j in jobs)} epochs) for "
                  f"{sum(j.trials for j in jobs)} trials; each runs in the first Ray trial that needs it, "
                  f"the others start once its snapshot is saved")


def report_sharing(spec: SweepSpec, on_notice=print) -> None:
    """How the shared pretrainings went: those that failed made their trials pretrain alone."""
    from trainables.pretraining import SnapshotStore

    from .plan import pretraining_jobs

    jobs, store = pretraining_jobs(spec), SnapshotStore(snapshot_store(spec))
    if not jobs:
        return
    for job in jobs:
        error = store.failure(job.key)
        if error and not all(store.has(job.key, d) for d in job.durations):
            on_notice(f"shared pretraining {job.key} failed ({error[-300:]}); its {job.trials} trials "
                      f"pretrained by themselves")
    done = sum(all(store.has(j.key, d) for d in j.durations) for j in jobs)
    on_notice(f"shared pretraining: {done}/{len(jobs)} done")


PENDING_TRIALS_ENV = "TUNE_MAX_PENDING_TRIALS_PG"


def hands_out_ready_trials(spec: SweepSpec) -> bool:
    """Whether the sweep's trials come from one of our searchers (SnapshotGate, BoundarySearcher),
    which hand out only trials that can start now."""
    from .plan import pretraining_jobs

    return spec.search.kind == "boundary" or bool(pretraining_jobs(spec))


@contextlib.contextmanager
def pending_trials(spec: SweepSpec, cluster_cpus: float):
    """Let Tune queue as many of our searchers' trials as it queues for a grid search.

    Tune keeps one trial of a custom Searcher pending at a time: locally a slot would idle while
    another trial's actor starts, and an autoscaling cluster would see one trial's demand at a
    time and add nodes one by one. A value the user set is kept.
    """
    if not hands_out_ready_trials(spec) or PENDING_TRIALS_ENV in os.environ:
        yield
        return
    os.environ[PENDING_TRIALS_ENV] = str(max(200, int(cluster_cpus * 1.1)))  # Tune's rule for a grid
    try:
        yield
    finally:
        os.environ.pop(PENDING_TRIALS_ENV, None)


def build_tuner(spec: SweepSpec, log_to_mlflow: bool = True):
    """The sweep's Tuner."""
    from ray import tune

    from .search_space import build_search

    sharing = spec.share_pretraining and spec.search.kind == "grid"
    snapshots = snapshot_store(spec) if sharing else None
    space, num_samples, search_alg = build_search(spec, snapshots)
    space[CHECKPOINT_EVERY_KEY] = spec.checkpoint_every
    if snapshots:
        space[SNAPSHOTS_KEY] = snapshots
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    return tune.Tuner(
        tune.with_resources(tune_trainable, resources),
        param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=num_samples,
            search_alg=search_alg,
            max_concurrent_trials=spec.max_concurrent,
            reuse_actors=True,  # a worker imports torch once, not once per trial
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=storage_root(spec.storage),
            storage_filesystem=storage_filesystem(spec.storage),
            callbacks=_callbacks(spec, log_to_mlflow),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_TO_KEEP),
            verbose=0,
        ),
    )


def _outcome(spec: SweepSpec, grid) -> SweepOutcome:
    """Counts per trial (pack members counted one by one, from their own final reports)."""
    from .results import read_result_rows

    counts: Counter = Counter()
    seen = 0
    for result in grid:
        members = len(member_values(result.config or {}))
        seen += members
        if members == 1:
            finals = {0: result.metrics} if (result.metrics or {}).get("final") else {}
        else:
            trial_dir = f"{experiment_path(spec)}/{result.path.rstrip('/').rsplit('/', 1)[-1]}"
            finals = {r.get("member") or 0: r for r in read_result_rows(trial_dir) if r.get("final")}
        for status in (finals[i].get("status") or "ok" for i in finals):
            counts[status] += 1
        counts["error" if result.error is not None else "unfinished"] += members - len(finals)
    total = spec.num_trials()
    if spec.search.kind == "boundary":  # its budget is a cap, not a count of trials owed
        total = seen
    counts["unfinished"] += max(0, total - seen)
    audit = None
    if _logs_to_mlflow(spec):
        from .mlflow_audit import audit_mlflow

        audit = audit_mlflow(experiment_path(spec), spec.tracking_uri, spec.name)
    return SweepOutcome(spec.name, experiment_path(spec), total, {k: v for k, v in counts.items() if v}, audit,
                        spec.storage, spec.tracking_uri)


def _run_settings(spec: SweepSpec) -> dict:
    from .results import _read_text

    text = _read_text(f"{experiment_path(spec)}/{RUN_FILE}")
    return json.loads(text) if text else {}


def _logs_to_mlflow(spec: SweepSpec) -> bool:
    return bool(_run_settings(spec).get("log_to_mlflow"))


def has_results(spec: SweepSpec) -> bool:
    from ray import tune

    return tune.Tuner.can_restore(experiment_path(spec), storage_filesystem=storage_filesystem(spec.storage))


def run_sweep(spec: SweepSpec, log_to_mlflow: bool = True, on_notice=print, source: str = "sweep") -> SweepOutcome:
    """Start a new sweep; refuses a name that already has results (use resume_sweep)."""
    preflight(spec, source, tracking=log_to_mlflow)
    if has_results(spec):
        raise SweepError(f"sweep {spec.name!r} already has results at {experiment_path(spec)}: "
                         f"`minima resume {spec.name}` continues it, or pass --name NEW_NAME")
    init_ray()
    notice = _cluster_notice(spec)
    if notice:
        on_notice(notice)
    spec = planned(spec)
    packing = describe_packing(spec)
    if packing:
        on_notice(f"packing: {packing}")
    _write_spec(spec, log_to_mlflow)
    announce_sharing(spec, on_notice)
    _only_json_results(True)
    with pending_trials(spec, _cluster_cpus()):
        grid = build_tuner(spec, log_to_mlflow).fit()
    report_sharing(spec, on_notice)
    prune_unreferenced_checkpoints(experiment_path(spec), grid)
    return _outcome(spec, grid)


def resume_sweep(name: str, storage: str = "minima_results", on_notice=print) -> SweepOutcome:
    """Finish an interrupted sweep: unfinished trials resume from their last checkpoint and
    errored ones are retried (Tuner.restore with resume_errored=True). Its callbacks, the MLflow
    logger included, come back from the stored experiment state."""
    from ray import tune

    spec = read_spec(name, storage)
    path = experiment_path(spec)
    if not tune.Tuner.can_restore(path, storage_filesystem=storage_filesystem(spec.storage)):
        raise SweepError(f"sweep {name!r} at {path} has no Ray experiment state to resume from")
    preflight(spec, name, tracking=_logs_to_mlflow(spec))
    init_ray()
    notice = _cluster_notice(spec)
    if notice:
        on_notice(notice)
    from .pretraining_phase import run_missing_pretrainings

    run_missing_pretrainings(spec, snapshot_store(spec), local_slots(spec), on_notice)  # what a killed driver never finished
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    _only_json_results(bool(_run_settings(spec).get("json_logger_only")))
    tuner = tune.Tuner.restore(path, trainable=tune.with_resources(tune_trainable, resources), resume_errored=True,
                               storage_filesystem=storage_filesystem(spec.storage))
    with pending_trials(spec, _cluster_cpus()):
        grid = tuner.fit()
    prune_unreferenced_checkpoints(path, grid)
    return _outcome(spec, grid)
