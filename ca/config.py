"""Settings from flags and the environment, into frozen config objects.

The only module that reads `os.environ`. Every flag `--some-flag` can also be
set as `MESHCA_SOME_FLAG`; a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from ca.audit.moments import parse_moment
from ca.durations import format_duration, parse_duration
from ca.enforce.command import add_enforce_parser
from ca.errors import ConfigError, InvalidRequestError, InvalidSpiffeIdError
from ca.flags import PORTS_FILE_HELP, EnvDefaults, env_name, listen_address, split_list, trust_domain_flag
from ca.issuer import IssuancePolicy, OverMaxTtl
from ca.keys import KeyAlgorithm
from ca.kube_names import check_dns_label, check_dns_subdomain
from ca.ledger.audit_filter import DEFAULT_LIMIT, AuditFilter, parse_limit
from ca.policy.command import add_policy_parser
from ca.spiffe_id import SpiffeId

DEFAULT_STATE_DIR = "./meshca-state"
DEFAULT_DNS_NAMES = "istiod.istio-system.svc,meshca.istio-system.svc,localhost,127.0.0.1"
KUBERNETES_ISSUER = "https://kubernetes.default.svc.cluster.local"


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    listen: str
    renew_listen: str | None
    metrics_listen: str | None
    state_dir: Path
    trust_domain: str
    cacerts: Path | None
    ca_key_type: KeyAlgorithm
    ca_store: str
    ca_namespace: str
    ca_secret: str
    auth: str
    jwks: str | None
    token_issuer: str | None
    audiences: tuple[str, ...]
    kubeconfig: Path | None
    in_cluster: bool
    pod_check: bool
    issuance: IssuancePolicy
    dns_names: tuple[str, ...]
    cluster_id: str | None
    token_cache_size: int
    token_leeway: timedelta
    grpc_workers: int
    grpc_server: str
    ledger_url: str | None
    ledger_key: Path
    ledger_key_given: bool  # --ledger-key named a file (else, in a cluster, the key lives in a Secret)
    ledger_checkpoint_interval: timedelta
    ledger_retention: timedelta | None
    ledger_linger: timedelta
    admin_identities: tuple[str, ...]
    log_level: str
    ports_file: Path | None = None

    @property
    def has_cluster_access(self) -> bool:
        return self.kubeconfig is not None or self.in_cluster


@dataclass(frozen=True, kw_only=True)
class TokenConfig:
    state_dir: Path
    namespace: str
    service_account: str
    audiences: tuple[str, ...]
    ttl: timedelta
    pod_name: str | None
    pod_uid: str | None


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    ca_address: str
    ca_root: Path
    ca_server_name: str | None
    cluster_id: str | None
    token_file: Path
    output_dir: Path
    trust_domain: str
    key_type: KeyAlgorithm
    ttl: timedelta
    rotation_ratio: float
    rotation_jitter: float
    sds_socket: Path | None
    workload_api_socket: Path | None
    health_listen: str | None
    once: bool
    log_level: str
    ports_file: Path | None = None
    once_timeout: timedelta = timedelta(seconds=60)


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


_OWNING_PARSER = "_owning_parser"


class CommandParser(argparse.ArgumentParser):
    """Reports an unknown flag with the usage of the (sub)command it was given to."""

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            owner: argparse.ArgumentParser = getattr(parsed, _OWNING_PARSER, self)
            owner.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print meshca's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("meshca")
        except PackageNotFoundError:
            installed = "unknown (not installed as a package)"
        print(f"meshca {installed}")
        parser.exit()


def _remember_owners(parser: argparse.ArgumentParser) -> None:
    """Each subcommand's parser is stored in the namespace it fills, for its own error messages."""
    parser.set_defaults(**{_OWNING_PARSER: parser})
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _remember_owners(sub)


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = CommandParser(prog="meshca", description="A certificate authority for service meshes.")
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=argparse.ArgumentParser)

    serve = commands.add_parser("serve", help="run the CA service (Istio-compatible certificate API)")
    s = EnvDefaults(serve, environ)
    s.add("--listen", ":15012", "gRPC TLS address for certificate requests with a token")
    s.add(
        "--renew-listen",
        ":15013",
        "gRPC mutual-TLS address for renewal with a client certificate; 'off' to disable",
    )
    s.add("--metrics-listen", ":15014", "Prometheus metrics HTTP address; 'off' to disable")
    s.add(
        "--state-dir",
        DEFAULT_STATE_DIR,
        "directory for the CA root, trust bundle and dev token key",
    )
    s.add("--trust-domain", "cluster.local", "SPIFFE trust domain of issued identities")
    s.add("--cacerts", None, "directory with a plugged-in CA in Istio's cacerts layout")
    s.add("--ca-key-type", "ec-p256", "key type of a newly created self-signed root")
    s.add(
        "--ca-store",
        "auto",
        "where a self-signed root is kept: auto, dir or secret",
        choices=["auto", "dir", "secret"],
    )
    s.add("--ca-namespace", "istio-system", "namespace of the CA Secret")
    s.add("--ca-secret", "istio-ca-secret", "name of the Secret that keeps the self-signed root")
    s.add(
        "--auth",
        "jwt",
        "token authentication: jwt (local validation) or tokenreview",
        choices=["jwt", "tokenreview"],
    )
    s.add("--jwks", None, "JWKS file or URL with the token issuer's keys")
    s.add(
        "--token-issuer",
        None,
        "expected token issuer (iss); with no --jwks, its OIDC discovery gives the keys",
    )
    s.add(
        "--audience",
        None,
        "accepted token audience; repeatable or comma-separated (default istio-ca)",
        action="append",
    )
    s.add("--kubeconfig", None, "kubeconfig for cluster access (in a pod the service account is used)")
    s.add(
        "--pod-check",
        "on",
        "refuse tokens whose bound pod no longer exists (needs cluster access)",
        choices=["on", "off"],
    )
    s.add("--default-ttl", "24h", "certificate lifetime when the request asks for none")
    s.add("--max-ttl", "90d", "longest certificate lifetime a request may ask for")
    s.add(
        "--ttl-over-max",
        "reject",
        "what to do with a request over --max-ttl",
        choices=["reject", "clamp"],
    )
    s.add(
        "--strict-csr-names",
        "off",
        "refuse CSRs that ask for another identity",
        choices=["on", "off"],
    )
    s.add("--dns-names", DEFAULT_DNS_NAMES, "DNS names and IPs in the CA server's own certificate")
    s.add("--cluster-id", "Kubernetes", "cluster id this CA serves; requests for another are refused")
    s.add("--token-cache-size", "10000", "verified tokens kept to skip re-verification; 0 disables")
    s.add(
        "--token-leeway",
        "30s",
        "clock skew allowed on a token's expiry and not-before times (0 to 5m); when it decides, the "
        "ledger records it",
    )
    s.add(
        "--grpc-server",
        "asyncio",
        "gRPC server: asyncio (runs each request on the event loop) or threaded",
        choices=["asyncio", "threaded"],
    )
    s.add("--grpc-workers", "16", "gRPC worker threads (threaded server)")
    s.add(
        "--ledger",
        "auto",
        "issuance ledger: auto (SQLite in the state dir), a sqlite:/// or postgresql:// URL, or off",
    )
    s.add(
        "--ledger-key", None, "Ed25519 key that signs ledger checkpoints (default <state-dir>/ledger-key.pem)"
    )
    s.add("--ledger-checkpoint-interval", "5s", "how often the ledger head is signed and published")
    s.add("--ledger-retention", "0", "keep expired records this long, then compact them (0 keeps everything)")
    s.add(
        "--ledger-linger",
        "10ms",
        "while busy, how long a ledger commit waits to be shared by more certificates "
        "(more throughput for that much latency; 0 commits each batch at once)",
    )
    s.add(
        "--admin-identity",
        None,
        "SPIFFE ID allowed to call the ledger admin gRPC service; repeatable or comma-separated "
        "(default none: the service refuses every caller)",
        action="append",
    )
    s.add("--log-level", "info", "log level", choices=["debug", "info", "warning", "error"])
    s.add("--ports-file", None, PORTS_FILE_HELP)

    agent = commands.add_parser("agent", help="run the workload agent beside a sidecar")
    a = EnvDefaults(agent, environ)
    a.add("--ca-addr", "localhost:15012", "address of the meshca CA service")
    a.add("--ca-root", "./meshca-state/root-cert.pem", "root certificate(s) to trust the CA's TLS with")
    a.add("--ca-server-name", None, "TLS server name to expect from the CA, if not the address's host")
    a.add("--cluster-id", None, "cluster id sent to the CA")
    a.add(
        "--token-file",
        "/var/run/secrets/tokens/istio-token",
        "projected service-account token, re-read on each request",
    )
    a.add("--output-dir", "./meshca-certs", "where cert-chain.pem, key.pem and root-cert.pem are written")
    a.add("--trust-domain", "cluster.local", "trust domain the certificate must belong to")
    a.add(
        "--key-type", "ec-p256", "workload key type", choices=["ec-p256", "ec-p384", "rsa-2048", "rsa-3072"]
    )
    a.add("--ttl", "24h", "requested certificate lifetime")
    a.add("--rotation-ratio", "0.5", "renew after this fraction of the remaining lifetime")
    a.add("--rotation-jitter", "0.01", "random spread of the renewal time, as a fraction of the lifetime")
    a.add(
        "--sds-socket",
        "/var/run/secrets/workload-spiffe-uds/socket",
        "Envoy SDS Unix socket; 'off' to disable",
    )
    a.add(
        "--workload-api-socket",
        "/var/run/secrets/meshca/workload-api.sock",
        "SPIFFE Workload API Unix socket; 'off' to disable",
    )
    a.add(
        "--health-listen", "127.0.0.1:15021", "HTTP address for /healthz/ready and /metrics; 'off' to disable"
    )
    a.add("--once", "off", "write the files once and exit (init containers)", choices=["on", "off"])
    a.add(
        "--once-timeout",
        "60s",
        "with --once on: how long to retry while the CA cannot be reached (0: one attempt)",
    )
    a.add("--log-level", "info", "log level", choices=["debug", "info", "warning", "error"])
    a.add("--ports-file", None, PORTS_FILE_HELP)

    token = commands.add_parser("token", help="mint a development service-account token (no cluster)")
    t = EnvDefaults(token, environ)
    t.add("--state-dir", DEFAULT_STATE_DIR, "state directory shared with 'meshca serve'")
    t.add(
        "--namespace",
        None,
        "service account namespace",
        required=environ.get(env_name("--namespace")) is None,
    )
    t.add(
        "--service-account",
        None,
        "service account name",
        required=environ.get(env_name("--service-account")) is None,
    )
    t.add("--audience", None, "token audience; repeatable (default istio-ca)", action="append")
    t.add("--ttl", "12h", "token lifetime")
    t.add("--pod-name", None, "bind the token to this pod name")
    t.add("--pod-uid", None, "bind the token to this pod uid")

    audit = commands.add_parser("audit", help="list, show, export, report on and verify the issuance ledger")
    actions = audit.add_subparsers(dest="audit_action", required=True)
    for action, help_text in AUDIT_ACTIONS.items():
        _audit_flags(actions.add_parser(action, help=help_text, description=help_text), action, environ)
    add_policy_parser(commands, environ)
    add_enforce_parser(commands, environ)
    _remember_owners(parser)
    return parser


