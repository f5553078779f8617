"""``build_site``: results -> generated pages in a staging copy of ``site/`` -> MkDocs -> one folder.

Phases (each timed in the report): load results, read git history, compute the site data,
stage (copy ``site/``, assets, render Quarto posts), render pages, MkDocs build, publish
(swap the finished folder into place). The committed ``site/`` tree is never written to.
"""

from __future__ import annotations

import argparse
import logging
import os
import posixpath
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.website import charts
from tinymlaas_ci.website.analysis import RunView, SiteData, build_site_data
from tinymlaas_ci.website.formatting import FILTERS, repo_web_url
from tinymlaas_ci.website.history import DEFAULT_LIMIT, collect_history, git_head
from tinymlaas_ci.website.loader import Skipped, load_results
from tinymlaas_ci.website.posts import SkippedPost, render_quarto_posts

__all__ = ["ASSET_DIR", "SITE_MARKER", "BuildReport", "build_site"]

SITE_MARKER = ".tinymlaas-site"
ASSET_DIR = "assets/tinymlaas"
_PACKAGE_TEMPLATES = Path(__file__).with_name("templates")
_PACKAGE_ASSETS = Path(__file__).with_name("assets")
_SHELL_FENCE = re.compile(r"^```(?:bash|sh|shell|console)\s*\n(.*?)^```", re.DOTALL | re.MULTILINE)


@dataclass
class BuildReport:
    """What a site build did: where it went, what it made, what it had to skip."""

    out_dir: Path
    pages: int = 0
    projects: int = 0
    runs: int = 0
    skipped_results: list[Skipped] = field(default_factory=list)
    skipped_posts: list[SkippedPost] = field(default_factory=list)
    rendered_posts: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(self.timings.values())

    def lines(self) -> list[str]:
        """A plain summary for the terminal, skipped files first so nobody misses them."""
        out = []
        for s in self.skipped_results:
            out.append(f"skipped result {s.format()}")
        for s in self.skipped_posts:
            out.append(f"skipped post {s.format()}")
        out.append(
            f"built {self.pages} pages ({self.projects} projects, {self.runs} runs) into {self.out_dir} "
            f"in {self.seconds:.1f}s"
        )
        return out


def _plotly_js() -> Path:
    try:
        import plotly
    except ImportError as exc:
        raise TinymlError("the site needs plotly", hint="pip install 'tinymlaas-ci[site]'") from exc
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise TinymlError(f"plotly is installed but has no {path.name}", hint="reinstall plotly: pip install -U plotly")
    return path


def _check_out_dir(out: Path, site_src: Path, root: Path) -> None:
    if out in (root, site_src) or out in root.parents or site_src.is_relative_to(out):
        raise TinymlError(
            f"--out {out} would replace the repository or the site sources",
            hint="pick an empty folder or the default site/build",
        )
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SITE_MARKER).exists())):
        raise TinymlError(
            f"--out {out} exists and is not an earlier site build; refusing to replace it",
            hint="pick an empty or new folder, or remove this one yourself",
        )


def _environment(site_src: Path):
    try:
        import jinja2
    except ImportError as exc:
        raise TinymlError("the site needs Jinja2", hint="pip install 'tinymlaas-ci[site]'") from exc
    loaders = [jinja2.FileSystemLoader(str(_PACKAGE_TEMPLATES))]
    if (site_src / "templates").is_dir():
        loaders.insert(0, jinja2.FileSystemLoader(str(site_src / "templates")))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(FILTERS)
    env.globals.update(charts=charts)
    return env


class _Pages:
    """Writes pages into the staging docs folder with per-page link helpers."""

    def __init__(self, env, docs: Path, common: dict[str, Any]):
        self.env = env
        self.docs = docs
        self.common = common
        self.count = 0
        self.html: set[str] = set()  # pages written as HTML: MkDocs converts no Markdown in them

    def helpers(self, page: str) -> dict[str, Callable[..., str]]:
        base = posixpath.dirname(page) or "."

        def md(target: str) -> str:  # Markdown links: MkDocs checks these in strict mode
            return posixpath.relpath(target, base)

        def href(target: str) -> str:  # raw HTML links: the built .html file
            rel = posixpath.relpath(target, base)
            return rel[:-3] + ".html" if rel.endswith(".md") else rel

        def chart(figure: dict | None, height: int = 420, label: str = "chart") -> str:
            from markupsafe import Markup

            return Markup(charts.figure_html(figure, height, label)) if figure else Markup("")

        def plotly() -> str:
            from markupsafe import Markup

            return Markup(f'<script src="{href(ASSET_DIR + "/plotly.min.js")}"></script>')

        def run_page(run: RunView) -> str:
            return f"projects/{run.project}/runs/{run.slug}.md"

        def href_run(run: RunView) -> str:
            return href(run_page(run))

        return {
            "md": md,
            "href": href,
            "chart": chart,
            "plotly": plotly,
            "run_page": run_page,
            "href_run": href_run,
            "page": page,
        }

    def write(self, template: str, page: str, **context: Any) -> None:
        text = self.env.get_template(template).render(**self.common, **self.helpers(page), **context)
        path = self.docs / page
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        self.count += 1
        if template.endswith(".html.j2"):
            self.html.add(page)

    def render_string(self, source: str, page: str) -> str:
        return self.env.from_string(source).render(**self.common, **self.helpers(page))


