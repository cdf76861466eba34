"""The `minima` commands for a cluster: its AWS security group or GCP firewall before `ray up`,
submitting a sweep as a Ray job with the cluster's token, the head's secrets (Ray token, MLflow
accounts) and the MLflow UI."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time

AGENT_WAIT_S = 60  # how long `submit` waits for a new head's job agent
# MLflow 3 opens on its GenAI view unless asked; the choice then sticks in the browser
UI_START = "/#/?workflowType=machine_learning"


def cmd_aws_security_group(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    import yaml
    from ray.autoscaler._private.cli_logger import cli_logger
    from ray.autoscaler._private.util import prepare_config

    from sweeps.cluster.aws_security_group import GroupError, describe, ensure_security_groups
    from sweeps.design.spec import SweepError

    # Ray's progress lines off, its errors kept: the lines printed below say what happened
    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)
    cli_logger.configure(verbosity=0)
    try:
        config = prepare_config(yaml.safe_load(Path(args.cluster_config).read_text()))  # as `ray up` sees it
        provider = config["provider"]["type"]
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError, ValueError) as err:
        raise SweepError(f"{args.cluster_config}: cannot read it as a cluster config ({err})") from None
    if provider != "aws":
        raise SweepError(f"{args.cluster_config}: provider.type is {provider!r}; this command makes an AWS "
                         f"security group only")
    try:
        reports = ensure_security_groups(config)
    except GroupError as err:
        raise SweepError(f"{args.cluster_config}: {err}") from None
    for group in reports:
        what = ("named by SecurityGroupIds, so `ray up` leaves it as it is" if group.given
                else f"added {len(group.added)} rule(s)" if group.added else "already has the rules asked for")
        print(f"{group.name} ({group.group_id}, {group.vpc_id}): {what}; it lets in:")
        for rule in group.rules:
            print(f"  {describe(rule)}")
        for rule in group.kept_extra:
            print(f"note: {group.name} also lets in {describe(rule)}, which {args.cluster_config} does not ask "
                  f"for; remove it in AWS if it is stale", file=sys.stderr)
    return 0


def cmd_gcp_firewall(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from sweeps.cluster.gcp_firewall import FirewallError, cluster_network, describe, ensure_network
    from sweeps.design.spec import SweepError

    try:
        config = yaml.safe_load(Path(args.cluster_config).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SweepError(f"{args.cluster_config}: cannot read it as a cluster config ({err})") from None
    try:
        net = cluster_network(config if isinstance(config, dict) else {})
        report = ensure_network(net, args.ssh_from, args.subnet_range)
    except FirewallError as err:
        raise SweepError(f"{args.cluster_config}: {err}") from None
    for line in report.made:
        print(f"ran: {line}", file=sys.stderr)
    print(f"network {net.network} (subnet {net.subnet} in {net.region}, nodes tagged {net.tag}) lets in:")
    for rule in report.rules:
        print(f"  {describe(rule)}")
    for rule in report.extra:
        print(f"note: {rule['name']} is not one of this cluster's rules; remove it in GCP if it is stale",
              file=sys.stderr)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sweeps.design.spec import SweepError, load_sweep_args

    spec = load_sweep_args(args.file, args.set, args.name)  # validate here, before the cluster spends anything
    if args.sbatch and not args.slurm:
        raise SweepError("--sbatch goes with --slurm")
    if args.slurm:
        return submit_slurm(args)

    from trainables.uri import is_uri

    workdir = Path(args.working_dir).resolve()
    sweep_file = Path(args.file).resolve()
    if not sweep_file.is_relative_to(workdir):
        raise SweepError(f"{args.file}: the sweep file must be inside --working-dir ({workdir}), which is uploaded")
    for field, value in (("storage", spec.storage), ("tracking_uri", spec.tracking_uri.removeprefix("sqlite:///"))):
        if not is_uri(value) and not value.startswith("/"):
            raise SweepError(f"{args.file}: {field}: {value!r} is relative, so it would land in the job's temporary "
                             f"working dir and vanish with it; use an s3:// URI or an absolute path on the head "
                             f"(e.g. --set {field}=...), or an http:// MLflow server for tracking_uri")
    from sweeps.cluster.ray_auth import FETCH_HINT, TokenError, bearer_headers, find_token, send_problem

    try:
        token = find_token(args.cluster_config)
    except TokenError as err:
        raise SweepError(str(err)) from None
    if (why := send_problem(args.address, token)) is not None:
        raise SweepError(why)
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    sets = "".join(f" --set {shlex.quote(s)}" for s in args.set)
    name = f" --name {shlex.quote(args.name)}" if args.name else ""
    entrypoint = f"minima run {shlex.quote(str(sweep_file.relative_to(workdir)))}{sets}{name}"
    try:
        client = JobSubmissionClient(args.address, headers=bearer_headers(token))
        for attempt in range(AGENT_WAIT_S // 2):
            try:
                job_id = client.submit_job(
                    entrypoint=entrypoint,
                    runtime_env={"working_dir": str(workdir), "excludes": [
                        ".venv", ".git", "minima_results", "mlruns", "mlflow.db", "data", ".test-data", "*.pt"]},
                    metadata={"sweep": spec.name},
                )
                break
            except RuntimeError as err:  # a head that has just started has no job agent yet
                if "No available agent" not in str(err) or attempt == AGENT_WAIT_S // 2 - 1:
                    raise
                time.sleep(2)
    except AuthenticationError:
        sent = f"the token from {token.source}" if token else "no token (none found)"
        raise SweepError(f"the Ray cluster at {args.address} refused the job: it needs the cluster's Ray token and "
                         f"got {sent}. {FETCH_HINT}.") from None
    except ConnectionError as err:
        raise SweepError(f"--address {args.address}: {err} (is `ray dashboard deploy/aws/cluster.yaml` "
                         f"forwarding it?)") from None
    print(job_id)
    auth = "RAY_AUTH_MODE=token " if token else ""  # Ray's CLI then sends the same token
    print(f"follow it:  {auth}ray job logs --address {args.address} --follow {job_id}", file=sys.stderr)
    print(f"status:     {auth}ray job status --address {args.address} {job_id}", file=sys.stderr)
    print(f"MLflow:     {spec.tracking_uri} (experiment {spec.name!r})", file=sys.stderr)
    return 0


def submit_slurm(args: argparse.Namespace) -> int:
    """`sbatch deploy/slurm/minima.sbatch FILE ...`, once the sweep file is valid: the job checks
    the rest on its first node (docs/slurm.md)."""
    import subprocess
    from pathlib import Path

    from sweeps.design.spec import SweepError

    script = Path(__file__).resolve().parents[1] / "deploy" / "slurm" / "minima.sbatch"
    if not script.exists():
        raise SweepError(f"--slurm: {script} is missing; run from the repository's checkout")
    storage = os.environ.get("MINIMA_STORAGE", "")
    if not (storage.startswith("/") or "://" in storage):
        raise SweepError("--slurm: export MINIMA_STORAGE as the sweep's storage, an absolute path on the shared "
                         "filesystem that every node sees (docs/slurm.md)")
    sets = [word for value in args.set for word in ("--set", value)] + (["--name", args.name] if args.name else [])
    try:
        out = subprocess.run(["sbatch", "--parsable", *args.sbatch, str(script), args.file, *sets],
                             capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SweepError("--slurm: sbatch not found; run this where SLURM's commands are (a login node)") from None
    if out.returncode != 0:
        raise SweepError(f"sbatch refused the job: {out.stderr.strip()}")
    job = out.stdout.strip().split(";")[0]
    print(job)
    print(f"follow it:  squeue -j {job}, and its output file (minima-{job}.out unless --sbatch=--output=...)",
          file=sys.stderr)
    return 0


def cmd_fetch_token(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from sweeps.cluster.ray_auth import TokenError, save_private, token_from_cluster
    from sweeps.design.spec import SweepError

    try:
        cluster = yaml.safe_load(Path(args.cluster_config).read_text()).get("cluster_name", "cluster")
        out = save_private(token_from_cluster(args.cluster_config), Path(args.out or f"~/.ray/{cluster}.token"))
    except (OSError, yaml.YAMLError, AttributeError) as err:
        raise SweepError(f"{args.cluster_config}: cannot read it as a cluster config ({err})") from None
    except TokenError as err:
        raise SweepError(str(err)) from None
    print(f"saved the Ray token of {cluster} to {out} (readable by you only); use it with:", file=sys.stderr)
    print(f"export RAY_AUTH_TOKEN_PATH={shlex.quote(str(out))}")
    return 0


def cmd_head_secrets(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sweeps.cluster.mlflow_auth import HeadSecrets, default_secrets, provision
    from sweeps.cluster.ray_auth import make_private_token

    token = make_private_token(Path(args.ray_token).expanduser() if args.ray_token else None)
    where = HeadSecrets(Path(args.dir).expanduser()) if args.dir else default_secrets()
    made = provision(where)
    print(f"Ray token: {token} (0600)")
    print(f"MLflow: {'made ' + ', '.join(p.name for p in made) if made else 'kept the existing secrets'} "
          f"in {where.root} (0700)")
    return 0


def cmd_mlflow_user(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from sweeps.cluster.mlflow_auth import PASSWORD_ENV, USERNAME_ENV, create_read_account
    from sweeps.design.spec import SweepError

    if not os.environ.get(USERNAME_ENV):
        raise SweepError(f"{USERNAME_ENV}/{PASSWORD_ENV}: the admin's credentials are needed to make an account "
                         f"(on the head: `. ~/.minima/mlflow-client.env` first)")
    try:
        password = create_read_account(args.tracking_uri, args.username)
    except MlflowException as err:
        raise SweepError(f"{args.username}: no account made at {args.tracking_uri} ({err.message})") from None
    print(f"account {args.username!r} can read every sweep at {args.tracking_uri} and change none; its password "
          f"(shown once):", file=sys.stderr)
    print(password)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import signal
    import subprocess

    uri = args.tracking_uri
    print(f"MLflow UI on http://{args.host}:{args.port}{UI_START} for {uri} (Ctrl-C stops it)", file=sys.stderr)
    # The UI only: MLflow's job-execution workers would be children it could leave behind.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", args.host, "--port", str(args.port)], env=env, start_new_session=True)

    def stop(signum, _frame):  # the server's whole process group: gunicorn/uvicorn and their workers
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    try:
        return server.wait()
    except (KeyboardInterrupt, SystemExit) as why:
        code = why.code if isinstance(why, SystemExit) else 130
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        with contextlib.suppress(ProcessLookupError):  # workers that outlived their parent
            os.killpg(server.pid, signal.SIGKILL)
        return code


def add_cluster_commands(sub, sweep_file_args) -> None:
    """The cluster commands' parsers (`sub` is `minima`'s subparsers)."""
    group = sub.add_parser("aws-security-group", help="before `ray up`: make (or check) the cluster's AWS security "
                           "group with SSH from the config's range only, never from 0.0.0.0/0")
    group.add_argument("cluster_config", help="the cluster launcher config, e.g. deploy/aws/cluster.yaml")
    group.set_defaults(func=cmd_aws_security_group)

    firewall = sub.add_parser("gcp-firewall", help="before `ray up` on GCP: make (or check) the cluster's network, "
                              "subnet and firewall with SSH from your range only, never from 0.0.0.0/0 (uses gcloud)")
    firewall.add_argument("cluster_config", help="the cluster launcher config, e.g. deploy/gcp/cluster.yaml")
    firewall.add_argument("--ssh-from", action="append", required=True, metavar="CIDR",
                          help="the range the machine running `ray up` is in (repeatable)")
    firewall.add_argument("--subnet-range", default="10.42.0.0/20", help="the subnet's range, when it is made")
    firewall.set_defaults(func=cmd_gcp_firewall)

    submit = sub.add_parser("submit", help="submit `minima run FILE` to a Ray cluster as a Ray Job, or to SLURM")
    sweep_file_args(submit)
    where = submit.add_mutually_exclusive_group(required=True)
    where.add_argument("--address", help="Ray Jobs address, e.g. http://127.0.0.1:8265 (SSH port-forward)")
    where.add_argument("--slurm", action="store_true", help="submit deploy/slurm/minima.sbatch with sbatch: one job "
                       "runs Ray on its nodes and the sweep (docs/slurm.md)")
    submit.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                        help="with --slurm: an sbatch option, e.g. --sbatch=--nodes=2 (repeatable)")
    submit.add_argument("--working-dir", default=".", help="folder uploaded as the job's working dir")
    submit.add_argument("--cluster-config", help="read the cluster's Ray token from its head (`ray exec`) when "
                        "RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH are not set, e.g. deploy/aws/cluster.yaml")
    submit.set_defaults(func=cmd_submit)

    fetch = sub.add_parser("fetch-token", help="save a cluster's Ray token from its head, readable by you only")
    fetch.add_argument("cluster_config", help="the cluster launcher config, e.g. deploy/aws/cluster.yaml")
    fetch.add_argument("--out", help="where to save it (default: ~/.ray/CLUSTER_NAME.token)")
    fetch.set_defaults(func=cmd_fetch_token)

    head = sub.add_parser("head-secrets", help="on a cluster head: make the Ray token and the MLflow admin "
                          "password and secret key once (files readable by this user only)")
    head.add_argument("--dir", help="folder for the MLflow secrets (default: ~/.minima)")
    head.add_argument("--ray-token", help="the Ray token file (default: ~/.ray/auth_token)")
    head.set_defaults(func=cmd_head_secrets)

    account = sub.add_parser("mlflow-user", help="make a read account on an MLflow server with accounts: it reads every "
                             "sweep and changes none (run with the admin's MLFLOW_TRACKING_USERNAME/PASSWORD)")
    account.add_argument("username")
    account.add_argument("--tracking-uri", required=True, help="the server, e.g. http://HEAD_PRIVATE_IP:5000")
    account.set_defaults(func=cmd_mlflow_user)

    ui = sub.add_parser("ui", help="start the MLflow UI on a tracking store, bound to 127.0.0.1")
    ui.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    ui.add_argument("--host", default="127.0.0.1", help="keep 127.0.0.1 unless you mean to expose it")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)
