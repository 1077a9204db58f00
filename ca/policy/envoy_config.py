"""Envoy configuration that enforces a workload's PeerAuthentication: pure rendering, no I/O.

One inbound listener per `--inbound` port, the mode decided for its application
port (a `Decision` from `ca.policy.resolve`):

- STRICT: the TLS inspector tells TLS from plaintext; the only filter chain
  matches `transport_protocol: tls` and terminates mutual TLS (certificate from
  SDS `default`, trust from SDS `ROOTCA`, client certificate required, URI SAN
  starting `spiffe://<trust-domain>/`). Plaintext matches no chain and is closed
  (counted as the listener's `no_filter_chain_match`).
- PERMISSIVE: the same mTLS chain plus a `raw_buffer` chain for plaintext.
- DISABLE: everything passes. TCP ports need no inspection: one chain forwards
  the bytes. HTTP ports still tell TLS (passed through untouched) from plaintext
  HTTP, whose caller-supplied x-forwarded-client-cert must be removed.

HTTP ports run the HTTP connection manager: on mTLS chains SANITIZE_SET replaces
any x-forwarded-client-cert with `By=<own ID>;Hash=<peer cert hash>;URI=<peer
ID>`; on plaintext chains SANITIZE removes it. TCP ports run tcp_proxy, which on
mTLS chains connects to the application only after the client's certificate
passed (a refused client never reaches it); for `--proxy-protocol` application
ports the upstream connection starts with a PROXY protocol v2 header, and on
mTLS chains that header carries the peer's SPIFFE ID in a TLV of type
`SPIFFE_ID_TLV_TYPE`.

Stats per chain: each chain's filter has stat prefix `inbound_<listen port>_<chain>`
(`http.<prefix>.*` or `tcp.<prefix>.*`), with chain one of mtls, plaintext,
passthrough; listener stats are under `listener.inbound_<listen port>.*`
(refused plaintext: `no_filter_chain_match`; refused certificates: `ssl.*`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ca.policy.model import Decision, MtlsMode
from ca.policy.ports import SPIFFE_ID_TLV_TYPE, InboundPort

Json = dict[str, Any]
Chain = Literal["mtls", "plaintext", "passthrough"]

SDS_CLUSTER = "sds-grpc"
CERT_SECRET = "default"
ROOT_SECRET = "ROOTCA"
TYPES = "type.googleapis.com/envoy."
LISTENER_TYPE = TYPES + "config.listener.v3.Listener"
SECRET_TYPE = TYPES + "extensions.transport_sockets.tls.v3.Secret"
TLS_TYPE = TYPES + "extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TLS_INSPECTOR_TYPE = TYPES + "extensions.filters.listener.tls_inspector.v3.TlsInspector"
HCM_TYPE = TYPES + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = TYPES + "extensions.filters.http.router.v3.Router"
TCP_PROXY_TYPE = TYPES + "extensions.filters.network.tcp_proxy.v3.TcpProxy"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_OPTIONS_TYPE = TYPES + "extensions.upstreams.http.v3.HttpProtocolOptions"
PROXY_PROTOCOL_TYPE = TYPES + "extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport"
RAW_BUFFER_TYPE = TYPES + "extensions.transport_sockets.raw_buffer.v3.RawBuffer"
PEER_URI_SAN = "%DOWNSTREAM_PEER_URI_SAN%"


@dataclass(frozen=True, kw_only=True)
class SdsSecrets:
    """Certificate and trust over SDS from the agent's Unix socket (rotation is pushed)."""

    socket: Path


@dataclass(frozen=True, kw_only=True)
class FileSecrets:
    """Certificate and trust from the agent's output directory, through file-based SDS.

    Envoy reads `secrets_dir/<name>.yaml` (rendered by `render_file_secrets`) and
    reloads the certificate files when the agent swaps its `..data` link in `cert_dir`.
    """

    cert_dir: Path
    secrets_dir: Path


Secrets = SdsSecrets | FileSecrets


