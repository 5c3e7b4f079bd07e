import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/golden.py, tests/httpserver.py


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's caches, and none reaches the network unless it sets up a local server."""
    root = tmp_path_factory.mktemp("caches")
    monkeypatch.setenv("CSPNET_CACHE", str(root / "cspnet"))
    monkeypatch.setenv("TORCH_HOME", str(root / "torch"))
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(root / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CSPNET_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("CSPNET_MIRROR", raising=False)
    monkeypatch.delenv("CSPNET_OFFLINE", raising=False)
    monkeypatch.setenv("CSPNET_DOWNLOAD_TIMEOUT", "5")
    yield root
