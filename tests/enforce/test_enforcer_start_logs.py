"""`meshca enforce`'s log while it starts: one that cannot start says why in one line (the lines its
parts wrote on the way, often the same failure logged for a running process, are not printed
before it); one that waits for its certificate says so while it waits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.agent import REPO, wait_until

POLICY = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: shop-wide, namespace: shop}
spec: {mtls: {mode: %s}}
"""
ENV = {k: v for k, v in os.environ.items() if not k.startswith("MESHCA_")} | {"PYTHONPATH": str(REPO)}


def enforce_args(tmp_path: Path, mode: str) -> list[str]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "shop.yaml").write_text(POLICY % mode)
    args = ["--inbound", "0:8080", "--namespace", "shop", "--policies", str(policies)]
    return [
        sys.executable,
        "-m",
        "ca.cli",
        "enforce",
        *args,
        "--cert-dir",
        str(tmp_path / "certs"),
        "--metrics-listen",
        "off",
    ]


def test_an_invalid_policy_stops_enforce_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        enforce_args(tmp_path, "STRIKT"),
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("meshca: error: "), result.stderr
    assert "shop.yaml" in result.stderr and "STRIKT" in result.stderr


def test_an_enforcer_waiting_for_its_certificate_says_so_while_it_waits(tmp_path: Path) -> None:
    log_path = tmp_path / "enforce.log"
    with log_path.open("w") as log_file:
        enforcer = subprocess.Popen(enforce_args(tmp_path, "STRICT"), stderr=log_file, env=ENV, cwd=tmp_path)
        try:
            wait_until(
                lambda: "waiting for the workload certificate files" in log_path.read_text(),
                20,
                "the enforcer to say it waits for its certificate",
            )
            assert enforcer.poll() is None
            assert '"enforcing"' not in log_path.read_text()  # still waiting (for up to 30 s)
        finally:
            enforcer.kill()
            enforcer.wait()
