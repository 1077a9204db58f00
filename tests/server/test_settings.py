"""The CA server's settings from flags and MESHCA_* variables, and the errors bad ones give."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

import pytest

from ca.cli.main import build_parser, main
from ca.errors import ConfigError
from ca.issuance.crl import CRL_VALIDITY
from ca.issuance.issuer import IssuancePolicy, OverMaxTtl
from ca.issuance.keys import KeyAlgorithm
from ca.kube.election import ElectionTimings
from ca.server.settings import DEFAULT_DNS_NAMES, ServeConfig, TokenConfig, serve_config, token_config


def _serve(*flags: str, env: Mapping[str, str] | None = None) -> ServeConfig:
    environ = dict(env or {})
    return serve_config(build_parser(environ).parse_args(["serve", *flags]), environ)


def _token(*flags: str, env: Mapping[str, str] | None = None) -> TokenConfig:
    environ = dict(env or {})
    return token_config(build_parser(environ).parse_args(["token", *flags]))


def test_serve_defaults() -> None:
    cfg = _serve()
    assert cfg.listen == "0.0.0.0:15012"
    assert cfg.renew_listen == "0.0.0.0:15013"
    assert cfg.metrics_listen == "0.0.0.0:15014"
    assert cfg.state_dir == Path("./meshca-state")
    assert cfg.trust_domain == "cluster.local"
    assert cfg.cacerts is None
    assert cfg.ca_key_type is KeyAlgorithm.EC_P256
    assert cfg.ca_store == "auto"
    assert (cfg.ca_namespace, cfg.ca_secret) == ("istio-system", "istio-ca-secret")
    assert cfg.auth == "jwt"
    assert cfg.jwks is None and cfg.token_issuer is None
    assert cfg.audiences == ("istio-ca",)
    assert cfg.kubeconfig is None
    assert not cfg.in_cluster and not cfg.has_cluster_access
    assert cfg.pod_check is True
    assert cfg.issuance == IssuancePolicy()
    assert cfg.issuance.default_ttl == timedelta(hours=24)
    assert cfg.issuance.max_ttl == timedelta(days=90)
    assert cfg.issuance.over_max is OverMaxTtl.REJECT
    assert cfg.issuance.strict_csr_names is False
    assert cfg.dns_names == tuple(DEFAULT_DNS_NAMES.split(","))
    assert cfg.cluster_id == "Kubernetes"
    assert cfg.token_cache_size == 10000
    assert cfg.grpc_workers == 16
    assert cfg.log_level == "info"


def test_serve_flags() -> None:
    cfg = _serve(
        "--listen", "127.0.0.1:9000",
        "--renew-listen", "off",
        "--metrics-listen", ":9100",
        "--state-dir", "/var/lib/meshca",
        "--trust-domain", "prod.example",
        "--cacerts", "/etc/cacerts",
        "--ca-key-type", "RSA-3072",
        "--ca-store", "dir",
        "--auth", "tokenreview",
        "--jwks", "/etc/jwks.json",
        "--token-issuer", "https://issuer.example",
        "--audience", "a",
        "--audience", "b,c",
        "--kubeconfig", "/root/.kube/config",
        "--pod-check", "off",
        "--default-ttl", "1h",
        "--max-ttl", "2d",
        "--ttl-over-max", "clamp",
        "--strict-csr-names", "on",
        "--dns-names", "ca.example, 10.0.0.1 ,",
        "--cluster-id", "",
        "--token-cache-size", "0",
        "--grpc-workers", "4",
        "--log-level", "debug",
    )  # fmt: skip
    assert cfg.listen == "127.0.0.1:9000"
    assert cfg.renew_listen is None
    assert cfg.metrics_listen == "0.0.0.0:9100"
    assert cfg.state_dir == Path("/var/lib/meshca")
    assert cfg.trust_domain == "prod.example"
    assert cfg.cacerts == Path("/etc/cacerts")
    assert cfg.ca_key_type is KeyAlgorithm.RSA_3072
    assert cfg.ca_store == "dir"
    assert cfg.auth == "tokenreview"
    assert cfg.jwks == "/etc/jwks.json"
    assert cfg.token_issuer == "https://issuer.example"
    assert cfg.audiences == ("a", "b", "c")
    assert cfg.kubeconfig == Path("/root/.kube/config")
    assert cfg.has_cluster_access
    assert cfg.pod_check is False
    assert cfg.issuance.default_ttl == timedelta(hours=1)
    assert cfg.issuance.max_ttl == timedelta(days=2)
    assert cfg.issuance.over_max is OverMaxTtl.CLAMP
    assert cfg.issuance.strict_csr_names is True
    assert cfg.dns_names == ("ca.example", "10.0.0.1")
    assert cfg.cluster_id is None
    assert cfg.token_cache_size == 0
    assert cfg.grpc_workers == 4
    assert cfg.log_level == "debug"


def test_environment_supplies_defaults() -> None:
    cfg = _serve(
        env={
            "MESHCA_LISTEN": "127.0.0.1:1234",
            "MESHCA_TRUST_DOMAIN": "env.example",
            "MESHCA_DEFAULT_TTL": "2h",
            "MESHCA_MAX_TTL": "7d",
            "MESHCA_STRICT_CSR_NAMES": "on",
            "MESHCA_TTL_OVER_MAX": "clamp",
            "MESHCA_CACERTS": "/env/cacerts",
            "MESHCA_AUDIENCE": "x,y",
            "MESHCA_RENEW_LISTEN": "off",
            "MESHCA_TOKEN_CACHE_SIZE": "5",
        }
    )
    assert cfg.listen == "127.0.0.1:1234"
    assert cfg.trust_domain == "env.example"
    assert cfg.issuance.default_ttl == timedelta(hours=2)
    assert cfg.issuance.max_ttl == timedelta(days=7)
    assert cfg.issuance.strict_csr_names is True
    assert cfg.issuance.over_max is OverMaxTtl.CLAMP
    assert cfg.cacerts == Path("/env/cacerts")
    assert cfg.audiences == ("x", "y")
    assert cfg.renew_listen is None
    assert cfg.token_cache_size == 5


def test_flags_win_over_the_environment() -> None:
    env = {
        "MESHCA_LISTEN": "127.0.0.1:1234",
        "MESHCA_TRUST_DOMAIN": "env.example",
        "MESHCA_DEFAULT_TTL": "2h",
        "MESHCA_STRICT_CSR_NAMES": "on",
    }
    cfg = _serve(
        "--listen", ":5555",
        "--trust-domain", "flag.example",
        "--default-ttl", "3h",
        "--strict-csr-names", "off",
        env=env,
    )  # fmt: skip
    assert cfg.listen == "0.0.0.0:5555"
    assert cfg.trust_domain == "flag.example"
    assert cfg.issuance.default_ttl == timedelta(hours=3)
    assert cfg.issuance.strict_csr_names is False


def test_audience_flag_wins_over_the_environment() -> None:
    cfg = _serve("--audience", "flag-aud", env={"MESHCA_AUDIENCE": "env-aud"})
    assert cfg.audiences == ("flag-aud",)


def test_kubernetes_service_host_means_in_cluster() -> None:
    cfg = _serve(env={"KUBERNETES_SERVICE_HOST": "10.96.0.1"})
    assert cfg.in_cluster
    assert cfg.has_cluster_access


def test_environment_of_other_programs_is_ignored() -> None:
    cfg = _serve(env={"TRUST_DOMAIN": "x.example", "MESHCA_TRUST_DOMAINS": "y.example"})
    assert cfg.trust_domain == "cluster.local"


def test_listen_cannot_be_off() -> None:
    with pytest.raises(ConfigError) as caught:
        _serve("--listen", "off")
    assert "--listen" in caught.value.message


def test_bad_listen_flag_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        _serve("--metrics-listen", "nonsense")


def test_ledger_linger_defaults_to_10ms_and_stays_under_a_second() -> None:
    assert _serve().ledger_linger == timedelta(milliseconds=10)
    assert _serve("--ledger-linger", "0").ledger_linger == timedelta(0)
    assert _serve(env={"MESHCA_LEDGER_LINGER": "2ms"}).ledger_linger == timedelta(milliseconds=2)
    with pytest.raises(ConfigError, match="longer than 1s"):
        _serve("--ledger-linger", "2s")


def test_crl_validity_defaults_to_24h_and_is_at_least_10m() -> None:
    assert _serve().crl_validity == CRL_VALIDITY == timedelta(hours=24)
    assert _serve("--crl-validity", "6h").crl_validity == timedelta(hours=6)
    assert _serve("--crl-validity", "10m").crl_validity == timedelta(minutes=10)
    assert _serve(env={"MESHCA_CRL_VALIDITY": "3d"}).crl_validity == timedelta(days=3)
    with pytest.raises(ConfigError, match=r"^--crl-validity 0 is not positive; give how long each CRL"):
        _serve("--crl-validity", "0")
    with pytest.raises(ConfigError, match=r"^--crl-validity 599s is too short: .* give 10m or more"):
        _serve("--crl-validity", "599s")
    with pytest.raises(ConfigError, match=r"^--crl-validity: 'a day' is not a duration"):
        _serve("--crl-validity", "a day")


@pytest.mark.parametrize(
    ("value", "what_to_give"),
    [("0", "such as 24h"), ("5m", "give 10m or more (default 24h)"), ("soon", "like 3600, 250ms")],
)
def test_a_bad_crl_validity_stops_serve_with_one_line_that_says_what_to_give(
    value: str, what_to_give: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--state-dir", "/nonexistent/meshca-state", "--crl-validity", value]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("meshca: error: --crl-validity") and err.count("\n") == 1
    assert what_to_give in err


def test_token_leeway_defaults_to_30s_and_stays_within_0_to_5m() -> None:
    assert _serve().token_leeway == timedelta(seconds=30)
    assert _serve("--token-leeway", "0").token_leeway == timedelta(0)
    assert _serve("--token-leeway", "5m").token_leeway == timedelta(minutes=5)
    assert _serve(env={"MESHCA_TOKEN_LEEWAY": "1500ms"}).token_leeway == timedelta(milliseconds=1500)
    with pytest.raises(ConfigError, match=r"^--token-leeway 301s is too long: .* give 0 to 5m, such as 30s"):
        _serve("--token-leeway", "301s")
    with pytest.raises(ConfigError, match=r"^--token-leeway '-1s' is not a duration from 0 to 5m"):
        _serve("--token-leeway=-1s")


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--default-ttl", "1.5h"),
        ("--default-ttl", "soon"),
        ("--max-ttl", "-90d"),
        ("--max-ttl", ""),
    ],
)
def test_bad_ttl_flags_are_config_errors(flag: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _serve(f"{flag}={value}")
    assert "duration" in caught.value.message


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (("--default-ttl", "48h", "--max-ttl", "24h"), ["--default-ttl (2d)", "--max-ttl (1d)"]),
        (("--default-ttl", "0"), ["positive"]),
        (("--max-ttl", "0s"), ["positive"]),
    ],
)
def test_inconsistent_ttls_are_config_errors(flags: tuple[str, ...], words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        _serve(*flags)
    for word in words:
        assert word in caught.value.message


@pytest.mark.parametrize(("flag", "value"), [("--auth", "tokenreview"), ("--ca-store", "secret")])
def test_cluster_only_modes_need_cluster_access(flag: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _serve(flag, value)
    assert "cluster access" in caught.value.message
    assert flag in caught.value.message
    assert _serve(flag, value, "--kubeconfig", "/k").has_cluster_access
    assert _serve(flag, value, env={"KUBERNETES_SERVICE_HOST": "10.0.0.1"}).in_cluster


def test_bad_ttl_from_the_environment_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        _serve(env={"MESHCA_MAX_TTL": "ninety days"})


@pytest.mark.parametrize("name", ["Cluster.Local", "cluster.local:443", "", "a/b"])
def test_bad_trust_domain_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _serve("--trust-domain", name)
    assert "trust domain" in caught.value.message


def test_unknown_ca_key_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        _serve("--ca-key-type", "dsa-1024")
    assert "'dsa-1024'" in caught.value.message
    assert "ec-p256" in caught.value.message


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--grpc-workers", "0", "at least 1"),
        ("--grpc-workers", "many", "whole number"),
        ("--grpc-workers", "-4", "whole number"),
        ("--token-cache-size", "-1", "whole number"),
        ("--token-cache-size", "1e3", "whole number"),
    ],
)
def test_bad_numbers_are_config_errors(flag: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _serve(flag, value)
    assert words in caught.value.message
    assert flag in caught.value.message


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--auth", "oidc"), ("--ca-store", "vault"), ("--pod-check", "yes"), ("--ttl-over-max", "x")],
)
def test_bad_choice_flags_are_usage_errors(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        _serve(flag, value)
    assert caught.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MESHCA_AUTH", "oidc"),
        ("MESHCA_CA_STORE", "vault"),
        ("MESHCA_POD_CHECK", "yes"),
        ("MESHCA_STRICT_CSR_NAMES", "true"),
        ("MESHCA_TTL_OVER_MAX", "truncate"),
    ],
)
def test_bad_choice_from_the_environment_is_refused(variable: str, value: str) -> None:
    with pytest.raises((ConfigError, SystemExit)):
        _serve(env={variable: value})


def test_token_config() -> None:
    cfg = _token(
        "--namespace", "shop", "--service-account", "web", "--ttl", "1h",
        "--pod-name", "web-1", "--pod-uid", "uid-1", "--audience", "a,b", "--state-dir", "/s",
    )  # fmt: skip
    assert (cfg.namespace, cfg.service_account) == ("shop", "web")
    assert cfg.ttl == timedelta(hours=1)
    assert (cfg.pod_name, cfg.pod_uid) == ("web-1", "uid-1")
    assert cfg.audiences == ("a", "b")
    assert cfg.state_dir == Path("/s")


def test_token_config_defaults_and_environment() -> None:
    cfg = _token(env={"MESHCA_NAMESPACE": "envns", "MESHCA_SERVICE_ACCOUNT": "envsa"})
    assert (cfg.namespace, cfg.service_account) == ("envns", "envsa")
    assert cfg.audiences == ("istio-ca",)
    assert cfg.ttl == timedelta(hours=12)
    assert cfg.pod_name is None and cfg.pod_uid is None


@pytest.mark.parametrize("flags", [("--pod-name", "web-1"), ("--pod-uid", "uid-1")])
def test_token_pod_binding_needs_both(flags: tuple[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        _token("--namespace", "a", "--service-account", "b", *flags)
    assert "--pod-name" in caught.value.message and "--pod-uid" in caught.value.message


def test_token_needs_a_namespace(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        _token("--service-account", "b")
    assert caught.value.code == 2
    assert "--namespace" in capsys.readouterr().err


def test_token_bad_ttl_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        _token("--namespace", "a", "--service-account", "b", "--ttl", "12 hours")


def test_leader_election_and_bundle_endpoint_defaults() -> None:
    cfg = _serve()
    assert cfg.bundle_listen is None
    assert cfg.leader_lease == "meshca-leader"
    assert cfg.leader_timings == ElectionTimings(
        lease_duration_s=15, renew_deadline_s=10.0, retry_period_s=2.0
    )
    assert cfg.replica == f"{socket.gethostname()}_{os.getpid()}"


def test_leader_election_and_bundle_endpoint_flags() -> None:
    cfg = _serve(
        "--bundle-listen", ":8443",
        "--leader-lease", "ca-leader",
        "--leader-lease-duration", "3s",
        "--leader-renew-deadline", "2s",
        "--leader-retry-period", "500ms",
    )  # fmt: skip
    assert cfg.bundle_listen == "0.0.0.0:8443"
    assert cfg.leader_lease == "ca-leader"
    assert cfg.leader_timings == ElectionTimings(lease_duration_s=3, renew_deadline_s=2.0, retry_period_s=0.5)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (("--leader-lease-duration", "2500ms"), "whole number of seconds"),
        (("--leader-lease-duration", "10s"), "must be longer than the renew deadline"),
        (("--leader-retry-period", "9s"), "retry periods"),
        (("--leader-lease", "Not_A_Name"), "--leader-lease 'Not_A_Name' is not a valid Kubernetes name"),
        (("--bundle-listen", "8443"), "not a listen address"),
    ],
)
def test_bad_leader_election_flags_are_config_errors(flags: tuple[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        _serve(*flags)
