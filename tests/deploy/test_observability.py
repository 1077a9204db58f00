"""deploy/observability and deploy/components/monitoring: the Grafana dashboard and the alert rules
query only what meshca exports, mean what they say, and load where an operator loads them.

The names are checked against live processes: `meshca serve`, `meshca agent` and `meshca enforce`
run here on free ports, their /metrics pages are scraped and parsed, and every metric name in a
dashboard target or an alert expression must be one of theirs, so renaming a metric fails this
test instead of emptying a panel or silencing an alert. `promtool` (Debian's `prometheus`
package) checks the rules file and runs each alert over series that must fire it and series
that must not.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ca.common.clock import SystemClock
from ca.inject.pod import inject_pod
from ca.server.devtoken import DevTokenIssuer
from tests.deploy.install import DEPLOY, find, overlay, render
from tests.support.agent import agent_args, local_http_get, short_dir, wait_until
from tests.support.dataplanes import meshca_process, stop_process
from tests.support.ports import read_ports_file
from tests.support.promql import exported_names, metric_names

OBSERVABILITY = DEPLOY / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
RULES = OBSERVABILITY / "meshca-alerts.rules.yaml"
MONITORING = DEPLOY / "components" / "monitoring"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
SEVERITIES = ("critical", "warning")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def rules() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return loaded


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rules()["groups"] for rule in group["rules"] if "alert" in rule]


def panels(items: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """Every panel, those inside a collapsed row included."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels") or ())


def expressions() -> list[tuple[str, str]]:
    """Every PromQL expression meshca ships, each with where it is."""
    found = [
        (f"dashboard panel {panel['id']} {panel['title']!r} target {target['refId']}", target["expr"])
        for panel in panels(dashboard()["panels"])
        for target in panel.get("targets") or ()
    ]
    found += [(f"alert {rule['alert']}", rule["expr"]) for rule in alerts()]
    return found


def unexported(exprs: Sequence[tuple[str, str]], exported: set[str]) -> dict[str, list[str]]:
    """The names the expressions use that nothing exports, each with where it is used."""
    missing: dict[str, list[str]] = {}
    for where, expr in exprs:
        for name in sorted(metric_names(expr) - exported):
            missing.setdefault(name, []).append(where)
    return missing


# --------------------------------------------------------------------------- the dashboard


def test_the_dashboard_imports_into_grafana_with_a_prometheus_datasource_variable() -> None:
    board = dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["uid"] == "meshca-overview" and board["title"]
    [variable] = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert (variable["name"], variable["query"]) == ("DS_PROMETHEUS", "prometheus")
    all_panels = list(panels(board["panels"]))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {sorted(ids)}"
    rows = [p["title"] for p in all_panels if p["type"] == "row"]
    assert [r.split(" ")[0] for r in rows] == ["CA", "Agents", "Enforcers"]
    for panel in all_panels:
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0, panel["id"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["id"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE and target["expr"].strip(), panel["title"]


def test_no_two_dashboard_panels_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard()["panels"]):
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_every_expression_selects_a_metric() -> None:
    for where, expr in expressions():
        assert metric_names(expr), f"{where}: {expr!r} names no metric"


def test_a_name_nothing_exports_is_reported_with_where_it_is_used() -> None:
    exprs = [("panel 1", "sum(rate(a_total[5m])) / sum(rate(b_total[5m]))"), ("alert X", "b_total > 0")]
    assert unexported(exprs, {"a_total", "b_total"}) == {}
    assert unexported(exprs, {"a_total"}) == {"b_total": ["panel 1", "alert X"]}


# --------------------------------------------------------------------------- the alert rules


def test_every_alert_waits_has_a_severity_and_says_what_to_do() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    # What the issue asks for: roots and signing CAs near expiry, issuance errors, the ledger,
    # agents on expired certificates, rotation orders past their grace; and agents whose
    # revocation lists near their nextUpdate (Envoy refuses every peer past it).
    assert set(names) == {
        "MeshcaRootCertificateExpiringSoon",
        "MeshcaSigningCaExpiringSoon",
        "MeshcaIssuanceErrorRatioHigh",
        "MeshcaLedgerWritesFailing",
        "MeshcaAgentCertificateExpired",
        "MeshcaRotationOrderPastGrace",
        "MeshcaAgentCrlExpiringSoon",
    }
    for rule in alerts():
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert set(rule["annotations"]) >= {"summary", "description"}, rule["alert"]
        assert len(rule["annotations"]["description"]) > 200, f"{rule['alert']}: say what to do"
        assert "meshca" in rule["annotations"]["description"], rule["alert"]


def test_the_prometheus_rule_holds_the_rules_files_groups() -> None:
    [rule] = list(yaml.safe_load_all((MONITORING / "prometheusrule.yaml").read_text()))
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"] == rules(), (
        "deploy/components/monitoring/prometheusrule.yaml differs from "
        "deploy/observability/meshca-alerts.rules.yaml: copy the rules file's groups under spec:"
    )