AUDIT_ACTIONS = {
    "list": "the newest ledger entries that match the filters, newest first",
    "show": "every ledger entry for one certificate serial number",
    "export": "every entry that matches the filters, oldest first, as JSON lines or CSV",
    "report": "issuance per namespace and identity, refusals by reason, and live certificates "
    "that break the policy",
    "verify": "check the whole ledger: hash chain, signed checkpoints and the head kept outside",
}
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
        parser.add_argument("--status", choices=["issued", "refused", "ca_event"], help="only this kind")
        parser.add_argument(
            "--valid-at", help=f"only certificates issued and not yet expired at this time: {TIME_HELP}"
        )
    if action == "list":
        parser.add_argument("--limit", default=str(DEFAULT_LIMIT), help="at most this many entries")
    if action == "export":
        parser.add_argument("--format", dest="output", choices=["jsonl", "csv"], default="jsonl")
    else:
        outputs = ["table", "json"] if action == "verify" else ["table", "json", "csv"]
        parser.add_argument("--output", "-o", choices=outputs, default="table", help="output format")
    if action == "report":
        a.add("--max-ttl", "90d", "the policy's longest certificate lifetime (the CA's --max-ttl)")
        parser.add_argument("--at", default="now", help=f"the report's 'now': {TIME_HELP}")
    if action == "verify":
        a.add("--ledger-key", None, "the ledger key or its public key (default <state-dir>/ledger-key.pem)")
        a.add("--kubeconfig", None, "also check the head the CA keeps in a ConfigMap of the cluster")
        a.add("--ca-namespace", "istio-system", "namespace of the CA's ledger head ConfigMap")


