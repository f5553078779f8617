"""Local stand-ins for the actions the workflows use, run by act in host mode.

Each ``actions/<name>/`` folder is a ``node20`` action whose ``main`` (and ``post``) call this
script with the action's name; the inputs arrive as ``INPUT_<NAME>`` like for any action. The
stand-ins behave like the real actions on the points the workflows rely on:

- checkout: fetches the event's ref (``refs/pull/N/merge`` for a pull request, the pushed commit,
  or ``ref``) from the remote with ``fetch-depth``; ``persist-credentials: false`` leaves no way
  to push; the post step removes persisted credentials like the real one.
- upload-artifact / download-artifact (v4): one artifact per name and workflow run, a second
  upload of a name fails with the service's 409 unless ``overwrite: true``; downloads by
  ``name`` or ``pattern`` with ``merge-multiple``, from another run only with ``github-token``.
- setup-python: puts a Python on ``GITHUB_PATH`` that already holds the heavy packages (a venv
  that sees this machine's site-packages), so no job downloads torch.
- upload-pages-artifact / deploy-pages: a ``github-pages`` artifact holding ``artifact.tar``;
  deploy unpacks it into the Pages folder of the stand-in GitHub.
- quarto setup: records that it ran (the real one downloads Quarto).

The stand-in GitHub (``tests/workflows/github.py``) passes where things live in ``STANDIN_*``
environment variables: the remote, the artifact store, the Pages folder.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path


def _input(name: str, default: str = "") -> str:
    # act, like the runner, passes inputs as INPUT_<NAME> with spaces as underscores, upper-cased.
    value = os.environ.get("INPUT_" + name.replace(" ", "_").upper(), "")
    return value.strip() if value.strip() else default


def _bool(name: str, default: bool) -> bool:
    value = _input(name, "true" if default else "false").lower()
    return value == "true"


def _output(name: str, value: str) -> None:
    with open(os.environ["GITHUB_OUTPUT"], "a", encoding="utf-8") as fh:
        fh.write(f"{name}={value}\n")


def _fail(message: str) -> None:
    print(f"::error::{message}", flush=True)
    sys.exit(1)


def _git(*args: str, cwd: str | Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        _fail(f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _event() -> dict:
    path = os.environ.get("GITHUB_EVENT_PATH")
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else {}


# -- checkout -----------------------------------------------------------------------------------

_AUTH_KEYS = ("http.https://github.com/.extraheader",)


def _remote_auth_key(url: str) -> str:
    return f"url.{Path(os.environ['STANDIN_REMOTE']).as_uri()}.insteadOf"


def checkout() -> None:
    workspace = Path(os.environ["GITHUB_WORKSPACE"])
    repository = _input("repository", os.environ["GITHUB_REPOSITORY"])
    if repository != os.environ["GITHUB_REPOSITORY"]:
        _fail(f"the checkout stand-in only serves {os.environ['GITHUB_REPOSITORY']}, not {repository}")
    token = _input("token")
    if not token:
        _fail("Input required and not supplied: token")
    depth = int(_input("fetch-depth", "1"))
    url = f"https://github.com/{repository}"
    # A fresh clone, as on a hosted runner; on a reused workspace the real action cleans first.
    for child in workspace.iterdir() if workspace.exists() else ():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    workspace.mkdir(parents=True, exist_ok=True)
    _git("init", "-q", str(workspace))
    _git("remote", "add", "origin", url, cwd=workspace)
    # The token: only a checkout that carries it reaches the remote (https://github.com is
    # rewritten to the local bare repository only while the credentials are there).
    _git("config", "--local", _remote_auth_key(url), url, cwd=workspace)
    _git("config", "--local", _AUTH_KEYS[0], "AUTHORIZATION: basic ***", cwd=workspace)

    ref = _input("ref")
    event_ref = os.environ.get("GITHUB_REF", "")
    sha = os.environ.get("GITHUB_SHA", "")
    if not ref:
        ref, target = event_ref, sha
    else:
        target = ""
    depth_args = [f"--depth={depth}"] if depth > 0 else []
    if depth == 0:
        _git(
            "fetch",
            "-q",
            "--prune",
            "--no-recurse-submodules",
            "origin",
            "+refs/heads/*:refs/remotes/origin/*",
            "+refs/tags/*:refs/tags/*",
            cwd=workspace,
        )
    if ref.startswith("refs/pull/"):
        number = ref.split("/")[2]
        local = f"refs/remotes/pull/{number}/merge"
        _git("fetch", "-q", *depth_args, "origin", f"+{target or ref}:{local}", cwd=workspace)
        _git("checkout", "-q", "--force", local, cwd=workspace)
    elif ref.startswith("refs/heads/") or (ref and not _is_sha(ref) and not ref.startswith("refs/")):
        branch = ref.removeprefix("refs/heads/")
        fetched = target or f"refs/heads/{branch}"
        _git("fetch", "-q", *depth_args, "origin", f"+{fetched}:refs/remotes/origin/{branch}", cwd=workspace)
        _git("checkout", "-q", "--force", "-B", branch, f"refs/remotes/origin/{branch}", cwd=workspace)
    elif _is_sha(ref):
        _git("fetch", "-q", *depth_args, "origin", ref, cwd=workspace)
        _git("checkout", "-q", "--force", ref, cwd=workspace)
    else:
        _fail(f"the checkout stand-in cannot check out {ref!r}")
    if not _bool("persist-credentials", True):
        _remove_credentials(workspace)
    head = _git("rev-parse", "HEAD", cwd=workspace).stdout.strip()
    print(f"checked out {ref} at {head} (fetch-depth {depth})")


def _is_sha(ref: str) -> bool:
    return len(ref) == 40 and all(c in "0123456789abcdef" for c in ref)


def _remove_credentials(workspace: Path) -> None:
    url = _git("remote", "get-url", "origin", cwd=workspace).stdout.strip()
    for key in (_remote_auth_key(url), *_AUTH_KEYS):
        _git("config", "--local", "--unset-all", key, cwd=workspace, check=False)


def checkout_post() -> None:
    workspace = Path(os.environ["GITHUB_WORKSPACE"])
    if (workspace / ".git").is_dir():
        _remove_credentials(workspace)


# -- artifacts ------------------------------------------------------------------------------------


def _store(run_id: str) -> Path:
    return Path(os.environ["STANDIN_ARTIFACTS"]) / run_id


def upload_artifact(name: str | None = None, paths: list[Path] | None = None) -> None:
    name = name or _input("name", "artifact")
    overwrite = _bool("overwrite", False)
    include_hidden = _bool("include-hidden-files", False)
    if_none = _input("if-no-files-found", "warn")
    workspace = Path(os.environ["GITHUB_WORKSPACE"])
    if paths is None:
        paths = [Path(os.path.expandvars(p.strip())) for p in _input("path").splitlines() if p.strip()]
    paths = [p if p.is_absolute() else workspace / p for p in paths]
    files: list[tuple[Path, str]] = []
    for p in paths:
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p).as_posix()
                hidden = any(part.startswith(".") for part in rel.split("/"))
                if f.is_file() and (include_hidden or not hidden):
                    files.append((f, rel))
        elif p.is_file():
            files.append((p, p.name))
    if not files:
        message = f"No files were found with the provided path: {' '.join(map(str, paths))}."
        if if_none == "error":
            _fail(message)
        if if_none == "warn":
            print(f"::warning::{message} No artifacts will be uploaded.")
        return
    dest = _store(os.environ["GITHUB_RUN_ID"]) / name
    if dest.exists():
        if not overwrite:
            _fail(
                "Failed to CreateArtifact: Received non-retryable error: Failed request: (409) Conflict: "
                "an artifact with this name already exists on the workflow run"
            )
        shutil.rmtree(dest)
    for f, rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest / rel)
    (dest.parent / f".{name}.attempt").write_text(os.environ.get("GITHUB_RUN_ATTEMPT", "1"))
    print(f"Artifact {name} has been successfully uploaded! ({len(files)} files)")
    _output("artifact-id", name)


def download_artifact() -> None:
    run_id = _input("run-id", os.environ["GITHUB_RUN_ID"])
    if run_id != os.environ["GITHUB_RUN_ID"] and not _input("github-token"):
        _fail("Inputs 'github-token' and 'run-id' must be given together to download from another run")
    workspace = Path(os.environ["GITHUB_WORKSPACE"])
    path = Path(os.path.expandvars(_input("path", ".")))
    path = path if path.is_absolute() else workspace / path
    store = _store(run_id)
    available = sorted(p.name for p in store.iterdir() if p.is_dir()) if store.is_dir() else []
    name, pattern = _input("name"), _input("pattern")
    if name:
        if name not in available:
            _fail(f"Unable to download artifact(s): Artifact not found for name: {name}")
        chosen, merge = [name], True
    else:
        chosen = [a for a in available if not pattern or fnmatch.fnmatchcase(a, pattern)]
        merge = _bool("merge-multiple", False)
    for artifact in chosen:
        dest = path if merge else path / artifact
        for f in sorted((store / artifact).rglob("*")):
            if f.is_file():
                target = dest / f.relative_to(store / artifact)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)
                # Zip entries keep their mode; hooks planted in an artifact stay executable.
                target.chmod(0o755 if os.access(f, os.X_OK) else 0o644)
        print(f"Artifact {artifact} was downloaded to {dest}")
    _output("download-path", str(path))


# -- setup-python ---------------------------------------------------------------------------------


def setup_python() -> None:
    version = _input("python-version")
    base = os.environ["STANDIN_PYTHON"]
    venv = Path(os.environ["RUNNER_TEMP"]) / "setup-python"
    if not (venv / "bin" / "python").exists():
        # --system-site-packages: torch, onnxruntime, mkdocs... are already installed; what a job
        # pip-installs lands in this venv, never in the machine's environment.
        subprocess.run([base, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
        shim = venv / "bin" / "pip"
        shim.write_text(f'#!/bin/sh\nexec "{venv}/bin/python" -m pip "$@"\n')
        shim.chmod(0o755)
        (venv / "bin" / "pip3").symlink_to("pip")
    with open(os.environ["GITHUB_PATH"], "a", encoding="utf-8") as fh:
        fh.write(f"{venv}/bin\n")
    if os.environ.get("STANDIN_PIP_CONFIG"):
        # This environment has a current build backend: pip may build with it (see github.py).
        with open(os.environ["GITHUB_ENV"], "a", encoding="utf-8") as fh:
            fh.write(f"PIP_CONFIG_FILE={os.environ['STANDIN_PIP_CONFIG']}\n")
    got = subprocess.run([str(venv / "bin" / "python"), "-V"], capture_output=True, text=True).stdout.strip()
    print(f"python-version {version}: using {got} with the machine's packages")
    _output("python-version", got.split()[-1])
    _output("python-path", str(venv / "bin" / "python"))


# -- Pages ----------------------------------------------------------------------------------------


def upload_pages_artifact() -> None:
    workspace = Path(os.environ["GITHUB_WORKSPACE"])
    site = Path(_input("path", "_site"))
    site = site if site.is_absolute() else workspace / site
    if not site.is_dir():
        _fail(f"{site}: no such folder to publish")
    tar = Path(os.environ["RUNNER_TEMP"]) / "artifact.tar"
    with tarfile.open(tar, "w") as fh:
        fh.add(site, arcname=".")
    os.environ["INPUT_OVERWRITE"] = "false"
    upload_artifact(_input("name", "github-pages"), [tar])


def deploy_pages() -> None:
    store = _store(os.environ["GITHUB_RUN_ID"]) / _input("artifact_name", "github-pages")
    tar = store / "artifact.tar"
    if not tar.is_file():
        _fail("No uploaded artifact was found! Please check if there are any errors at build step")
    pages = Path(os.environ["STANDIN_PAGES"])
    if pages.exists():
        shutil.rmtree(pages)
    pages.mkdir(parents=True)
    with tarfile.open(tar) as fh:
        fh.extractall(pages, filter="data")
    with open(pages.parent / "deploys.log", "a", encoding="utf-8") as fh:
        fh.write(f"{os.environ['GITHUB_RUN_ID']}\n")
    owner, repo = os.environ["GITHUB_REPOSITORY"].split("/")
    url = f"https://{owner}.github.io/{repo}/"
    print(f"Reported success! Deployed {url}")
    _output("page_url", url)


def quarto_setup() -> None:
    with open(Path(os.environ["STANDIN_ARTIFACTS"]).parent / "quarto-setups.log", "a", encoding="utf-8") as fh:
        fh.write(f"{os.environ['GITHUB_RUN_ID']} {os.environ['GITHUB_JOB']}\n")
    # The real action puts Quarto on PATH; the site build skips .qmd posts when it is missing.
    print("quarto setup stand-in: Quarto is not installed here")


ACTIONS = {
    "checkout": checkout,
    "checkout-post": checkout_post,
    "upload-artifact": upload_artifact,
    "download-artifact": download_artifact,
    "setup-python": setup_python,
    "upload-pages-artifact": upload_pages_artifact,
    "deploy-pages": deploy_pages,
    "quarto-setup": quarto_setup,
}

if __name__ == "__main__":
    ACTIONS[sys.argv[1]]()
