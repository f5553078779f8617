"""Research posts: Markdown as is, Jinja posts rendered from the results, Quarto for the rest.

``.qmd`` and ``.ipynb`` posts are rendered by Quarto into GitHub-flavoured Markdown next to
their source, keeping the post's front matter (the blog needs its ``date``). Without a
``quarto`` on PATH they are skipped, and the build says which and why.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = ["QUARTO_SUFFIXES", "SkippedPost", "render_quarto_posts"]

QUARTO_SUFFIXES = (".qmd", ".ipynb")
_FRONT = re.compile(r"\A---\s*\n(.*?\n)---\s*\n", re.DOTALL)


@dataclass
class SkippedPost:
    path: str
    reason: str

    def format(self) -> str:
        return f"{self.path}: {self.reason}"


def _front_matter(source: Path) -> str | None:
    """The YAML front matter of a .qmd file, or of a notebook's first raw/markdown cell."""
    text = source.read_text(encoding="utf-8")
    if source.suffix == ".ipynb":
        try:
            cells = json.loads(text).get("cells", [])
        except ValueError:
            return None
        if not cells:
            return None
        first = cells[0].get("source", "")
        text = "".join(first) if isinstance(first, list) else str(first)
    match = _FRONT.match(text)
    return match.group(1) if match else None


def render_quarto_posts(
    docs_dir: Path, quarto: str | None = None, timeout: float = 600
) -> tuple[list[str], list[SkippedPost]]:
    """Render every .qmd/.ipynb under ``docs_dir`` into a .md beside it; remove the sources.

    Returns the rendered and the skipped posts (paths relative to ``docs_dir``). Sources are
    removed from the staging copy either way, so MkDocs never publishes a raw notebook.
    """
    sources = sorted(
        p
        for suffix in QUARTO_SUFFIXES
        for p in docs_dir.rglob(f"*{suffix}")
        if ".ipynb_checkpoints" not in p.parts and not p.name.startswith("_")
    )
    rendered: list[str] = []
    skipped: list[SkippedPost] = []
    if not sources:
        return rendered, skipped
    exe = quarto or shutil.which("quarto")
    for src in sources:
        rel = src.relative_to(docs_dir).as_posix()
        if exe is None:
            skipped.append(
                SkippedPost(
                    rel,
                    "Quarto is not installed (no 'quarto' on PATH); install it "
                    "from quarto.org to publish .qmd and .ipynb posts",
                )
            )
            src.unlink()
            continue
        out_name = src.with_suffix(".md").name
        front = _front_matter(src)
        try:
            proc = subprocess.run(
                [exe, "render", src.name, "--to", "gfm", "--output", out_name],
                check=False,
                cwd=src.parent,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            skipped.append(SkippedPost(rel, f"quarto could not run: {exc}"))
            src.unlink()
            continue
        out = src.parent / out_name
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
            skipped.append(SkippedPost(rel, f"quarto render failed (exit {proc.returncode}): " + " / ".join(tail)))
            src.unlink()
            out.unlink(missing_ok=True)
            continue
        body = _FRONT.sub("", out.read_text(encoding="utf-8"), count=1)
        if front is not None:
            meta = yaml.safe_load(front) or {}
            # Quarto-only keys mean nothing to MkDocs; the blog needs date, title, categories.
            for key in ("format", "jupyter", "execute", "engine", "knitr"):
                meta.pop(key, None)
            title = meta.pop("title", None)
            if title and not re.search(r"^#\s", body, re.MULTILINE):
                body = f"# {title}\n\n{body}"
            body = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + body
        out.write_text(body, encoding="utf-8")
        src.unlink()
        rendered.append(rel)
    return rendered, skipped
