"""TinyMLaaS-CI: TinyML deployment as a declarative GitOps pipeline."""

__version__ = "0.1.0"
