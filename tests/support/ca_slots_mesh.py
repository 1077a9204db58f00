"""Helpers for the CA rotation end-to-end test (tests/rotate/test_ca_rotation_e2e.py), on top of
`tests.support.rotation_mesh`:

- `meshca_ca`: `meshca ca ...` run as an operator runs it (exit code and output, a refusal included).
- `ca_report`: what the running CA last reported in `<state-dir>/ca-status.json` (what
  `meshca ca status` shows), read directly so that waiting on it costs no process start.
- `roots_held` / `signing_fingerprint`: what an agent's files hold (the roots of its root-cert.pem,
  the CA that signed the leaf it serves).
- `enforcer`: `meshca enforce` in front of an application with an agent's files.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from ca.issuance.authority import fingerprint_sha256
from ca.issuance.cert_dir import ROOT_CERT
from ca.server.ca_requests import CaInbox
from tests.support.agent import REPO
from tests.support.dataplanes import meshca_process, stop_process
from tests.support.ports import inbound_ports, read_ports_file
from tests.support.rotation_mesh import MESHCA, AgentRun


@dataclass(frozen=True)
class CaCommand:
    returncode: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return f"exit {self.returncode}\n{self.stdout}{self.stderr}"


def meshca_ca(state_dir: Path, *args: str, timeout: float = 60.0) -> CaCommand:
    """`meshca ca ARGS --state-dir STATE_DIR` as a separate process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCA_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [*MESHCA, "ca", *args, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )
    return CaCommand(done.returncode, done.stdout, done.stderr)


def ca_report(state_dir: Path) -> dict[str, Any]:
    """The running CA's latest status document (slots, bundle with acknowledgements)."""
    document = CaInbox(state_dir).read_status()
    assert document is not None, f"no {state_dir}/ca-status.json: is `meshca serve` running?"
    return dict(document)


def slots_by_state(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    by_state: dict[str, list[dict[str, Any]]] = {}
    for slot in report["slots"]:
        by_state.setdefault(slot["state"], []).append(slot)
    return by_state


def active_slot(report: dict[str, Any]) -> dict[str, Any]:
    (active,) = slots_by_state(report)["active"]
    return active


def roots_held(agent: AgentRun) -> set[str]:
    """SHA-256 fingerprints of the roots in the agent's root-cert.pem (empty before the first)."""
    try:
        data = (agent.output_dir / ROOT_CERT).read_bytes()
    except FileNotFoundError:
        return set()
    return {fingerprint_sha256(root) for root in x509.load_pem_x509_certificates(data)}


def signing_fingerprint(chain_pem: bytes) -> str:
    """The fingerprint of the CA certificate right above the leaf in a chain (its issuer)."""
    chain = x509.load_pem_x509_certificates(chain_pem)
    assert len(chain) >= 2, "the chain holds no signing CA above the leaf"
    chain[0].verify_directly_issued_by(chain[1])
    return fingerprint_sha256(chain[1])


@contextlib.contextmanager
def enforcer(cert_dir: Path, app_port: int, workdir: Path, namespace: str) -> Iterator[int]:
    """`meshca enforce` in front of `app_port` with an agent's files, mTLS peers checked
    (no PeerAuthentication: PERMISSIVE); its listening port."""
    workdir.mkdir()
    (workdir / "policies").mkdir()
    ports_file, log = workdir / "enforce.ports", workdir / "enforce.log"
    process = meshca_process(
        [
            "enforce",
            "--inbound",
            f"0:{app_port}",
            "--listen-host",
            "127.0.0.1",
            "--cert-dir",
            str(cert_dir),
            "--namespace",
            namespace,
            "--policies",
            str(workdir / "policies"),
            "--metrics-listen",
            "off",
            "--ports-file",
            str(ports_file),
        ],
        log,
    )
    try:
        ports = read_ports_file(ports_file, process, log=log)
        yield inbound_ports(ports)[app_port]
    finally:
        stop_process(process)
