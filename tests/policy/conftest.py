"""A directory of PeerAuthentication manifests, shared by the policy source tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.policies import manifest


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "mesh.yaml").write_text(manifest("istio-system", "default", "STRICT"))
    (directory / "shop.yml").write_text(manifest("shop", "web", "DISABLE", selector="web"))
    (directory / "README.md").write_text("not a manifest")
    (directory / ".hidden.yaml").write_text("this: [is not read")
    return directory
