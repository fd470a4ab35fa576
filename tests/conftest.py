"""Fixtures shared by all tests. Models are built once per session (they take a second or two)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="session")
def backbone():
    from core import create_backbone

    return create_backbone("efficientnet_lite0")


@pytest.fixture(scope="session")
def embedder(backbone):
    from core import Embedder

    return Embedder(backbone, "cpu", batch_size=16)


@pytest.fixture(scope="session")
def shapes_tree(tmp_path_factory) -> Path:
    """support/<class>/ (3 each) and query/<class>/ (6 each) of generated shapes."""
    from synthetic import write_tree

    root = tmp_path_factory.mktemp("shapes")
    write_tree(root / "support", per_class=3, seed=1)
    write_tree(root / "query", per_class=6, seed=2)
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the feature cache of tests out of the user's home."""
    monkeypatch.setenv("PROTOLABEL_CACHE", str(tmp_path_factory.getbasetemp() / "feature-cache"))
