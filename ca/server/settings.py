"""`meshca serve` and `meshca token`: their flags and frozen settings."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from ca.common.admin_endpoint import add_admin_flags
from ca.common.durations import format_duration, parse_duration
from ca.common.flags import (
    DEFAULT_STATE_DIR,
    PORTS_FILE_HELP,
    EnvDefaults,
    Subcommands,
    audiences,
    env_name,
    listen_address,
    path_or_off,
    positive_int,
    split_list,
    whole_number,
)
from ca.errors import CaMaterialError, ConfigError, InvalidRequestError, InvalidSpiffeIdError
from ca.inject.settings import InjectSettings
from ca.issuance.crl import CRL_BACKDATE, CRL_VALIDITY, MIN_CRL_VALIDITY
from ca.issuance.issuer import IssuancePolicy, OverMaxTtl
from ca.issuance.keys import KeyAlgorithm
from ca.issuance.kube_names import check_dns_label, check_dns_subdomain
from ca.issuance.slots import RotationPolicy
from ca.issuance.spiffe_id import SpiffeId, trust_domain_flag
from ca.kube.election import ElectionTimings
from ca.kube.names import WEBHOOK_CONFIGURATION as DEFAULT_WEBHOOK_CONFIGURATION
from ca.ledger.location import ledger_url

DEFAULT_LEADER_LEASE = "meshca-leader"
DEFAULT_DNS_NAMES = "istiod.istio-system.svc,meshca.istio-system.svc,localhost,127.0.0.1"
DEFAULT_WEBHOOK_DNS_NAMES = "meshca.istio-system.svc"  # deploy/'s Service, which the API server calls

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
    bundle_listen: str | None = None  # the SPIFFE bundle endpoint (HTTPS); None: not served
    leader_lease: str = DEFAULT_LEADER_LEASE  # the Lease in ca_namespace that elects the leader
    leader_timings: ElectionTimings = field(default_factory=ElectionTimings)
    replica: str = ""  # this replica's name in the election and the logs (hostname_pid)
    ca_rotation: RotationPolicy = field(default_factory=RotationPolicy)
    webhook_listen: str | None = None  # the sidecar injection webhook (HTTPS); None: not served
    webhook_dns_names: tuple[str, ...] = (DEFAULT_WEBHOOK_DNS_NAMES,)  # in the webhook's certificate
    webhook_configuration: str | None = DEFAULT_WEBHOOK_CONFIGURATION  # caBundle kept; None: not
    inject: InjectSettings = field(default_factory=InjectSettings)  # what the webhook injects
    processes: int = 1  # --processes: over 1, a supervisor of that many workers (ca.server.processes)
    shares_port: bool = False  # a worker of --processes N: its gRPC ports are shared (SO_REUSEPORT)
    crl_validity: timedelta = CRL_VALIDITY  # nextUpdate - thisUpdate of the CA's CRLs

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


def add_serve_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
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
    s.add(
        "--ca-signing-ttl", "60d", "lifetime of each self-signed mode signing CA (rotated at half its life)"
    )
    s.add("--ca-root-ttl", "3650d", "lifetime of each self-signed root (rotated at 80%% of its life)")
    s.add(
        "--ca-ack-share",
        "1.0",
        "share of connected agents that must hold a new root before it signs (0 < share <= 1)",
    )
    s.add("--ca-ack-wait", "24h", "activate a prepared root after this long even without every agent")
    s.add("--ca-root-publish", "5m", "a new root is in the trust bundle at least this long before it signs")
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
        "--processes",
        "1",
        "worker processes serving one port (SO_REUSEPORT) on one state dir and one ledger, under a "
        "supervisor that restarts them; each has its own metrics port (--metrics-listen's port + "
        "its number, or a free one for port 0)",
    )
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
        "while busy and short of CPU (the server's event loop busy 90%% of the time for half a "
        "second), how long a ledger commit waits to be shared by more certificates (more "
        "throughput for that much latency; with CPU to spare it never waits; 0 commits each "
        "batch at once)",
    )
    s.add(
        "--crl-validity",
        "24h",
        "how long each CRL the CA signs is valid (nextUpdate); it signs the next at half of it. An "
        "agent cut off from the CA keeps its CRL, and once it expires Envoy refuses every peer: "
        f"longer rides out a longer CA outage ({format_duration(MIN_CRL_VALIDITY)} or more)",
    )
    s.add(
        "--admin-identity",
        None,
        "SPIFFE ID allowed to call the ledger admin gRPC service; repeatable or comma-separated "
        "(default none: the service refuses every caller)",
        action="append",
    )
    s.add(
        "--bundle-listen",
        "off",
        "HTTPS address of the SPIFFE bundle endpoint, this trust domain's roots for federation "
        "(served by every replica); 'off' to disable",
    )
    s.add(
        "--leader-lease",
        DEFAULT_LEADER_LEASE,
        "Lease in --ca-namespace that elects the one replica doing singleton work (bundle "
        "publishing, ledger checkpoints and compaction); used with cluster access",
    )
    s.add("--leader-lease-duration", "15s", "how long a leader's lease lasts without renewal (whole seconds)")
    s.add("--leader-renew-deadline", "10s", "a leader that cannot renew for this long stops leading")
    s.add("--leader-retry-period", "2s", "how often each replica tries to acquire or renew the lease")
    s.add(
        "--webhook-listen",
        "off",
        "HTTPS address of the sidecar injection webhook (POST /inject, AdmissionReview v1; served by "
        "every replica); 'off' to disable",
    )
    s.add(
        "--webhook-dns-names",
        DEFAULT_WEBHOOK_DNS_NAMES,
        "DNS names and IPs in the injection webhook's certificate (the Service the API server calls)",
    )
    s.add(
        "--webhook-configuration",
        DEFAULT_WEBHOOK_CONFIGURATION,
        "MutatingWebhookConfiguration whose caBundle the leader keeps equal to the trust bundle (with "
        "--webhook-listen and cluster access); 'off' to leave it alone",
    )
    inject = InjectSettings()
    s.add("--inject-image", inject.image, "the meshca image the injection webhook puts in pods")
    s.add("--inject-ca-addr", inject.ca_address, "the CA address injected agents call")
    s.add("--log-level", "info", "log level", choices=["debug", "info", "warning", "error"])
    s.add("--ports-file", None, PORTS_FILE_HELP)


CA_ACTIONS = ("prepare", "activate", "retire", "now")
CA_THROUGH_FILES = (
    "without it, through the leading `meshca serve` on --state-dir (in a cluster, where each "
    "replica has its own state directory, give --ca-addr)"
)


def add_ca_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    ca = commands.add_parser(
        "ca",
        help="the CA's own signing slots: status and rotation",
        description="Show and move the CA's signing slots (prepared -> active -> retiring -> retired).",
    )
    actions = ca.add_subparsers(dest="ca_action", required=True)
    status = actions.add_parser(
        "status", help="slots, trust bundle, agents' acknowledgements, next transition"
    )
    EnvDefaults(status, environ).add("--state-dir", DEFAULT_STATE_DIR, "the CA's state directory")
    add_admin_flags(status, environ, without=CA_THROUGH_FILES)
    status.add_argument("--format", choices=["text", "json"], default="text")
    rotate = actions.add_parser(
        "rotate",
        help="a manual transition; refused with the reason when unsafe, unless --force",
        description="--prepare makes the next slot (a signing CA under the current root, or with "
        "--new-root a new root too) and publishes its root; --activate makes the prepared slot sign "
        "(once agents hold its root); --retire removes a retiring slot whose leaves have expired; "
        "--now does prepare and activate, then orders every workload to re-issue.",
    )
    EnvDefaults(rotate, environ).add("--state-dir", DEFAULT_STATE_DIR, "the CA's state directory")
    add_admin_flags(rotate, environ, without=CA_THROUGH_FILES)
    which = rotate.add_mutually_exclusive_group(required=True)
    for action in CA_ACTIONS:
        which.add_argument(f"--{action}", dest="transition", action="store_const", const=action)
    rotate.add_argument("--new-root", action="store_true", help="with --prepare or --now: a new root as well")
    rotate.add_argument("--force", action="store_true", help="make the transition even when it is unsafe")
    rotate.add_argument("--dry-run", action="store_true", help="say what would happen; change nothing")
    rotate.add_argument(
        "--wait", default="60s", help="how long to wait for the CA (and, for --now, the agents)"
    )


def add_token_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
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


def _crl_validity(text: str) -> timedelta:
    try:
        validity = parse_duration(text)
    except ConfigError as err:
        raise ConfigError(f"--crl-validity: {err.message}") from None
    if validity <= timedelta(0):
        raise ConfigError(
            f"--crl-validity {text} is not positive; give how long each CRL is valid, such as 24h"
        )
    if validity < MIN_CRL_VALIDITY:
        raise ConfigError(
            f"--crl-validity {text} is too short: the CA signs the next CRL when half of it has passed "
            f"since thisUpdate (set {format_duration(CRL_BACKDATE)} back for clock skew), and an agent "
            "reconnecting after a CA restart needs up to a minute to get it; give "
            f"{format_duration(MIN_CRL_VALIDITY)} or more (default 24h)"
        )
    return validity


def _check_cluster_needs(args: argparse.Namespace, *, has_cluster: bool) -> None:
    if has_cluster:
        return
    if args.auth == "tokenreview":
        raise ConfigError("--auth tokenreview needs cluster access; give --kubeconfig or run in a pod")
    if args.ca_store == "secret":
        raise ConfigError("--ca-store secret needs cluster access; give --kubeconfig or run in a pod")


def serve_config(args: argparse.Namespace, environ: Mapping[str, str]) -> ServeConfig:
    listen = listen_address(args.listen)
    if listen is None:
        raise ConfigError("--listen cannot be off: it is the certificate API")
    _check_cluster_needs(args, has_cluster=bool(args.kubeconfig or environ.get("KUBERNETES_SERVICE_HOST")))
    workers = positive_int(args.grpc_workers, "--grpc-workers")
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
        audiences=audiences(args),
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
        token_cache_size=positive_int(args.token_cache_size, "--token-cache-size"),
        token_leeway=_token_leeway(args.token_leeway),
        grpc_workers=workers,
        grpc_server=args.grpc_server,
        ledger_url=ledger_url(args.ledger, Path(args.state_dir)),
        ledger_key=Path(args.ledger_key) if args.ledger_key else Path(args.state_dir) / "ledger-key.pem",
        ledger_key_given=bool(args.ledger_key),
        ledger_checkpoint_interval=parse_duration(args.ledger_checkpoint_interval),
        ledger_retention=parse_duration(args.ledger_retention) or None,
        ledger_linger=_ledger_linger(args.ledger_linger),
        crl_validity=_crl_validity(args.crl_validity),
        admin_identities=_admin_identities(args, trust_domain_flag(args.trust_domain)),
        log_level=args.log_level,
        ports_file=path_or_off(args.ports_file),
        bundle_listen=listen_address(args.bundle_listen),
        leader_lease=_leader_lease(args.leader_lease),
        leader_timings=_leader_timings(args),
        replica=replica_identity(),
        ca_rotation=_ca_rotation(args),
        webhook_listen=listen_address(args.webhook_listen),
        webhook_dns_names=_webhook_dns_names(args.webhook_dns_names),
        webhook_configuration=_webhook_configuration(args.webhook_configuration),
        inject=InjectSettings(
            image=args.inject_image,
            ca_address=args.inject_ca_addr,
            trust_domain=trust_domain_flag(args.trust_domain),
        ),
        processes=_processes(args.processes, listen_address(args.metrics_listen)),
    )


MAX_PROCESSES = 64


def _processes(text: str, metrics_listen: str | None) -> int:
    """--processes; with a fixed metrics port P, worker k listens on P + k, so the last must fit."""
    count = whole_number(text, "--processes", minimum=1, maximum=MAX_PROCESSES)
    if metrics_listen is not None:
        port = int(metrics_listen.rpartition(":")[2])
        if port != 0 and port + count - 1 > 65535:
            raise ConfigError(
                f"--processes {count} with --metrics-listen port {port}: worker k serves its metrics "
                f"on port {port} + k, past 65535 for the last; give a lower port, or port 0"
            )
    return count


def _webhook_dns_names(text: str) -> tuple[str, ...]:
    names = split_list([text])
    if not names:
        raise ConfigError(
            "--webhook-dns-names is empty; give the name the API server calls the webhook by, such as "
            f"{DEFAULT_WEBHOOK_DNS_NAMES}"
        )
    return names


def _webhook_configuration(name: str) -> str | None:
    if name.strip().lower() in ("", "off"):
        return None
    try:
        return check_dns_subdomain(name, "--webhook-configuration")
    except InvalidRequestError as err:
        raise ConfigError(err.message) from err


def _ca_rotation(args: argparse.Namespace) -> RotationPolicy:
    try:
        share = float(args.ca_ack_share)
    except ValueError as err:
        raise ConfigError(
            f"--ca-ack-share {args.ca_ack_share!r} is not a number; give e.g. 1.0 or 0.95"
        ) from err
    max_ttl = parse_duration(args.max_ttl)
    signing_ttl, root_ttl = parse_duration(args.ca_signing_ttl), parse_duration(args.ca_root_ttl)
    if root_ttl <= 2 * signing_ttl:
        raise ConfigError(
            f"--ca-root-ttl ({args.ca_root_ttl}) must be more than twice "
            f"--ca-signing-ttl ({args.ca_signing_ttl}): a root outlives several signing CAs"
        )
    try:
        return RotationPolicy(
            signing_ttl=signing_ttl,
            root_ttl=root_ttl,
            ack_share=share,
            max_ack_wait=parse_duration(args.ca_ack_wait),
            min_root_publish=parse_duration(args.ca_root_publish),
            max_leaf_ttl=max_ttl,
        )
    except CaMaterialError as err:
        raise ConfigError(f"--ca-ack-share: {err}") from err


def replica_identity() -> str:
    """This replica's name: the host's (in a pod, the pod's name) and the process id, so that two
    processes on one host, or a restarted one, are told apart."""
    return f"{socket.gethostname()}_{os.getpid()}"


def _leader_lease(name: str) -> str:
    try:
        return check_dns_subdomain(name, "--leader-lease")
    except InvalidRequestError as err:
        raise ConfigError(err.message) from err


def _leader_timings(args: argparse.Namespace) -> ElectionTimings:
    duration = parse_duration(args.leader_lease_duration)
    seconds = duration.total_seconds()
    if seconds != int(seconds) or seconds < 1:
        raise ConfigError(
            f"--leader-lease-duration {args.leader_lease_duration} must be a whole number of seconds "
            "(the Lease stores seconds), such as 15s"
        )
    try:
        return ElectionTimings(
            lease_duration_s=int(seconds),
            renew_deadline_s=parse_duration(args.leader_renew_deadline).total_seconds(),
            retry_period_s=parse_duration(args.leader_retry_period).total_seconds(),
        )
    except ConfigError as err:
        raise ConfigError(
            f"--leader-lease-duration, --leader-renew-deadline, --leader-retry-period: {err.message}"
        ) from err


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
        audiences=audiences(args),
        ttl=parse_duration(args.ttl),
        pod_name=args.pod_name,
        pod_uid=args.pod_uid,
    )