def test_the_monitoring_component_renders_with_an_overlay_and_scrapes_meshcas_ports(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {os.path.relpath(overlay('single'), tmp_path)}\n"
        f"components:\n  - {os.path.relpath(MONITORING, tmp_path)}\n"
    )
    manifests = render(tmp_path)
    assert find(manifests, "PrometheusRule", "meshca-alerts")["spec"] == rules()
    service = find(manifests, "Service", "meshca")
    monitor = find(manifests, "ServiceMonitor", "meshca")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [services_of_ca] = [
        s
        for s in manifests
        if s["kind"] == "Service"
        and monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"].get("labels", {}).items()
    ]
    assert services_of_ca is service
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The PodMonitor scrapes the ports `meshca inject` gives the enforcer and the agent.
    pod_endpoints = find(manifests, "PodMonitor", "meshca-workloads")["spec"]["podMetricsEndpoints"]
    assert {e["port"] for e in pod_endpoints} == {"meshca-metrics", "meshca-agent"}
    assert {e["port"] for e in pod_endpoints} <= injected_port_names()


def injected_port_names() -> set[str]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "annotations": {"meshca.io/enforce-ports": "8080"}},
        "spec": {"containers": [{"name": "web", "image": "web", "ports": [{"containerPort": 8080}]}]},
    }
    injected = inject_pod(pod).pod
    spec = injected["spec"]
    return {
        port["name"]
        for container in [*spec["containers"], *spec.get("initContainers", ())]
        if container["name"] != "web"
        for port in container.get("ports") or ()
        if "name" in port
    }


# --------------------------------------------------------------------------- promtool


