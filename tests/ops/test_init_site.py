"""``tinymlaas init`` makes a complete repository: its site builds with only the installed
package (the process runs outside this checkout), its docs speak of that repository, one
``install:`` setting says what the workflows install, and editors get the schemas."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.ops.conftest import cli
from tinymlaas_ci import __version__

GIT_URL = "tinymlaas-ci @ git+https://github.com/example/tinymlaas-ci@v9.9.9"


def _init(tmp_path: Path, *extra: str) -> Path:
    dest = tmp_path / "adopter"
    proc = cli("init", str(dest), *extra, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return dest


def test_init_then_site_build_in_a_fresh_folder(tmp_path):
    dest = _init(tmp_path)
    assert (dest / "site" / "mkdocs.yml").is_file()
    proc = cli("site", "build", cwd=dest)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = dest / "site" / "build"
    for page in ("index.html", "guide/getting-started.html", "reference/spec.html", "reference/cli.html"):
        assert (out / page).is_file(), page
    # The site says what to do next in this repository, not in the one that made the package.
    guide = (out / "guide" / "getting-started.html").read_text()
    text = re.sub(r"<[^>]+>", "", guide)
    assert "runs/example/digits-int8.yaml" in text
    assert "runs/digits" not in text and "pip install -e" not in text
    assert f"tinymlaas-ci[ml]=={__version__}" in text
    assert "__TINYMLAAS" not in text
    assert "No result files were found" in (out / "index.html").read_text()
    # Nothing of the build lands in git's view of the sources.
    assert "/site/build/" in (dest / ".gitignore").read_text()


def test_install_setting_is_the_exact_release_by_default(tmp_path):
    dest = _init(tmp_path)
    settings = yaml.safe_load((dest / "tinymlaas.yaml").read_text())
    assert settings == {"schema": 1, "install": f"tinymlaas-ci=={__version__}"}
    readme = (dest / "README.md").read_text()
    assert f'pip install "tinymlaas-ci[ml]=={__version__}"' in readme
    assert f'pip install "tinymlaas-ci[site]=={__version__}"' in readme
    for path in dest.rglob("*"):
        if path.is_file() and path.suffix in {".md", ".yaml", ".yml", ".json"}:
            assert "__TINYMLAAS" not in path.read_text(), path


def test_install_setting_can_point_at_a_git_url(tmp_path):
    from tinymlaas_ci.init.settings import read_install, with_extras

    dest = _init(tmp_path, "--install", GIT_URL)
    assert read_install(dest) == GIT_URL
    assert (
        with_extras(read_install(dest), "docker")
        == "tinymlaas-ci[docker] @ git+https://github.com/example/tinymlaas-ci@v9.9.9"
    )
    assert (
        'pip install "tinymlaas-ci[ml] @ git+https://github.com/example/tinymlaas-ci@v9.9.9"'
        in (dest / "README.md").read_text()
    )


def test_install_setting_must_name_the_package(tmp_path):
    proc = cli("init", str(tmp_path / "x"), "--install", "requests==2.0", cwd=tmp_path)
    assert proc.returncode == 2
    assert "does not name the package tinymlaas-ci" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_editor_settings_map_every_spec_file_to_its_schema(tmp_path):
    import fnmatch

    dest = _init(tmp_path)
    settings = json.loads((dest / ".vscode" / "settings.json").read_text())
    schemas = settings["yaml.schemas"]
    for schema in schemas:
        assert (dest / schema).is_file(), schema
        title = json.loads((dest / schema).read_text()).get("title", "")
        assert title
    mapped = {
        rel: [s for s, pats in schemas.items() if any(fnmatch.fnmatch(rel, p.replace("**/", "*")) for p in pats)]
        for rel in ("runs/example/digits-int8.yaml", "devices/host.yaml", "pipelines/default.yaml")
    }
    assert mapped == {
        "runs/example/digits-int8.yaml": ["./schemas/run.schema.json"],
        "devices/host.yaml": ["./schemas/device.schema.json"],
        "pipelines/default.yaml": ["./schemas/pipeline.schema.json"],
    }