MAX_TOKEN_LEEWAY = timedelta(minutes=5)


def _token_leeway(text: str) -> timedelta:
    allowed = f"0 to {format_duration(MAX_TOKEN_LEEWAY)}, such as 30s"
    try:
        leeway = parse_duration(text)
    except ConfigError:
        raise ConfigError(f"--token-leeway {text!r} is not a duration from {allowed}") from None
    if leeway > MAX_TOKEN_LEEWAY:
        raise ConfigError(
            f"--token-leeway {text} is too long: it allows for clock skew, so give {allowed} "
            "(and fix the clocks if they are further apart)"
        )
    return leeway


def _ledger_linger(text: str) -> timedelta:
    linger = parse_duration(text)
    if linger > timedelta(seconds=1):
        raise ConfigError(f"--ledger-linger {text} is longer than 1s; every busy issuance waits that long")
    return linger


def ledger_url(text: str, state_dir: Path) -> str | None:
    text = text.strip()
    if text in ("off", "none", ""):
        return None
    if text == "auto":
        return f"sqlite:///{state_dir.resolve() / 'ledger.db'}"
    if not text.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
        raise ConfigError(f"--ledger {text!r} is not auto, off, a sqlite:/// URL or a postgresql:// URL")
    return text


def _audiences(args: argparse.Namespace) -> tuple[str, ...]:
    return split_list(args.audience or [args.audience_env or "istio-ca"])