def require_promtool() -> str:
    """promtool's path; skips (fails under CI) without it."""
    found = shutil.which("promtool")
    if found is not None:
        return found
    problem = "promtool is not installed (apt-get install -y prometheus)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"promtool is required under CI: {problem}")
    pytest.skip(problem)


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_promtool(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def test_promtool_checks_the_rules_file() -> None:
    done = promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout


DAY_S = 86400
AGENT_EXPIRY = "meshca_agent_certificate_expiry_timestamp_seconds"
AGENT_CRL_NEXT_UPDATE = "meshca_agent_crl_next_update_timestamp_seconds"
CRL_VALIDITY_FLAG = "6h"  # the mesh's CA: not the default, so that the value shows it was wired


@dataclass(frozen=True)
class Scenario:
    """Series for one alert, and which of them fire it at which time."""

    alert: str
    series: dict[str, str]  # series -> promtool's expanding notation (one value a minute)
    at: str
    firing: list[dict[str, str]]  # the labels of each alert expected then (severity included)
    not_yet: str | None = None  # a time when the condition holds but its `for` has not passed


SCENARIOS = [
    Scenario(
        alert="MeshcaRootCertificateExpiringSoon",
        series={
            'citadel_server_root_cert_expiry_timestamp{job="ca",instance="ca-0"}': f"{29 * DAY_S}x180",
            'citadel_server_root_cert_expiry_timestamp{job="ca",instance="ca-1"}': f"{29 * DAY_S}x180",
            'citadel_server_root_cert_expiry_timestamp{job="far",instance="ca-2"}': f"{31 * DAY_S}x180",
        },
        at="2h",
        firing=[{"job": "ca", "severity": "critical"}],  # one alert for both replicas
        not_yet="30m",
    ),
    Scenario(
        alert="MeshcaSigningCaExpiringSoon",
        series={
            'citadel_server_cert_chain_expiry_timestamp{job="ca",instance="ca-0"}': f"{29 * DAY_S}x180",
            'citadel_server_cert_chain_expiry_timestamp{job="far",instance="ca-1"}': f"{31 * DAY_S}x180",
        },
        at="2h",
        firing=[{"job": "ca", "severity": "warning"}],
        not_yet="30m",
    ),
    Scenario(
        alert="MeshcaIssuanceErrorRatioHigh",
        series={
            'citadel_server_csr_count{job="ca",instance="ca-0"}': "0+10x60",
            'citadel_server_success_cert_issuance_count{job="ca",instance="ca-0"}': "0+9x60",  # 10% fail
            'citadel_server_csr_count{job="ok",instance="ca-1"}': "0+10x60",
            'citadel_server_success_cert_issuance_count{job="ok",instance="ca-1"}': "0+10x60",
            'citadel_server_csr_count{job="few",instance="ca-2"}': "0+100x60",
            'citadel_server_success_cert_issuance_count{job="few",instance="ca-2"}': "0+99x60",  # 1%
        },
        at="45m",
        firing=[{"job": "ca", "severity": "warning"}],
        not_yet="10m",
    ),
    Scenario(
        alert="MeshcaLedgerWritesFailing",
        series={
            'meshca_ledger_write_failures_total{job="ca",reason="write_failed"}': "0 0 0 1+1x30",
            'meshca_ledger_write_failures_total{job="ca",reason="shut_down"}': "0+5x33",
            'meshca_ledger_write_failures_total{job="ca",reason="backlog"}': "0x33",
        },
        at="20m",
        firing=[{"job": "ca", "reason": "write_failed", "severity": "critical"}],
        not_yet="4m",
    ),
    Scenario(
        alert="MeshcaAgentCertificateExpired",
        series={
            # NotAfter at 10 minutes, against a day for the other agent.
            f'{AGENT_EXPIRY}{{job="agents",instance="10.0.0.1:15021"}}': "600x60",
            f'{AGENT_EXPIRY}{{job="agents",instance="10.0.0.2:15021"}}': f"{DAY_S}x60",
        },
        at="20m",
        firing=[{"job": "agents", "instance": "10.0.0.1:15021", "severity": "critical"}],
        not_yet="12m",
    ),
    Scenario(
        alert="MeshcaRotationOrderPastGrace",
        series={
            'meshca_rotation_orders_past_grace{job="ca",instance="ca-0"}': "0 0 1x20",
            'meshca_rotation_orders_past_grace{job="ca",instance="ca-1"}': "0 0 1x20",
            'meshca_rotation_orders_past_grace{job="other",instance="ca-2"}': "0x22",
        },
        at="10m",
        firing=[{"job": "ca", "severity": "warning"}],
        not_yet="4m",
    ),
    Scenario(
        alert="MeshcaAgentCrlExpiringSoon",
        series={
            # nextUpdate at 3 h: under 2 h left from 1 h on, so it fires 10 minutes later.
            f'{AGENT_CRL_NEXT_UPDATE}{{job="agents",instance="10.0.0.1:15021"}}': "10800x120",
            # The CA republished at 1h05 (5 minutes under 2 h left, not 10): no alert.
            f'{AGENT_CRL_NEXT_UPDATE}{{job="agents",instance="10.0.0.2:15021"}}': "10800x65 54000x55",
            f'{AGENT_CRL_NEXT_UPDATE}{{job="agents",instance="10.0.0.3:15021"}}': f"{DAY_S}x120",
        },
        at="1h15m",
        firing=[{"job": "agents", "instance": "10.0.0.1:15021", "severity": "critical"}],
        not_yet="1h5m",
    ),
]


def promtool_tests(scenarios: Sequence[Scenario], rule_file: str) -> dict[str, Any]:
    tests = []
    for s in scenarios:
        checks = [
            {"eval_time": s.at, "alertname": s.alert, "exp_alerts": [{"exp_labels": f} for f in s.firing]}
        ]
        if s.not_yet is not None:
            checks.append({"eval_time": s.not_yet, "alertname": s.alert, "exp_alerts": []})
        tests.append(
            {
                "interval": "1m",
                "input_series": [{"series": name, "values": values} for name, values in s.series.items()],
                "alert_rule_test": checks,
            }
        )
    return {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": tests}


def without_annotations(loaded: Mapping[str, Any]) -> dict[str, Any]:
    """The rules as they are but for their annotations, which promtool would have to be told
    word for word (`promtool check rules` checks their templates)."""
    return {
        "groups": [
            {**group, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in group["rules"]]}
            for group in loaded["groups"]
        ]
    }


def test_each_alert_fires_for_what_it_is_about_and_not_for_the_rest(tmp_path: Path) -> None:
    assert {s.alert for s in SCENARIOS} == {rule["alert"] for rule in alerts()}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(without_annotations(rules()), sort_keys=False))
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump(promtool_tests(SCENARIOS, "rules.yaml"), sort_keys=False)
    )
    done = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


