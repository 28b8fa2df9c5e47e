"""Shared fixtures: real sample inputs, materialised once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sample videos and the sample book (real files from PyPI packages)."""
    from lwmkit.sample_data import materialise

    dest = tmp_path_factory.mktemp("samples")
    materialise(dest)
    return dest


@pytest.fixture(scope="session")
def botchan(sample_dir: Path) -> str:
    return (sample_dir / "books" / "botchan.txt").read_text(encoding="utf-8")