def _check_cluster_needs(args: argparse.Namespace, *, has_cluster: bool) -> None:
    if has_cluster:
        return
    if args.auth == "tokenreview":
        raise ConfigError("--auth tokenreview needs cluster access; give --kubeconfig or run in a pod")
    if args.ca_store == "secret":
        raise ConfigError("--ca-store secret needs cluster access; give --kubeconfig or run in a pod")


def _positive_int(text: str, flag: str) -> int:
    if not text.strip().isdigit():
        raise ConfigError(f"{flag} must be a whole number, not {text!r}")
    return int(text)


def serve_config(args: argparse.Namespace, environ: Mapping[str, str]) -> ServeConfig:
    listen = listen_address(args.listen)
    if listen is None:
        raise ConfigError("--listen cannot be off: it is the certificate API")
    _check_cluster_needs(args, has_cluster=bool(args.kubeconfig or environ.get("KUBERNETES_SERVICE_HOST")))
    workers = _positive_int(args.grpc_workers, "--grpc-workers")
    if workers < 1:
        raise ConfigError("--grpc-workers must be at least 1")
    return ServeConfig(
        listen=listen,
        renew_listen=listen_address(args.renew_listen),
        metrics_listen=listen_address(args.metrics_listen),
        state_dir=Path(args.state_dir),
        trust_domain=trust_domain_flag(args.trust_domain),
        cacerts=Path(args.cacerts) if args.cacerts else None,
        ca_key_type=KeyAlgorithm.parse(args.ca_key_type),
        ca_store=args.ca_store,
        ca_namespace=args.ca_namespace,
        ca_secret=args.ca_secret,
        auth=args.auth,
        jwks=args.jwks,
        token_issuer=args.token_issuer,
        audiences=_audiences(args),
        kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
        in_cluster=bool(environ.get("KUBERNETES_SERVICE_HOST")),
        pod_check=args.pod_check == "on",
        issuance=IssuancePolicy(
            default_ttl=parse_duration(args.default_ttl),
            max_ttl=parse_duration(args.max_ttl),
            over_max=OverMaxTtl(args.ttl_over_max),
            strict_csr_names=args.strict_csr_names == "on",
        ),
        dns_names=split_list([args.dns_names]),
        cluster_id=args.cluster_id or None,
        token_cache_size=_positive_int(args.token_cache_size, "--token-cache-size"),
        token_leeway=_token_leeway(args.token_leeway),
        grpc_workers=workers,
        grpc_server=args.grpc_server,
        ledger_url=ledger_url(args.ledger, Path(args.state_dir)),
        ledger_key=Path(args.ledger_key) if args.ledger_key else Path(args.state_dir) / "ledger-key.pem",
        ledger_key_given=bool(args.ledger_key),
        ledger_checkpoint_interval=parse_duration(args.ledger_checkpoint_interval),
        ledger_retention=parse_duration(args.ledger_retention) or None,
        ledger_linger=_ledger_linger(args.ledger_linger),
        admin_identities=_admin_identities(args, trust_domain_flag(args.trust_domain)),
        log_level=args.log_level,
        ports_file=_path_or_off(args.ports_file),
    )


