"""Fixtures for the security tests: the fake Hub, and a clean Hugging Face environment."""

from __future__ import annotations

import pytest

from tests.hubserver import fake_hub  # noqa: F401  (the fixture)


@pytest.fixture(autouse=True)
def _clean_hub_env(monkeypatch):
    """No token, endpoint or offline switch from the machine leaks into a test."""
    for name in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
