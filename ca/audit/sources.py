"""What an audit reads besides the ledger's queries: the ledger key and the signed heads kept
outside the database (for `verify` and the document's evidence), the CA keyring's
certificates, and PeerAuthentication policies; and `gather`, which reads everything the
compliance document is built from.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from ca.audit.document import DocumentInputs, KeyringFound, PoliciesFound, VerificationFound
from ca.audit.settings import AuditConfig
from ca.errors import ConfigError, LedgerTamperedError
from ca.issuance.slots import KEYRING_DOCUMENT, slot_certificates
from ca.ledger import compliance, queries
from ca.ledger.checkpoint import Checkpoint
from ca.ledger.ledger import HEAD_FILE
from ca.ledger.live_verify import (
    UnreadableHead,
    load_verify_key,
    read_head_file,
    verify_at_head,
    verify_key_from_pem,
)
from ca.ledger.reader import LedgerReader
from ca.ledger.store import redact_url
from ca.ledger.verify import VerifyReport

# Where the CA keeps its keyring without a cluster (ca.server.keyring_store, which an audit
# does not import: the processes keep to their own modules).
KEYRING_DIR = "ca-slots"
DB_CHECKPOINT = "the ledger's checkpoint table"


def external_heads(cfg: AuditConfig) -> list[tuple[Checkpoint, str]]:
    """The signed heads kept outside the database, each with where it was found; raises
    UnreadableHead for one that is there but cannot be read."""
    heads: list[tuple[Checkpoint, str]] = []
    path = cfg.state_dir / HEAD_FILE
    head = read_head_file(path)
    if head is not None:
        heads.append((head, str(path)))
    if cfg.kubeconfig is not None:
        from ca.kube import client as kube

        api = kube.api_client(cfg.kubeconfig, in_cluster=False)
        head = kube.read_ledger_head(api, namespace=cfg.ca_namespace)
        if head is not None:
            heads.append((head, f"ConfigMap {cfg.ca_namespace}/{kube.LEDGER_HEAD_CONFIGMAP}"))
    return heads


def verify_key(cfg: AuditConfig) -> ed25519.Ed25519PublicKey:
    """--ledger-key, else the state directory's key file, else (with --kubeconfig) the CA's
    ledger key Secret."""
    if cfg.ledger_key_given or cfg.kubeconfig is None or cfg.ledger_key.is_file():
        return load_verify_key(cfg.ledger_key)
    from ca.kube import client as kube

    api = kube.api_client(cfg.kubeconfig, in_cluster=False)
    pem = kube.read_ledger_key_secret(api, namespace=cfg.ca_namespace)
    if pem is None:
        return load_verify_key(cfg.ledger_key)  # says which file is missing and what to give
    return verify_key_from_pem(pem, f"Secret {cfg.ca_namespace}/{kube.LEDGER_KEY_SECRET}")


def verify_command(cfg: AuditConfig) -> tuple[str, ...]:
    """The `meshca audit verify` command line that checks the same ledger with the same key."""
    argv = [
        "meshca",
        "audit",
        "verify",
        "--ledger",
        redact_url(cfg.ledger_url),
        "--state-dir",
        str(cfg.state_dir),
    ]
    if cfg.ledger_key_given:
        argv += ["--ledger-key", str(cfg.ledger_key)]
    if cfg.kubeconfig is not None:
        argv += ["--kubeconfig", str(cfg.kubeconfig), "--ca-namespace", cfg.ca_namespace]
    return tuple(argv)


def verification(cfg: AuditConfig, reader: LedgerReader) -> VerificationFound:
    """`meshca audit verify` on the reader's ledger. A ledger that fails stops here: no document
    is built from it (LedgerTamperedError); one whose key is not at hand is reported unverified."""
    command = verify_command(cfg)
    try:
        key = verify_key(cfg)
    except ConfigError as err:
        return VerificationFound(
            result=None, problem=err.message, external_heads=(), heads=(), public_key=None, command=command
        )
    stored, _ = compliance.newest_checkpoint(reader)
    outside: list[tuple[Checkpoint, str]] = []
    try:
        outside = external_heads(cfg)
    except UnreadableHead as err:
        result = VerifyReport(0, 0, None, str(err))
    else:
        result = verify_at_head(reader, key, [head for head, _ in outside])
    if not result.ok:
        raise LedgerTamperedError(
            f"{result.summary()}; no report is built from a ledger that fails verification: run "
            f"'{' '.join(command)}' and investigate",
            seq=result.bad_seq or 0,
        )
    heads = [*outside, *([(stored, DB_CHECKPOINT)] if stored is not None else [])]
    return VerificationFound(
        result=result,
        problem=None,
        external_heads=tuple(where for _, where in outside),
        heads=tuple(heads),
        public_key=key,
        command=command,
    )


def keyring_certificates(state_dir: Path) -> KeyringFound:
    """The certificates of the keyring in `<state-dir>/ca-slots`, never its keys."""
    directory = state_dir / KEYRING_DIR
    where = str(directory)
    if not (directory / KEYRING_DOCUMENT).is_file():
        return KeyringFound(
            where=where,
            slots=None,
            problem=(
                f"no CA keyring at {where}: a CA without a cluster keeps it there; in a cluster it is in "
                "the CA's Secret (see 'meshca ca status'). Give --state-dir the CA's state directory "
                "for root and intermediate expiry dates"
            ),
        )
    try:
        files = {
            path.name: path.read_bytes()
            for path in directory.iterdir()
            if path.is_file() and not path.name.endswith("key.pem")
        }
        slots = slot_certificates(files, where)
    except (OSError, ConfigError) as err:
        problem = err.message if isinstance(err, ConfigError) else f"cannot read {where}: {err}"
        return KeyringFound(where=where, slots=None, problem=problem)
    return KeyringFound(where=where, slots=slots)


def policies(cfg: AuditConfig) -> PoliciesFound:
    if cfg.policies is None:
        return PoliciesFound(source=None, root_namespace=cfg.root_namespace)
    from ca.policy.source import load_policies_once

    loaded = load_policies_once(cfg.policies, kubeconfig=cfg.kubeconfig, in_cluster=cfg.in_cluster)
    return PoliciesFound(
        source=cfg.policies,
        root_namespace=cfg.root_namespace,
        policies=loaded.policies,
        invalid=loaded.invalid,
        notes=loaded.notes,
    )


def gather(cfg: AuditConfig, reader: LedgerReader) -> DocumentInputs:
    """Everything the compliance document is built from. The ledger is verified first."""
    checked = verification(cfg, reader)
    f = cfg.filter
    return DocumentInputs(
        at=cfg.at,
        filter=f,
        ledger=redact_url(cfg.ledger_url),
        policy=cfg.policy,
        report=queries.report(reader, cfg.at, cfg.policy, f),
        days=compliance.daily_counts(reader, f),
        lifetimes=compliance.lifetimes(reader, f),
        key_types=compliance.key_types(reader, f),
        top_callers=compliance.top_callers(reader, f),
        callers_by_reason=compliance.callers_by_reason(reader, f),
        ca_records=compliance.ca_records(reader, f),
        revocations=compliance.revocations(reader, f),
        span=compliance.period_span(reader, f),
        keyring=keyring_certificates(cfg.state_dir),
        policies=policies(cfg),
        verification=checked,
    )