def _admin_identities(args: argparse.Namespace, trust_domain: str) -> tuple[str, ...]:
    identities = split_list(args.admin_identity or [args.admin_identity_env or ""])
    for text in identities:
        try:
            spiffe_id = SpiffeId.parse(text)
        except InvalidSpiffeIdError as err:
            raise ConfigError(f"--admin-identity: {err}") from err
        if not spiffe_id.is_member_of(trust_domain):
            raise ConfigError(
                f"--admin-identity {text} is not in trust domain {trust_domain}; callers authenticate "
                f"only as identities of {trust_domain}, so name one of those"
            )
    return identities


def _path_or_off(text: str | None) -> Path | None:
    return None if text is None or text.strip() in ("", "off", "none") else Path(text)


def _fraction(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{flag} must be a number such as 0.5, not {text!r}") from None


def agent_config(args: argparse.Namespace) -> AgentConfig:
    return AgentConfig(
        ca_address=args.ca_addr,
        ca_root=Path(args.ca_root),
        ca_server_name=args.ca_server_name or None,
        cluster_id=args.cluster_id or None,
        token_file=Path(args.token_file),
        output_dir=Path(args.output_dir),
        trust_domain=trust_domain_flag(args.trust_domain),
        key_type=KeyAlgorithm.parse(args.key_type),
        ttl=parse_duration(args.ttl),
        rotation_ratio=_fraction(args.rotation_ratio, "--rotation-ratio"),
        rotation_jitter=_fraction(args.rotation_jitter, "--rotation-jitter"),
        sds_socket=_path_or_off(args.sds_socket),
        workload_api_socket=_path_or_off(args.workload_api_socket),
        health_listen=listen_address(args.health_listen),
        once=args.once == "on",
        once_timeout=parse_duration(args.once_timeout),
        log_level=args.log_level,
        ports_file=_path_or_off(args.ports_file),
    )


def token_config(args: argparse.Namespace) -> TokenConfig:
    if bool(args.pod_name) != bool(args.pod_uid):
        raise ConfigError("give both --pod-name and --pod-uid to bind a token to a pod, or neither")
    try:
        check_dns_label(args.namespace, "--namespace")
        check_dns_subdomain(args.service_account, "--service-account")
        if args.pod_name:
            check_dns_subdomain(args.pod_name, "--pod-name")
    except InvalidRequestError as err:
        raise ConfigError(err.message) from err
    return TokenConfig(
        state_dir=Path(args.state_dir),
        namespace=args.namespace,
        service_account=args.service_account,
        audiences=_audiences(args),
        ttl=parse_duration(args.ttl),
        pod_name=args.pod_name,
        pod_uid=args.pod_uid,
    )


def _moment(text: str | None, now: datetime, flag: str) -> datetime | None:
    return None if text is None else parse_moment(text, now, flag=flag)


def audit_config(args: argparse.Namespace, now: datetime) -> AuditConfig:
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
    )


def environment() -> Mapping[str, str]:
    return os.environ