@dataclass(frozen=True, kw_only=True)
class InboundWorkload:
    """What the rendering needs to know about one workload's data plane."""

    node_id: str
    cluster: str
    inbound: tuple[InboundPort, ...]
    listen_host: str
    app_host: str
    trust_domain: str
    secrets: Secrets
    proxy_protocol_ports: frozenset[int] = frozenset()

    @property
    def app_ports(self) -> tuple[int, ...]:
        return tuple(sorted({port.app_port for port in self.inbound}))


# --------------------------------------------------------------------------- secrets


def _secret_source(workload: InboundWorkload, name: str) -> Json:
    if isinstance(workload.secrets, SdsSecrets):
        source: Json = {
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}],
            }
        }
    else:
        source = {"path_config_source": {"path": str(secret_file(workload.secrets, name))}}
    return {"name": name, "sds_config": {"resource_api_version": "V3", **source}}


def secret_file(secrets: FileSecrets, name: str) -> Path:
    return secrets.secrets_dir / f"{name}.yaml"


def render_file_secrets(secrets: FileSecrets) -> dict[Path, Json]:
    """The file-based SDS resources: path -> DiscoveryResponse holding one Secret."""
    cert_dir = str(secrets.cert_dir)
    watched = {"watched_directory": {"path": cert_dir}}
    default = {
        "name": CERT_SECRET,
        "tls_certificate": {
            "certificate_chain": {"filename": str(secrets.cert_dir / "cert-chain.pem")},
            "private_key": {"filename": str(secrets.cert_dir / "key.pem")},
            **watched,
        },
    }
    root = {
        "name": ROOT_SECRET,
        "validation_context": {
            "trusted_ca": {"filename": str(secrets.cert_dir / "root-cert.pem")},
            **watched,
        },
    }
    return {
        secret_file(secrets, CERT_SECRET): discovery_response([default], SECRET_TYPE),
        secret_file(secrets, ROOT_SECRET): discovery_response([root], SECRET_TYPE),
    }


def _downstream_tls(workload: InboundWorkload, port: InboundPort) -> Json:
    """Mutual TLS: a client certificate chaining to ROOTCA with a SPIFFE ID of the trust domain.

    The trailing slash of the prefix keeps out look-alike trust domains such as
    `spiffe://cluster.local.evil/...`.
    """
    common: Json = {
        "tls_certificate_sds_secret_configs": [_secret_source(workload, CERT_SECRET)],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"prefix": f"spiffe://{workload.trust_domain}/"}}
                ]
            },
            "validation_context_sds_secret_config": _secret_source(workload, ROOT_SECRET),
        },
    }
    if port.protocol == "http":
        common["alpn_protocols"] = ["h2", "http/1.1"]
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": TLS_TYPE, "require_client_certificate": True, "common_tls_context": common},
    }


# --------------------------------------------------------------------------- filters


def app_cluster_name(app_port: int) -> str:
    return f"app_{app_port}"


def chain_stat_prefix(port: InboundPort, chain: Chain) -> str:
    return f"{listener_name(port)}_{chain}"


def listener_name(port: InboundPort) -> str:
    """`inbound_<listen port>`; a listener on any free port (listen port 0) is named after its
    application port instead: `inbound_app<app port>`."""
    return f"inbound_{port.listen_port}" if port.listen_port else f"inbound_app{port.app_port}"


def _http_filters(port: InboundPort, chain: Chain) -> list[Json]:
    prefix = chain_stat_prefix(port, chain)
    xfcc: Json = (
        {"forward_client_cert_details": "SANITIZE_SET", "set_current_client_cert_details": {"uri": True}}
        if chain == "mtls"
        else {"forward_client_cert_details": "SANITIZE"}
    )
    route = {"match": {"prefix": "/"}, "route": {"cluster": app_cluster_name(port.app_port), "timeout": "0s"}}
    return [
        {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM_TYPE,
                "stat_prefix": prefix,
                "codec_type": "AUTO",
                "route_config": {
                    "name": prefix,
                    "virtual_hosts": [{"name": prefix, "domains": ["*"], "routes": [route]}],
                },
                "http_filters": [
                    {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
                ],
                **xfcc,
            },
        }
    ]


