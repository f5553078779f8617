"""Operations around runs: ``notify``, ``export``, ``device register|check|list`` and ``init``.

Nothing heavy is imported at module level: the command functions import what they use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register"]


def register(subparsers) -> None:
    """Add the ``notify``, ``export``, ``device`` and ``init`` commands."""
    _register_notify(subparsers)
    _register_export(subparsers)
    _register_device(subparsers)
    _register_init(subparsers)


# -- notify -----------------------------------------------------------------------------------


def _register_notify(subparsers) -> None:
    p = subparsers.add_parser(
        "notify",
        help="email each run's notify list about its outcome",
        description="Send one email per run that succeeded, failed a gate or failed, to the addresses in "
        "its spec's 'notify' list, with the metrics table, gate verdicts and links. SMTP settings come from "
        "TINYMLAAS_SMTP_HOST, _PORT, _USER, _PASSWORD, _SECURITY (starttls|ssl|none), _FROM and _CA_FILE; "
        "TINYMLAAS_SITE_URL adds a link to the run's page. A mail that cannot be sent is reported and the "
        "command still exits 0: notifications never change a run's result.",
    )
    p.add_argument(
        "--outcomes",
        metavar="FILE_OR_DIR",
        required=True,
        type=Path,
        help="outcomes written by 'tinymlaas run --json FILE', or a folder of such *.json files "
        "(as downloaded from the run workflow's artifacts)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print who would get which email (subject and text) and send nothing; needs no SMTP settings",
    )
    p.add_argument(
        "--work-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="run volumes to read failed runs' results from (default: .tinymlaas/work or TINYMLAAS_WORK_DIR)",
    )
    p.set_defaults(func=cmd_notify)


def _annotate(level: str, text: str) -> None:
    from tinymlaas_ci.actions import workflow_command
    from tinymlaas_ci.cli.common import in_github_actions

    if in_github_actions():
        print(workflow_command(level, text, title="tinymlaas notify"))


def cmd_notify(args) -> int:
    from tinymlaas_ci.cli.common import repo_root
    from tinymlaas_ci.errors import NotifyError
    from tinymlaas_ci.notify.email import SmtpSettings
    from tinymlaas_ci.notify.runs import build_digest, collect_reports, digests, send_reports
    from tinymlaas_ci.results.outcomes import read_outcomes

    root = repo_root(args)
    outcomes = read_outcomes(args.outcomes)
    reports, notes = collect_reports(root, outcomes, work_dir=args.work_dir)
    for note in notes:
        print(f"  skip {note}")
    if not reports:
        print(f"no emails to send ({len(outcomes)} outcomes)")
        return 0
    messages = digests(reports)  # one per recipient: a digest when several runs concern them
    if args.dry_run:
        for digest in messages:
            msg = build_digest(digest, "tinymlaas@localhost")
            print(f"--- would send to {', '.join(digest.recipients)}\nSubject: {msg['Subject']}\n")
            print(msg.get_body(preferencelist=("plain",)).get_content())
        print(f"dry run: {len(messages)} emails not sent")
        return 0
    try:
        settings = SmtpSettings.from_env()
    except NotifyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for digest in messages:
            runs = ", ".join(digest.run_ids)
            print(f"✗ not sent: {runs} to {', '.join(digest.recipients)}", file=sys.stderr)
        _annotate("warning", f"{len(messages)} emails not sent: {exc.message}")
        print(f"{len(messages)} of {len(messages)} emails failed (run results are unchanged)", file=sys.stderr)
        return 0

    def show(entry) -> None:
        if entry.ok:
            print(f"✓ sent {entry.run_id} to {', '.join(entry.recipients)}: {entry.subject}", flush=True)
        else:
            print(
                f"✗ FAILED to send {entry.run_id} to {', '.join(entry.recipients)}: {entry.error}",
                file=sys.stderr,
                flush=True,
            )
            _annotate("warning", f"email about {entry.run_id} not sent: {entry.error.splitlines()[0]}")

    print(f"sending {len(messages)} emails via {settings.describe()}")
    done = send_reports(reports, settings, on_send=show)
    failed = sum(not e.ok for e in done)
    if failed:
        print(f"{failed} of {len(done)} emails failed (run results are unchanged)", file=sys.stderr)
    else:
        print(f"{len(done)} emails sent")
    return 0


# -- export -----------------------------------------------------------------------------------


def _register_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a self-contained inference bundle of a run (optionally a Docker image)",
        description="Copy a run's installed model into DIR with a standalone runner (infer.py: numpy + "
        "onnxruntime, no tinymlaas-ci), pinned requirements.txt, a Dockerfile and a README on running it on "
        "a device. The run must have run on this machine (its volume holds the bundle).",
    )
    p.add_argument("run", metavar="RUN", help="PROJECT/RUN (or RUN when the name is unique)")
    p.add_argument("--out", metavar="DIR", type=Path, required=True, help="folder to write (new or empty)")
    p.add_argument("--force", action="store_true", help="write into a non-empty DIR, replacing earlier export files")
    p.add_argument("--image", metavar="TAG", default=None, help="also build the image TAG from DIR with Docker")
    p.add_argument(
        "--base",
        metavar="IMAGE",
        default=None,
        help="base image with python3 and venv for --image (default: python:3.11-slim)",
    )
    p.add_argument(
        "--save",
        metavar="FILE.tar",
        type=Path,
        default=None,
        help="save the built image to FILE.tar ('docker load -i FILE.tar' on the device); needs --image",
    )
    p.add_argument("--docker-host", metavar="URL", default=None, help="engine to build on (default: DOCKER_HOST)")
    p.add_argument(
        "--work-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="run volumes (default: .tinymlaas/work or TINYMLAAS_WORK_DIR)",
    )
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from tinymlaas_ci.cli.common import repo_root
    from tinymlaas_ci.engine.export import build_export_image, export_run, save_image
    from tinymlaas_ci.errors import UsageError

    if args.save and not args.image:
        raise UsageError("--save needs --image TAG", hint="add --image my-model:1 to build the image to save")
    root = repo_root(args)
    info = export_run(root, args.run, args.out, work_dir=args.work_dir, force=args.force, tag=args.image)
    print(f"exported {info.run_id} to {info.out}:")
    for name in info.files:
        print(f"  {name}")
    pins = ", ".join(f"{k}=={v}" for k, v in info.requirements.items())
    acc = info.recorded.get("accuracy")
    print(f"runtime {pins}; recorded accuracy {acc:.4f}" if isinstance(acc, float) else f"runtime {pins}")
    if args.image:
        print(f"building {args.image} ...", flush=True)
        image_id = build_export_image(
            info.out,
            args.image,
            base=args.base,
            docker_host=args.docker_host,
            sink=lambda line: print(f"  {line}", flush=True),
        )
        print(f"built {args.image} ({image_id[:19]})")
        if args.save:
            size = save_image(args.image, args.save, docker_host=args.docker_host)
            print(f"saved {args.image} to {args.save} ({size / 1e6:.0f} MB): docker load -i {args.save.name}")
    print(f"run it: cd {info.out} && python infer.py   (see README.md)")
    return 0


# -- device -----------------------------------------------------------------------------------


def _register_device(subparsers) -> None:
    device = subparsers.add_parser(
        "device",
        help="register a device, check that it is ready, list devices",
        description="Devices are files under devices/. 'register' probes a device and writes its file; "
        "'check' tells whether it is reachable and ready, and what to fix if not.",
    )
    sub = device.add_subparsers(dest="device_command", metavar="COMMAND")
    reg = sub.add_parser(
        "register",
        help="probe a device and write devices/NAME.yaml",
        description="Probe the device (architecture, CPU model, memory, whether the runtime is there) and write "
        "devices/NAME.yaml. 'local' is the machine running the runner; 'docker' is any Docker engine "
        "(this one, or a board via --docker-host ssh://user@board).",
    )
    reg.add_argument("name", metavar="NAME", help="device name: lower-case letters, digits, '.', '_', '-'")
    reg.add_argument("--kind", choices=("local", "docker"), required=True, help="how the device is reached")
    reg.add_argument(
        "--docker-host",
        metavar="URL",
        default=None,
        help="Docker engine of a docker device (unix://, tcp://, ssh://); default: DOCKER_HOST",
    )
    reg.add_argument(
        "--runner",
        metavar="LABEL",
        action="append",
        default=None,
        help="label of the Actions runner next to the device (repeatable; default: self-hosted, tinymlaas, NAME)",
    )
    reg.add_argument("--force", action="store_true", help="replace an existing devices/NAME.yaml")
    reg.set_defaults(func=cmd_device_register)
    chk = sub.add_parser(
        "check",
        help="tell whether a device is reachable and ready (exit 0) or not (exit 1)",
        description="Probe the device in devices/NAME.yaml and compare with the file: reachable, architecture, "
        "runtime or inference image present. Prints what to fix; exit 0 when ready, 1 when not.",
    )
    chk.add_argument("name", metavar="NAME", help="a device in devices/")
    chk.set_defaults(func=cmd_device_check)
    lst = sub.add_parser("list", help="list the devices in devices/", description="List the device files.")
    lst.set_defaults(func=cmd_device_list)
    device.set_defaults(func=lambda args: device.print_help() or 2)


def cmd_device_register(args) -> int:
    from tinymlaas_ci.cli.common import repo_root
    from tinymlaas_ci.devices.registry import register as register_device

    root = repo_root(args)
    path = register_device(
        root, args.name, args.kind, docker_host=args.docker_host, runner_labels=args.runner, force=args.force
    )
    print(path.read_text(), end="")
    print(f"wrote {path.relative_to(root)}; check it with: tinymlaas device check {args.name}")
    return 0


def cmd_device_check(args) -> int:
    from tinymlaas_ci.cli.common import repo_root
    from tinymlaas_ci.devices.registry import check

    findings = check(repo_root(args), args.name)
    for finding in findings:
        print(finding.format())
    ready = not any(f.level == "error" for f in findings)
    print(f"device {args.name}: {'ready' if ready else 'NOT ready'}")
    return 0 if ready else 1


def cmd_device_list(args) -> int:
    from tinymlaas_ci.cli.common import repo_root
    from tinymlaas_ci.devices.registry import list_devices, load_device
    from tinymlaas_ci.errors import TinymlError

    root = repo_root(args)
    names = list_devices(root)
    if not names:
        print("no devices: register one with 'tinymlaas device register NAME --kind local'")
        return 0
    for name in names:
        try:
            spec = load_device(root, name)
        except TinymlError as exc:
            print(f"{name:<20} invalid: {exc.message.splitlines()[-1]}")
            continue
        where = spec.docker.host if spec.kind == "docker" and spec.docker.host else ""
        print(f"{name:<20} {spec.kind:<7} {spec.arch:<8} {where or spec.description}".rstrip())
    return 0


# -- init -------------------------------------------------------------------------------------


def _register_init(subparsers) -> None:
    p = subparsers.add_parser(
        "init",
        help="scaffold a new repository (runs, devices, pipelines, workflows, an example)",
        description="Create a repository that validates and plans at once: runs/example with a small model "
        "and dataset, devices/host.yaml, pipelines/default.yaml, schemas/, a site/ that 'tinymlaas site build' "
        "builds, .github/workflows/, tinymlaas.yaml (what the workflows install), editor settings, .gitignore "
        "and a README; 'git init' when DIR is not in a git repository yet.",
    )
    p.add_argument("dir", metavar="DIR", type=Path, help="folder to create (new or empty)")
    p.add_argument(
        "--force", action="store_true", help="add the files to a non-empty DIR; existing files are never overwritten"
    )
    p.add_argument(
        "--install",
        metavar="REQUIREMENT",
        default=None,
        help="what the workflows install, written to tinymlaas.yaml: a pip requirement for tinymlaas-ci "
        "(default: this exact release; or 'tinymlaas-ci @ https://.../x.whl', 'tinymlaas-ci @ git+https://...')",
    )
    p.set_defaults(func=cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    from tinymlaas_ci.init.scaffold import init_repo

    report = init_repo(args.dir, force=args.force, install=args.install)
    for rel in report.written:
        print(f"  wrote {rel}")
    for rel in report.skipped:
        print(f"  kept  {rel} (exists)")
    print(f"{report.root}: {len(report.written)} files written, {len(report.skipped)} kept; {report.git}")
    print(f"next: cd {args.dir} && tinymlaas validate && tinymlaas plan")
    return 0
