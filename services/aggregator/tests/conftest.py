"""Fixtures of the aggregator tests: settings on the accounting test site (real servers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ews_contracts.settings import Settings

SITE_FILE = Path(__file__).parent / "site_accounting.yaml"


@pytest.fixture
def acct_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("EWS_SITE_FILE", str(SITE_FILE))
    return Settings()