def _tcp_filters(workload: InboundWorkload, port: InboundPort, chain: Chain) -> list[Json]:
    proxy: Json = {
        "@type": TCP_PROXY_TYPE,
        "stat_prefix": chain_stat_prefix(port, chain),
        "cluster": app_cluster_name(port.app_port),
    }
    if chain == "mtls":
        # Connect to the application only once the client's certificate has been verified: a
        # refused client never reaches it, and the peer's identity is known for the TLV below.
        proxy["upstream_connect_mode"] = "ON_DOWNSTREAM_TLS_HANDSHAKE"
        proxy["max_early_data_bytes"] = 0  # read nothing from the client until then
    if chain == "mtls" and port.app_port in workload.proxy_protocol_ports:
        proxy["proxy_protocol_tlvs"] = [
            {
                "type": SPIFFE_ID_TLV_TYPE,
                "format_string": {"text_format_source": {"inline_string": PEER_URI_SAN}},
            }
        ]
    return [{"name": "envoy.filters.network.tcp_proxy", "typed_config": proxy}]


def _filters(workload: InboundWorkload, port: InboundPort, chain: Chain) -> list[Json]:
    if port.protocol == "http" and chain != "passthrough":
        return _http_filters(port, chain)
    return _tcp_filters(workload, port, chain)


def _chain(
    workload: InboundWorkload, port: InboundPort, chain: Chain, transport: Literal["tls", "raw_buffer"] | None
) -> Json:
    rendered: Json = {"name": chain_stat_prefix(port, chain)}
    if transport is not None:
        rendered["filter_chain_match"] = {"transport_protocol": transport}
    if chain == "mtls":
        rendered["transport_socket"] = _downstream_tls(workload, port)
    rendered["filters"] = _filters(workload, port, chain)
    return rendered


# --------------------------------------------------------------------------- listeners


def _chains(workload: InboundWorkload, port: InboundPort, mode: MtlsMode) -> list[Json]:
    if mode is MtlsMode.STRICT:
        return [_chain(workload, port, "mtls", "tls")]
    if mode is MtlsMode.PERMISSIVE:
        return [_chain(workload, port, "mtls", "tls"), _chain(workload, port, "plaintext", "raw_buffer")]
    if mode is MtlsMode.DISABLE and port.protocol == "http":
        return [
            _chain(workload, port, "passthrough", "tls"),
            _chain(workload, port, "plaintext", "raw_buffer"),
        ]
    if mode is MtlsMode.DISABLE:
        return [_chain(workload, port, "passthrough", None)]
    raise ValueError(f"no filter chains for mode {mode.value}: a Decision is never UNSET")


def render_listener(workload: InboundWorkload, port: InboundPort, decision: Decision) -> Json:
    chains = _chains(workload, port, decision.mode)
    listener: Json = {
        "name": listener_name(port),
        "stat_prefix": listener_name(port),
        "address": {"socket_address": {"address": workload.listen_host, "port_value": port.listen_port}},
        "traffic_direction": "INBOUND",
        "metadata": {"filter_metadata": {"meshca": _decision_metadata(port, decision)}},
    }
    if any("filter_chain_match" in chain for chain in chains):
        listener["listener_filters"] = [
            {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR_TYPE}}
        ]
        # A client that sends nothing first (a server-speaks-first protocol) is plaintext where
        # plaintext is allowed; under STRICT such a connection is closed at the timeout.
        listener["continue_on_listener_filters_timeout"] = decision.mode is not MtlsMode.STRICT
    listener["filter_chains"] = chains
    return listener


def _decision_metadata(port: InboundPort, decision: Decision) -> Json:
    """Why this listener has these chains, readable from Envoy's /config_dump."""
    return {
        "app_port": port.app_port,
        "protocol": port.protocol,
        "mode": decision.mode.value,
        "level": decision.level,
        "decided_by": str(decision.decided_by) if decision.decided_by is not None else None,
    }


