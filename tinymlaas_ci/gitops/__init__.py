"""GitOps: commit-and-push of result files, and the Markdown GitHub shows for them.

- :mod:`~tinymlaas_ci.git` — the one place that runs git; failures become ``GitError``.
- :mod:`~tinymlaas_ci.gitops.commit` — one commit of new results, pushed with rebase-and-retry.
- :mod:`~tinymlaas_ci.gitops.report` — the sticky pull-request comment and the job summary.

This layer sits above the engine and may read specs, plans and results; it never imports the
stages or the ML code, so the pull-request check stays a light install.
"""