def _readme_blocks(root: Path) -> list[str]:
    readme = root / "README.md"
    if not readme.is_file():
        return []
    return [m.group(1).rstrip() for m in _SHELL_FENCE.finditer(readme.read_text(encoding="utf-8"))]


def build_site(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    strict: bool = True,
    history_limit: int = DEFAULT_LIMIT,
    quarto: str | None = None,
    log: Callable[[str], None] | None = None,
    cli_parser: argparse.ArgumentParser | None = None,
) -> BuildReport:
    """Build the website of the repository at ``root`` into ``out`` (default ``site/build``).

    Invalid result files and posts that cannot be rendered are skipped and listed in the
    report; any MkDocs warning fails the build when ``strict``. ``cli_parser`` is the
    ``tinymlaas`` argument parser, passed in by the CLI (this layer does not import it), from
    which the CLI reference is generated.
    """
    root = Path(root).resolve()
    site_src = root / "site"
    if not (site_src / "mkdocs.yml").is_file():
        raise TinymlError(
            f"no site here: {site_src / 'mkdocs.yml'} does not exist",
            hint="create one with 'tinymlaas init', or copy site/ from the TinyMLaaS-CI repository",
        )
    out_dir = Path(out).resolve() if out else site_src / "build"
    _check_out_dir(out_dir, site_src, root)
    report = BuildReport(out_dir=out_dir)
    say = log or (lambda _msg: None)
    clock = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        report.timings[name] = report.timings.get(name, 0.0) + now - clock
        clock = now

    loaded, report.skipped_results = load_results(root)
    for s in report.skipped_results:
        say(f"skipped result {s.format()}")
    phase("load")
    history = collect_history(root, [item.path for item in loaded], limit=history_limit)
    phase("history")
    data = build_site_data(loaded, history)
    report.projects, report.runs = len(data.projects), len(data.runs)
    phase("analyse")

    staging_root = Path(tempfile.mkdtemp(prefix="tinymlaas-site-"))
    try:
        staging = staging_root / "site"
        shutil.copytree(site_src, staging, ignore=shutil.ignore_patterns("build", ".cache", "__pycache__"))
        docs = staging / "docs"
        assets = docs / ASSET_DIR
        assets.mkdir(parents=True, exist_ok=True)
        shutil.copy2(_plotly_js(), assets / "plotly.min.js")
        for item in _PACKAGE_ASSETS.iterdir():
            if item.is_file() and not (assets / item.name).exists():
                shutil.copy2(item, assets / item.name)
        report.rendered_posts, report.skipped_posts = render_quarto_posts(docs, quarto=quarto)
        for s in report.skipped_posts:
            say(f"skipped post {s.format()}")
        phase("stage")

        report.pages, html_pages = _render_pages(root, staging, docs, data, report, cli_parser)
        phase("render")
        _mkdocs_build(staging, staging_root / "out", strict, html_pages)
        phase("mkdocs")
        (staging_root / "out" / SITE_MARKER).write_text("built by tinymlaas site build\n")
        (staging_root / "out" / ".nojekyll").write_text("")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging_root / "out"), str(out_dir))
        phase("publish")
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    return report


def _render_pages(
    root: Path,
    staging: Path,
    docs: Path,
    data: SiteData,
    report: BuildReport,
    cli_parser: argparse.ArgumentParser | None,
) -> tuple[int, set[str]]:
    """Writes the generated pages; returns how many, and which of them are HTML."""
    from tinymlaas_ci.website.references import (
        RESULT_MODELS,
        SPEC_MODELS,
        cli_sections,
        model_sections,
    )

    env = _environment(staging)
    web = repo_web_url(root, staging / "mkdocs.yml")
    common = {
        "site": data,
        "repo_url": web,
        "head": git_head(root),
        "skipped_results": report.skipped_results,
        "skipped_posts": report.skipped_posts,
        "readme_blocks": _readme_blocks(root),
    }
    pages = _Pages(env, docs, common)
    # A site that kept its own Markdown run page template (site/templates/run.md.j2) gets it.
    run_template = "run.md.j2" if (staging / "templates" / "run.md.j2").is_file() else "run.html.j2"
    pages.write("index.md.j2", "index.md")
    pages.write("projects.md.j2", "projects/index.md")
    for project in data.projects:
        pages.write("project.md.j2", f"projects/{project.name}/index.md", project=project)
        pages.write("compare.md.j2", f"projects/{project.name}/compare.md", project=project)
        for run in project.runs:
            pages.write(run_template, f"projects/{project.name}/runs/{run.slug}.md", project=project, run=run)
    pages.write(
        "spec-reference.md.j2",
        "reference/spec.md",
        spec_sections=model_sections(SPEC_MODELS()),
        result_sections=model_sections(RESULT_MODELS()),
    )
    pages.write(
        "cli-reference.md.j2", "reference/cli.md", commands=cli_sections(cli_parser) if cli_parser is not None else []
    )
    # Hand-written pages and posts may be templates too: `*.md.j2` renders to `*.md`.
    for src in sorted(docs.rglob("*.md.j2")):
        page = src.relative_to(docs).as_posix()[:-3]
        text = pages.render_string(src.read_text(encoding="utf-8"), page)
        (docs / page).write_text(text, encoding="utf-8")
        src.unlink()
        pages.count += 1
    return pages.count, pages.html


