"""`meshca audit`: its flags and frozen settings."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from ca.common.durations import parse_duration
from ca.common.flags import DEFAULT_STATE_DIR, EnvDefaults, Subcommands
from ca.common.moments import parse_moment
from ca.errors import ConfigError, InvalidRequestError
from ca.issuance.issuer import IssuancePolicy
from ca.ledger.audit_filter import DEFAULT_LIMIT, AuditFilter, parse_limit
from ca.ledger.entries import KINDS
from ca.ledger.location import ledger_url
from ca.policy.model import DEFAULT_ROOT_NAMESPACE


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    action: str
    ledger_url: str
    state_dir: Path
    output: str
    filter: AuditFilter
    limit: int
    serial: str | None
    at: datetime
    policy: IssuancePolicy
    ledger_key: Path
    ledger_key_given: bool
    kubeconfig: Path | None
    ca_namespace: str
    progress: bool = False  # show progress on stderr when it is a terminal (verify, export)
    # report as a document (--format html or markdown): where to write it, and where the
    # PeerAuthentication of its mTLS coverage section comes from (None: not assessed)
    out: Path | None = None
    policies: str | None = None
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    in_cluster: bool = False


def add_audit_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    audit = commands.add_parser("audit", help="list, show, export, report on and verify the issuance ledger")
    actions = audit.add_subparsers(dest="audit_action", required=True)
    for action, help_text in AUDIT_ACTIONS.items():
        _audit_flags(actions.add_parser(action, help=help_text, description=help_text), action, environ)


AUDIT_ACTIONS = {
    "list": "the newest ledger entries that match the filters, newest first",
    "show": "every ledger entry for one certificate serial number",
    "export": "every entry that matches the filters, oldest first, as JSON lines or CSV",
    "report": "issuance per namespace and identity, refusals by reason, live certificates "
    "that break the policy, and rotation orders",
    "verify": "check the whole ledger: hash chain, signed checkpoints and the head kept outside",
}

# `report --format` values that make a document (ca.audit.document) rather than a table or data.
DOCUMENT_FORMATS = ["html", "markdown"]

TIME_HELP = "2026-11-21T08:00:00Z, 2026-11-21, now, or an age such as 24h or 7d (that long ago)"


def _audit_flags(parser: argparse.ArgumentParser, action: str, environ: Mapping[str, str]) -> None:
    a = EnvDefaults(parser, environ)
    a.add("--ledger", "auto", "the ledger: auto (<state-dir>/ledger.db), a sqlite:/// or postgresql:// URL")
    a.add("--state-dir", DEFAULT_STATE_DIR, "the CA's state directory (ledger, ledger key and head)")
    if action == "show":
        parser.add_argument("serial", help="certificate serial number in hex (colons allowed)")
    if action in ("list", "export", "report"):
        parser.add_argument("--spiffe-id", help="only this identity (spiffe://...)")
        parser.add_argument("--namespace", help="only this namespace")
        parser.add_argument("--service-account", help="only this service account")
        parser.add_argument("--pod", help="only this pod name")
        parser.add_argument("--since", help=f"only entries at or after this time: {TIME_HELP}")
        parser.add_argument("--until", help=f"only entries before this time: {TIME_HELP}")
    if action in ("list", "export"):
        parser.add_argument("--status", choices=KINDS, help="only this kind of entry")
        parser.add_argument(
            "--valid-at", help=f"only certificates issued and not yet expired at this time: {TIME_HELP}"
        )
    if action == "list":
        parser.add_argument("--limit", default=str(DEFAULT_LIMIT), help="at most this many entries")
    if action == "export":
        parser.add_argument("--format", dest="output", choices=["jsonl", "csv"], default="jsonl")
    else:
        outputs = ["table", "json"] if action == "verify" else ["table", "json", "csv"]
        names = ["--output", "-o"]
        if action == "report":
            outputs += DOCUMENT_FORMATS
            names.append("--format")
        parser.add_argument(*names, dest="output", choices=outputs, default="table", help="output format")
    if action in ("verify", "export"):
        parser.add_argument(
            "--quiet",
            "-q",
            action="store_true",
            help="no progress on stderr (shown only when stderr is a terminal, and for export only "
            "when the entries go to a file or pipe; never with TERM=dumb)",
        )
    if action == "report":
        a.add("--max-ttl", "90d", "the policy's longest certificate lifetime (the CA's --max-ttl)")
        parser.add_argument("--at", default="now", help=f"the report's 'now': {TIME_HELP}")
        parser.add_argument("--out", help="html, markdown: write the document to this file (default stdout)")
        parser.set_defaults(in_cluster=bool(environ.get("KUBERNETES_SERVICE_HOST")))
        a.add(
            "--policies",
            None,
            "html, markdown: PeerAuthentication for the mTLS coverage section: a directory or file "
            "of manifests, or `kube` (the cluster of --kubeconfig, or the service account in a pod)",
        )
        a.add("--root-namespace", DEFAULT_ROOT_NAMESPACE, "the mesh's root namespace (mesh-wide policies)")
    if action in ("verify", "report"):
        a.add("--ledger-key", None, "the ledger key or its public key (default <state-dir>/ledger-key.pem)")
        a.add(
            "--kubeconfig",
            None,
            "also check the head the CA keeps in a ConfigMap of the cluster"
            + ("; the cluster of --policies kube" if action == "report" else ""),
        )
        a.add("--ca-namespace", "istio-system", "namespace of the CA's ledger head ConfigMap")


def _moment(text: str | None, now: datetime, flag: str) -> datetime | None:
    return None if text is None else parse_moment(text, now, flag=flag)


def audit_config(
    args: argparse.Namespace, now: datetime, environ: Mapping[str, str] | None = None
) -> AuditConfig:
    state_dir = Path(args.state_dir)
    url = ledger_url(args.ledger, state_dir)
    if url is None:
        raise ConfigError("--ledger off leaves nothing to audit; give the CA's ledger (auto or a URL)")
    try:
        audit_filter = AuditFilter(
            spiffe_id=getattr(args, "spiffe_id", None),
            namespace=getattr(args, "namespace", None),
            service_account=getattr(args, "service_account", None),
            pod=getattr(args, "pod", None),
            since=_moment(getattr(args, "since", None), now, "--since"),
            until=_moment(getattr(args, "until", None), now, "--until"),
            status=getattr(args, "status", None),
            valid_at=_moment(getattr(args, "valid_at", None), now, "--valid-at"),
        )
    except InvalidRequestError as err:
        raise ConfigError(err.message) from err
    max_ttl = parse_duration(getattr(args, "max_ttl", "90d"))
    if max_ttl <= timedelta(0):
        raise ConfigError("--max-ttl must be above 0; give the CA's --max-ttl, such as 24h or 90d")
    key = getattr(args, "ledger_key", None)
    kubeconfig = getattr(args, "kubeconfig", None)
    return AuditConfig(
        action=args.audit_action,
        ledger_url=url,
        state_dir=state_dir,
        output=args.output,
        filter=audit_filter,
        limit=parse_limit(getattr(args, "limit", str(DEFAULT_LIMIT))),
        serial=getattr(args, "serial", None),
        at=_moment(getattr(args, "at", "now"), now, "--at") or now,
        policy=IssuancePolicy(default_ttl=min(timedelta(hours=24), max_ttl), max_ttl=max_ttl),
        ledger_key=Path(key) if key else state_dir / "ledger-key.pem",
        ledger_key_given=bool(key),
        kubeconfig=Path(kubeconfig) if kubeconfig else None,
        ca_namespace=getattr(args, "ca_namespace", "istio-system"),
        out=_document_out(args),
        policies=getattr(args, "policies", None) or None,
        root_namespace=getattr(args, "root_namespace", DEFAULT_ROOT_NAMESPACE),
        in_cluster=bool(getattr(args, "in_cluster", False)),
        progress=not getattr(args, "quiet", True) and (environ or {}).get("TERM") != "dumb",
    )


def _document_out(args: argparse.Namespace) -> Path | None:
    out = getattr(args, "out", None)
    if out is not None and args.output not in DOCUMENT_FORMATS:
        raise ConfigError(
            f"--out writes a document: give it with --format html or markdown (for {args.output}, "
            "redirect the output: > FILE)"
        )
    return Path(out) if out else None