# --------------------------------------------------------------------------- the live processes


@dataclass
class Mesh:
    """One of each meshca process, with the port of its /metrics page."""

    metrics_ports: dict[str, int]
    enforcer_listen_port: int
    logs: list[Path]

    def scrape(self, process: str) -> str:
        status, body = local_http_get(self.metrics_ports[process], "/metrics")
        assert status == 200, f"{process} /metrics answered {status}: {body[:200]}"
        return body

    def log_tail(self) -> str:
        return "".join(f"\n--- {log.name}\n{log.read_text(errors='replace')[-2000:]}" for log in self.logs)


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    """`meshca serve` (its SQLite ledger in the state directory), a `meshca agent` holding a
    certificate and a control stream to it, and a `meshca enforce` serving that certificate, all
    on ports they picked (port 0) and reported in their --ports-file."""
    processes: list[subprocess.Popen[bytes]] = []
    with short_dir("mca-obs-") as base:
        logs = [base / f"{name}.log" for name in ("serve", "agent", "enforce")]
        try:
            serve = meshca_process(
                [
                    "serve",
                    "--state-dir",
                    str(base / "state"),
                    "--listen",
                    "127.0.0.1:0",
                    "--renew-listen",
                    "127.0.0.1:0",
                    "--metrics-listen",
                    "127.0.0.1:0",
                    "--crl-validity",
                    CRL_VALIDITY_FLAG,
                    "--ports-file",
                    str(base / "serve.ports"),
                ],
                logs[0],
            )
            processes.append(serve)
            ca = read_ports_file(base / "serve.ports", serve, log=logs[0])
            token = DevTokenIssuer.load_or_create(base / "state", SystemClock()).mint(
                namespace="shop", service_account="web", pod_name="web-0", pod_uid=str(uuid.uuid4())
            )
            (base / "token").write_text(token + "\n")
            agent = meshca_process(
                [
                    "agent",
                    *agent_args(
                        ca_port=ca["grpc"],
                        ca_root=base / "state" / "root-cert.pem",
                        token_file=base / "token",
                        output_dir=base / "certs",
                        extra=[
                            "--ca-control-addr",
                            f"127.0.0.1:{ca['renew']}",
                            "--ports-file",
                            str(base / "agent.ports"),
                        ],
                    ),
                ],
                logs[1],
            )
            processes.append(agent)
            agent_ports = read_ports_file(base / "agent.ports", agent, log=logs[1])
            (base / "policies").mkdir()
            (base / "policies" / "strict.yaml").write_text(
                "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
                "metadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n"
            )
            enforce = meshca_process(
                [
                    "enforce",
                    "--inbound",
                    "0:8080",
                    "--listen-host",
                    "127.0.0.1",
                    "--cert-dir",
                    str(base / "certs"),  # the agent's certificate
                    "--namespace",
                    "shop",
                    "--policies",
                    str(base / "policies"),
                    "--metrics-listen",
                    "127.0.0.1:0",
                    "--ports-file",
                    str(base / "enforce.ports"),
                ],
                logs[2],
            )
            processes.append(enforce)
            enforce_ports = read_ports_file(base / "enforce.ports", enforce, log=logs[2])
            yield Mesh(
                metrics_ports={
                    "serve": ca["metrics"],
                    "agent": agent_ports["health"],
                    "enforce": enforce_ports["metrics"],
                },
                enforcer_listen_port=enforce_ports["inbound"][0]["listen_port"],
                logs=logs,
            )
        finally:
            for process in reversed(processes):
                stop_process(process)