_HEADING = re.compile(r'<h([1-6]) id="([^"]+)">(.*?)<a class="headerlink"', re.DOTALL)


def _generated_pages_plugin(html_pages: set[str]):
    """A MkDocs plugin for the generated pages: the ones written as HTML, and memory.

    **HTML pages** (``html_pages``, the run pages): MkDocs reads their front matter and applies
    the theme, but converts no Markdown; the table of contents is made from the headings'
    ids. Python-Markdown spent about 10 ms on each run page, most of a large site's build.

    **Memory:** MkDocs converts every page first and applies the theme afterwards, holding
    every page's Markdown and HTML in between; at thousands of run pages that was most of a
    build's memory. For the pages under ``projects/`` (generated, read by no other page: the
    navigation uses titles and URLs), this drops the Markdown once converted, keeps the HTML
    compressed until the page's turn, and drops it once the page is written."""
    import html as html_lib
    import zlib

    from mkdocs.plugins import BasePlugin, event_priority
    from mkdocs.structure.pages import Page
    from mkdocs.structure.toc import get_toc

    class HtmlPage(Page):
        def render(self, config, files) -> None:
            if self.markdown is None:
                raise RuntimeError("`markdown` field hasn't been set (via `read_source`)")
            self.content = self.markdown
            tokens: list[dict] = []
            open_levels: list[dict] = []
            headings = _HEADING.findall(self.content)
            for level, anchor, title in headings:
                token = {"level": int(level), "id": anchor, "name": title.strip(), "children": []}
                while open_levels and open_levels[-1]["level"] >= token["level"]:
                    open_levels.pop()
                (open_levels[-1]["children"] if open_levels else tokens).append(token)
                open_levels.append(token)
            self.toc = get_toc(tokens)
            first = tokens[0] if tokens and tokens[0]["level"] == 1 else None
            self._title_from_render = html_lib.unescape(first["name"]) if first else None
            self.present_anchor_ids = {anchor for _, anchor, _ in headings}
            self.links_to_anchors = {}

    def generated(page) -> bool:
        return page.file.src_uri.startswith("projects/")

    class GeneratedPages(BasePlugin):
        def __init__(self) -> None:
            self.packed: dict[str, bytes] = {}

        def on_files(self, files, config):
            for file in files.documentation_pages():
                if file.src_uri in html_pages:
                    HtmlPage(None, file, config)  # becomes file.page, which MkDocs then uses
            return files

        @event_priority(-100)  # after every other plugin has seen the HTML
        def on_page_content(self, html: str, page, config, files):
            if not generated(page):
                return html
            page.markdown = None
            self.packed[page.file.src_uri] = zlib.compress(html.encode("utf-8"), 1)
            return ""

        @event_priority(100)  # before any other plugin looks at the page
        def on_page_context(self, context, page, config, nav):
            packed = self.packed.pop(page.file.src_uri, None)
            if packed is not None:
                page.content = zlib.decompress(packed).decode("utf-8")
            return context

        def on_post_page(self, output: str, page, config):
            if generated(page):
                page.content = None
            return output

    return GeneratedPages()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _mkdocs_build(staging: Path, out: Path, strict: bool, html_pages: set[str]) -> None:
    try:
        from mkdocs.commands.build import build
        from mkdocs.config import load_config
        from mkdocs.exceptions import MkDocsException
    except ImportError as exc:
        raise TinymlError("the site needs MkDocs Material", hint="pip install 'tinymlaas-ci[site]'") from exc
    collect = _Collect()
    logger = logging.getLogger("mkdocs")
    logger.addHandler(collect)
    try:
        config = load_config(str(staging / "mkdocs.yml"), site_dir=str(out), strict=strict)
        # The navigation is the same on every page, so it names no project or run: listing
        # every project there made each run page grow with the number of projects (33 KB to
        # 60 KB from 2 to 100). Projects are reached from the projects page, runs from theirs.
        config.plugins["tinymlaas-generated-pages"] = _generated_pages_plugin(html_pages)
        build(config)
    except MkDocsException as exc:
        details = "\n".join(f"  {m}" for m in collect.messages[:20]) or f"  {exc}"
        raise TinymlError(
            f"MkDocs could not build the site:\n{details}",
            hint="fix the pages or site/mkdocs.yml named above; the build runs with --strict",
        ) from exc
    finally:
        logger.removeHandler(collect)
