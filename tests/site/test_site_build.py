"""The site build, without a browser: pages, references, tolerance, posts, output safety."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from conftest import REPO, make_repo

from tinymlaas_ci.cli.main import build_parser, main
from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.website import build_site


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        for key in ("href", "src"):
            if attrs.get(key) and tag in ("a", "link", "script", "img"):
                self.links.append(attrs[key])


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_pages_for_every_project_and_run(built_site):
    _, out, report, results = built_site
    assert report.projects == 3 and report.runs == len(results)
    for res in results:
        run = res["run"]
        assert (out / "projects" / run["project"] / "runs" / f"{run['name']}.html").is_file()
    for page in (
        "index.html",
        "projects/index.html",
        "projects/digits/index.html",
        "projects/digits/compare.html",
        "reference/spec.html",
        "reference/cli.html",
        "guide/getting-started.html",
        "research/index.html",
        "research/posts/static-vs-dynamic-int8.html",
        "assets/tinymlaas/plotly.min.js",
        ".nojekyll",
    ):
        assert (out / page).exists(), page


def test_invalid_result_is_reported_not_fatal(built_site, site_fixtures):
    _, out, report, _ = built_site
    assert [s.path for s in report.skipped_results] == [site_fixtures.INVALID_FILE]
    assert "run.name: Field required" in report.skipped_results[0].reason
    assert any(line.startswith(f"skipped result {site_fixtures.INVALID_FILE}") for line in report.lines())
    # Users see it on the site as well.
    assert site_fixtures.INVALID_FILE in (out / "projects/index.html").read_text()


def test_every_internal_link_resolves(built_site):
    _, out, _, _ = built_site
    broken = []
    # 404.html is served at any depth, so MkDocs links it from the root (or from site_url).
    pages = [p for p in out.rglob("*.html") if p.name != "404.html"]
    for page in pages:
        parsed = _parse(page)
        for link in parsed.links:
            parts = urlsplit(link)
            if parts.scheme or link.startswith(("//", "mailto:")):
                continue
            assert not link.startswith("/"), f"{page}: absolute link {link} breaks under a sub-path"
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if not target.exists():
                broken.append(f"{page.relative_to(out)} -> {link}")
    assert not broken, "\n".join(broken[:20])


def test_nothing_is_loaded_from_other_hosts(built_site):
    _, out, _, _ = built_site
    for page in out.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text
        for tag in re.findall(r"<(?:script|link|img)\b[^>]*>", text):
            assert not re.search(r'(?:src|href)="(?:https?:)?//', tag), f"{page}: {tag}"


def test_run_page_numbers_and_provenance(built_site):
    _, out, _, results = built_site
    res = next(r for r in results if r["run"]["name"] == "cnn-static-int8")
    html = (out / "projects/digits/runs/cnn-static-int8.html").read_text()
    m = res["metrics"]
    assert f"{m['accuracy'] * 100:.2f} %" in html
    assert f"{m['model_size_bytes']:,} bytes" in html
    assert res["run"]["actions_run_url"] in html
    assert "calibration_samples: 256" in html  # the spec as YAML
    assert ("Confusion matrix" in html and "Stage timeline" not in html) or "tm-figure" in html


def test_failed_run_page_says_why(built_site):
    _, out, _, _ = built_site
    html = (out / "projects/vww/runs/mobilenet-static-int8.html").read_text()
    assert "The run failed in stage compile" in html
    assert "calibration failed" in html


def test_compare_page_has_baseline_and_previous(built_site):
    _, out, _, _ = built_site
    html = (out / "projects/digits/compare.html").read_text()
    row = re.search(r"<tr><td data-sort=\"cnn-static-int8\"[^>]*>.*?</tr>", html, re.DOTALL).group(0)
    assert "cnn-none.html" in row  # its baseline
    assert re.search(r"<code>[0-9a-f]{10}</code>", row)  # the previous committed result


def test_spec_reference_lists_every_field():
    from tinymlaas_ci.website.references import SPEC_MODELS, model_sections

    sections = model_sections(SPEC_MODELS())
    documented = {(m["name"], f["name"]) for s in sections for m in s["models"] for f in m["fields"]}
    from tinymlaas_ci.spec.models import Gates, RunSpec

    for model in (RunSpec, Gates):
        for name, field in model.model_fields.items():
            assert (model.__name__, field.alias or name) in documented
    gates = next(m for s in sections for m in s["models"] if m["name"] == "Gates")
    row = next(f for f in gates["fields"] if f["name"] == "max_accuracy_drop")
    assert row["default"] == "`null`" and "≥ `0.0`" in row["constraints"] and "baseline" in row["description"]


def test_cli_reference_follows_the_parser(built_site):
    _, out, _, _ = built_site
    html = (out / "reference/cli.html").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    listed = [a.dest for a in sub._choices_actions]  # what --help lists; hidden aliases are not
    assert set(listed) < set(sub.choices)
    for name in listed:
        assert f"tinymlaas {name}" in html
    assert "tinymlaas report" not in html  # the former name of 'github' stays undocumented
    assert "tinymlaas github pr-comment" in html and "tinymlaas github job-summary" in html
    assert "tinymlaas site build" in html and "--out DIR" in html


def test_site_sources_stay_clean(built_site):
    root, _, _, _ = built_site
    generated = ["docs/index.md", "docs/projects", "docs/reference", "docs/assets/tinymlaas/plotly.min.js"]
    for rel in generated:
        assert not (root / "site" / rel).exists(), rel
        assert not (REPO / "site" / rel).exists(), rel


def test_quarto_posts_are_skipped_plainly_without_quarto(tmp_path, monkeypatch):
    make_repo(tmp_path, 3, commits=1, invalid=False)
    post = tmp_path / "site/docs/research/posts/notes.qmd"
    post.write_text("---\ntitle: Notes\ndate: 2025-03-01\n---\n\nSome analysis.\n")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no quarto here
    report = build_site(tmp_path, tmp_path / "out", cli_parser=build_parser())
    assert [s.path for s in report.skipped_posts] == ["research/posts/notes.qmd"]
    assert "Quarto is not installed" in report.skipped_posts[0].reason
    assert not list((tmp_path / "out").rglob("notes*"))
    assert post.exists()  # the source is untouched


def test_quarto_posts_are_rendered_when_quarto_is_there(tmp_path):
    # A stand-in for the quarto binary, at the one seam we call: `quarto render SRC --to gfm --output OUT`.
    make_repo(tmp_path, 3, commits=1, invalid=False)
    fake = tmp_path / "bin" / "quarto"
    fake.parent.mkdir()
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys, pathlib\n"
        "src, out = sys.argv[2], sys.argv[sys.argv.index('--output') + 1]\n"
        "body = pathlib.Path(src).read_text().split('---', 2)[2]\n"
        "pathlib.Path(out).write_text(body + '\\nRendered by quarto.\\n')\n"
    )
    fake.chmod(0o755)
    (tmp_path / "site/docs/research/posts/notes.qmd").write_text(
        "---\ntitle: Notes on pruning\ndate: 2025-03-01\nformat: gfm\n---\n\nSome analysis.\n\n<!-- more -->\n\nMore.\n"
    )
    report = build_site(tmp_path, tmp_path / "out", cli_parser=build_parser(), quarto=str(fake))
    assert report.rendered_posts == ["research/posts/notes.qmd"] and not report.skipped_posts
    html = (tmp_path / "out/research/posts/notes-on-pruning.html").read_text()  # the blog slugs the title
    assert "Notes on pruning" in html and "Rendered by quarto." in html


def test_build_without_results_or_git(tmp_path):
    (tmp_path / "runs").mkdir()
    import shutil

    shutil.copytree(REPO / "site", tmp_path / "site", ignore=shutil.ignore_patterns("build"))
    report = build_site(tmp_path, tmp_path / "out", cli_parser=build_parser())
    assert report.runs == 0
    assert "No results yet" in (tmp_path / "out/index.html").read_text()
    assert "No results yet" in (tmp_path / "out/research/posts/static-vs-dynamic-int8.html").read_text()


def test_refuses_to_replace_a_folder_that_is_not_a_site(tmp_path):
    make_repo(tmp_path, 2, commits=1, invalid=False)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(TinymlError, match="not an earlier site build"):
        build_site(tmp_path, precious)
    with pytest.raises(TinymlError, match="would replace the repository"):
        build_site(tmp_path, tmp_path)
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_missing_site_folder_says_how_to_fix(tmp_path):
    with pytest.raises(TinymlError, match="no site here") as info:
        build_site(tmp_path, tmp_path / "out")
    assert "tinymlaas init" in info.value.hint


def test_cli_build_twice_into_the_same_folder(tmp_path, capsys):
    make_repo(tmp_path, 4, commits=2)
    out = tmp_path / "public"
    for _ in range(2):
        assert main(["-C", str(tmp_path), "site", "build", "--out", str(out), "--history", "5"]) == 0
    captured = capsys.readouterr()
    assert "built " in captured.out and "skipped result runs/vww/results/broken.json" in captured.err
    assert (out / "index.html").is_file()


def test_cli_site_help_lists_commands():
    proc = subprocess.run(
        [sys.executable, "-m", "tinymlaas_ci", "site", "--help"],
        check=False,
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert proc.returncode == 0 and "build" in proc.stdout and "serve" in proc.stdout


def test_run_page_is_html_with_its_table_of_contents(built_site):
    _, out, _, _ = built_site
    html = (out / "projects/digits/runs/cnn-static-int8.html").read_text()
    article = html[html.index("<article") : html.index("</article>")]
    assert "|---" not in article and "**" not in article and "](" not in article  # no Markdown left over
    toc = html[html.index("md-nav--secondary") :]
    for anchor in ("metrics", "gates", "comparison", "stages", "inputs", "provenance", "spec"):
        assert f'<h2 id="{anchor}">' in article
        assert f'href="#{anchor}"' in toc  # the theme's table of contents, made from the headings


def test_a_site_can_keep_a_markdown_run_page_template(tmp_path):
    make_repo(tmp_path, 3, commits=1, invalid=False)
    (tmp_path / "site/templates").mkdir()
    (tmp_path / "site/templates/run.md.j2").write_text(
        '---\ntitle: "{{ run.slug }}"\n---\n\n# {{ run.slug }}\n\n## Our numbers\n\n'
        "| Metric | Value |\n|---|---|\n| Accuracy | {{ run.accuracy | pct }} |\n"
    )
    build_site(tmp_path, tmp_path / "out", cli_parser=build_parser())
    page = next((tmp_path / "out/projects").glob("*/runs/*.html")).read_text()
    assert '<h2 id="our-numbers">Our numbers' in page and "<td>Accuracy</td>" in page


def test_run_page_shows_how_static_int8_was_chosen(built_site):
    _, out, _, results = built_site
    res = next(r for r in results if r["run"]["name"] == "cnn-static-int8")
    comp = res["compression"]
    html = (out / "projects/digits/runs/cnn-static-int8.html").read_text()
    assert f"Recipe <code>{comp['recipe']}</code>: 3 of 3 Conv/Gemm/MatMul layers run as integer kernels." in html
    assert "Runtime chosen by <code>runtime: auto</code>: <strong>onnxruntime</strong>." in html
    # Every candidate with what it measured; a node name from the model stays text.
    table = html[html.index("<th>Candidate timed at compile</th>") :]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr><td><code>(.*?)</code></td><td>(.*?)</td>(.*?)</tr>", table, re.DOTALL)
    assert [(name, runtime) for name, runtime, _ in rows] == [
        (c["recipe"], c.get("runtime", "onnxruntime")) for c in comp["recipe_candidates"]
    ]
    assert "<td>1.62×</td><td>0.3 %</td><td>3 of 3</td><td>yes</td>" in rows[0][2]
    assert "1.1 % (too much)" in rows[1][2]
    assert "could not run: node &#39;&lt;b&gt;x&lt;/b&gt;&#39; (Einsum)" in rows[2][2]
    assert "<b>x</b>" not in html
