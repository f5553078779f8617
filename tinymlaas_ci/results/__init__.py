"""Result files: the models, and reading and writing them."""

from tinymlaas_ci.results.models import RESULT_SCHEMA, Result  # noqa: F401