def samples(exposition: str, name: str) -> list[float]:
    return [
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith((f"{name} ", f"{name}{{"))
    ]


def refuse_one_plaintext_connection(port: int) -> None:
    """A plaintext client at a STRICT port: the enforcer refuses it (and counts it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            sock.recv(10)


@pytest.mark.slow
def test_every_dashboard_and_alert_expression_names_a_metric_the_processes_export(mesh: Mesh) -> None:
    # Let each process have something to count: the agent's certificate and control stream, a
    # refused connection at the enforcer.
    wait_until(
        lambda: samples(mesh.scrape("agent"), "meshca_agent_control_stream_connected") == [1.0],
        30,
        f"the agent's certificate and control stream{mesh.log_tail()}",
    )
    wait_until(
        lambda: local_http_get(mesh.metrics_ports["enforce"], "/healthz/ready")[0] == 200,
        30,
        f"the enforcer serving the agent's certificate{mesh.log_tail()}",
    )
    refuse_one_plaintext_connection(mesh.enforcer_listen_port)
    exported: dict[str, set[str]] = {p: exported_names(mesh.scrape(p)) for p in mesh.metrics_ports}
    everything = set().union(*exported.values())
    missing = unexported(expressions(), everything)
    assert not missing, "names that no meshca process exports:\n" + "\n".join(
        f"  {name}: {', '.join(where)}" for name, where in sorted(missing.items())
    )
    # Each row's names come from the process the row is about.
    for row, process in (("CA", "serve"), ("Agents", "agent"), ("Enforcers", "enforce")):
        used = {name for where, expr in row_expressions(row) for name in metric_names(expr)}
        assert used and used <= exported[process], f"{row}: {sorted(used - exported[process])}"


def row_expressions(title_start: str) -> list[tuple[str, str]]:
    """The expressions of the panels under the row whose title starts with `title_start`."""
    found, current = [], None
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
            continue
        if current is not None and current.startswith(title_start):
            found += [(panel["title"], t["expr"]) for t in panel["targets"]]
    return found


@pytest.mark.slow
def test_the_processes_new_metrics_have_true_values(mesh: Mesh) -> None:
    """What the alerts read, as the live processes report it."""
    wait_until(
        lambda: samples(mesh.scrape("agent"), "meshca_agent_certificate_expiry_timestamp_seconds"),
        30,
        f"the agent's certificate{mesh.log_tail()}",
    )
    agent = mesh.scrape("agent")
    [not_after] = samples(agent, "meshca_agent_certificate_expiry_timestamp_seconds")
    [seconds_left] = samples(agent, 'istio_agent_cert_expiry_seconds{resource_name="default"}')
    now = SystemClock().now().timestamp()
    assert abs(not_after - now - seconds_left) < 60  # the same certificate, two ways
    assert 23 * 3600 < not_after - now <= 24 * 3600  # --ttl 24h
    ca = mesh.scrape("serve")
    [root] = samples(ca, "citadel_server_root_cert_expiry_timestamp")
    [signing] = samples(ca, "citadel_server_cert_chain_expiry_timestamp")
    assert now + 59 * DAY_S < signing < root  # a 60-day signing CA under a 10-year root
    assert samples(ca, "meshca_rotation_orders_past_grace") == [0.0]
    # The CA's CRL, signed for --crl-validity from a thisUpdate 2 minutes back, as the agent holds it.
    wait_until(
        lambda: samples(mesh.scrape("agent"), AGENT_CRL_NEXT_UPDATE),
        30,
        f"the agent's revocation lists{mesh.log_tail()}",
    )
    [crl_next_update] = samples(mesh.scrape("agent"), AGENT_CRL_NEXT_UPDATE)
    assert 6 * 3600 - 600 < crl_next_update - now <= 6 * 3600  # --crl-validity 6h
    assert samples(ca, "meshca_control_streams") == [1.0]
    # The agent's certificate and the CA's start are in the ledger, and nothing failed.
    assert samples(ca, "meshca_ledger_entries_written_total")[0] >= 2
    assert samples(ca, "meshca_ledger_commit_duration_seconds_count")[0] >= 1
    assert set(samples(ca, "meshca_ledger_write_failures_total")) == {0.0}