def render_listeners(workload: InboundWorkload, decisions: Mapping[int, Decision]) -> list[Json]:
    """One listener per inbound port; `decisions` maps each application port to its Decision."""
    missing = sorted(set(workload.app_ports) - set(decisions))
    if missing:
        raise ValueError(f"no Decision for application ports {missing}")
    return [render_listener(workload, port, decisions[port.app_port]) for port in workload.inbound]


# --------------------------------------------------------------------------- clusters and bootstrap


def _static_cluster(name: str, address: Json) -> Json:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


# HTTP/2 in (gRPC) stays HTTP/2 to the application, HTTP/1.1 stays HTTP/1.1.
_FOLLOW_DOWNSTREAM_PROTOCOL = {
    HTTP_OPTIONS: {
        "@type": HTTP_OPTIONS_TYPE,
        "use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}},
    }
}

_PROXY_PROTOCOL_SOCKET = {
    "name": "envoy.transport_sockets.upstream_proxy_protocol",
    "typed_config": {
        "@type": PROXY_PROTOCOL_TYPE,
        # tcp_proxy sets the SPIFFE ID TLV per connection on mTLS chains; the transport
        # socket sends only the TLVs it is told to pass through.
        "config": {
            "version": "V2",
            "pass_through_tlvs": {"match_type": "INCLUDE", "tlv_type": [SPIFFE_ID_TLV_TYPE]},
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.raw_buffer",
            "typed_config": {"@type": RAW_BUFFER_TYPE},
        },
    },
}


def _app_cluster(workload: InboundWorkload, app_port: int) -> Json:
    address = {"socket_address": {"address": workload.app_host, "port_value": app_port}}
    cluster = _static_cluster(app_cluster_name(app_port), address)
    if any(port.app_port == app_port and port.protocol == "http" for port in workload.inbound):
        cluster["typed_extension_protocol_options"] = _FOLLOW_DOWNSTREAM_PROTOCOL
    if app_port in workload.proxy_protocol_ports:
        cluster["transport_socket"] = _PROXY_PROTOCOL_SOCKET
    return cluster


def _sds_cluster(socket: Path) -> Json:
    cluster = _static_cluster(SDS_CLUSTER, {"pipe": {"path": str(socket)}})
    cluster["connect_timeout"] = "1s"
    cluster["typed_extension_protocol_options"] = {
        HTTP_OPTIONS: {"@type": HTTP_OPTIONS_TYPE, "explicit_http_config": {"http2_protocol_options": {}}}
    }
    return cluster


def render_clusters(workload: InboundWorkload) -> list[Json]:
    clusters = [_app_cluster(workload, app_port) for app_port in workload.app_ports]
    if isinstance(workload.secrets, SdsSecrets):
        clusters.insert(0, _sds_cluster(workload.secrets.socket))
    return clusters


def render_bootstrap(
    workload: InboundWorkload,
    *,
    admin_port: int,
    listeners: Sequence[Json] | None = None,
    lds_path: Path | None = None,
) -> Json:
    """A bootstrap with the listeners inline, or (`lds_path`) read from a file Envoy watches.

    Envoy reloads a path config source when the file is replaced by a move (rename), not
    when it is edited in place; `lds_path` must exist before Envoy starts.
    """
    if (listeners is None) == (lds_path is None):
        raise ValueError("give exactly one of listeners and lds_path")
    static: Json = {"clusters": render_clusters(workload)}
    bootstrap: Json = {
        "node": {"id": workload.node_id, "cluster": workload.cluster},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": static,
    }
    if listeners is not None:
        static["listeners"] = list(listeners)
    else:
        bootstrap["dynamic_resources"] = {
            "lds_config": {"resource_api_version": "V3", "path_config_source": {"path": str(lds_path)}}
        }
    return bootstrap


def discovery_response(resources: Sequence[Json], type_url: str) -> Json:
    """A DiscoveryResponse as Envoy reads it from a file; the version is a digest of the content."""
    typed = [{"@type": type_url, **resource} for resource in resources]
    digest = hashlib.sha256(json.dumps(typed, sort_keys=True).encode()).hexdigest()[:16]
    return {"version_info": digest, "resources": typed}


def render_lds(listeners: Sequence[Json]) -> Json:
    return discovery_response(listeners, LISTENER_TYPE)
