"""The performance website: pages and charts generated from the committed result files.

``build_site(root, out)`` reads ``runs/*/results/*.json`` (tolerantly: a bad file is skipped
and reported, never fatal), adds their git history, renders Jinja templates into a staging
copy of ``site/``, and builds it with MkDocs into one folder that works from ``file://`` and
under any sub-path. This layer may import ``results`` and ``spec``; never the engine or stages.
"""

from tinymlaas_ci.website.build import BuildReport, build_site

__all__ = ["BuildReport", "build_site"]
