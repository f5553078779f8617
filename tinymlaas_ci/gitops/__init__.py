"""GitOps: commit-and-push of result files, and the Markdown GitHub shows for them.

- :mod:`~tinymlaas_ci.gitops.commit` — one commit of new results, pushed with rebase-and-retry.
- :mod:`~tinymlaas_ci.gitops.pr_comment` — the sticky pull-request comment.
- :mod:`~tinymlaas_ci.gitops.job_summary` — the job summary after a run.
- :mod:`~tinymlaas_ci.gitops.diff` — what changed between two results or specs, read from git.
- :mod:`~tinymlaas_ci.gitops.markdown` — the one escaper of repository text, the plan table and
  the templates (``templates/*.md.j2``).

Git itself runs through :mod:`tinymlaas_ci.git`. This layer sits above the engine and may read
specs, plans and results; it never imports the stages or the ML code, so the pull-request
check stays a light install.
"""
