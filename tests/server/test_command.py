"""Settings from flags and MESHCA_* variables, durations, and the CLI's handling of bad config."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca.cli import main as cli
from ca.cli.main import build_parser
from ca.common.durations import format_duration, parse_duration
from ca.common.flags import env_name, listen_address
from ca.errors import ConfigError
from ca.issuance.issuer import IssuancePolicy, OverMaxTtl
from ca.issuance.keys import KeyAlgorithm
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


@pytest.mark.parametrize(
    ("flag", "env"),
    [
        ("--listen", "MESHCA_LISTEN"),
        ("--renew-listen", "MESHCA_RENEW_LISTEN"),
        ("--state-dir", "MESHCA_STATE_DIR"),
        ("--token-cache-size", "MESHCA_TOKEN_CACHE_SIZE"),
        ("strict-csr-names", "MESHCA_STRICT_CSR_NAMES"),
    ],
)
def test_env_names(flag: str, env: str) -> None:
    assert env_name(flag) == env


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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":15012", "0.0.0.0:15012"),
        ("0.0.0.0:15012", "0.0.0.0:15012"),
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("localhost:8080", "localhost:8080"),
        ("[::1]:15012", "[::1]:15012"),
        ("[::]:65535", "[::]:65535"),
        ("  :80  ", "0.0.0.0:80"),
        ("", None),
        ("off", None),
        ("none", None),
        ("  off ", None),
    ],
)
def test_listen_address_forms(text: str, expected: str | None) -> None:
    assert listen_address(text) == expected


@pytest.mark.parametrize(
    "text", ["15012", "localhost", "host:", "host:http", "host:65536", "host:-1", ":1.5"]
)
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        listen_address(text)
    assert "HOST:PORT" in caught.value.message
    assert repr(text.strip()) in caught.value.message


def test_listen_cannot_be_off() -> None:
    with pytest.raises(ConfigError) as caught:
        _serve("--listen", "off")
    assert "--listen" in caught.value.message


def test_bad_listen_flag_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        _serve("--metrics-listen", "nonsense")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", timedelta(0)),
        ("3600", timedelta(hours=1)),
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("24h", timedelta(hours=24)),
        ("90d", timedelta(days=90)),
        (" 24H ", timedelta(hours=24)),
        ("007m", timedelta(minutes=7)),
        ("250ms", timedelta(milliseconds=250)),
        ("0ms", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", " ", "h", "1.5h", "-1h", "+1h", "1w", "1y", "24 h", "1h30m", "forever", "0x10"]
)
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(text)
    assert repr(text) in caught.value.message
    assert "90d" in caught.value.message


@pytest.mark.parametrize("text", ["9999999999d", "99999999999999999999s", "1" * 30 + "h", "9" * 30 + "ms"])
def test_absurdly_long_durations_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_ledger_linger_defaults_to_10ms_and_stays_under_a_second() -> None:
    assert _serve().ledger_linger == timedelta(milliseconds=10)
    assert _serve("--ledger-linger", "0").ledger_linger == timedelta(0)
    assert _serve(env={"MESHCA_LEDGER_LINGER": "2ms"}).ledger_linger == timedelta(milliseconds=2)
    with pytest.raises(ConfigError, match="longer than 1s"):
        _serve("--ledger-linger", "2s")


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
    ("value", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=90), "90s"),
        (timedelta(minutes=30), "30m"),
        (timedelta(hours=1), "1h"),
        (timedelta(hours=25), "25h"),
        (timedelta(days=90), "90d"),
        (timedelta(seconds=86401), "86401s"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


@given(seconds=st.integers(min_value=0, max_value=10**9))
def test_format_then_parse_round_trips(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


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


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("MESHCA_") or name == "KUBERNETES_SERVICE_HOST":
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _loopback(state_dir: Path, *extra: str) -> list[str]:
    return [
        "serve", "--state-dir", str(state_dir), "--listen", "127.0.0.1:0",
        "--renew-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", *extra,
    ]  # fmt: skip


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if re.match(r"meshca( \w+)?: error:", line)]


def test_cli_empty_cacerts_dir_exits_2_with_one_line(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    cacerts = tmp_path / "cacerts"
    cacerts.mkdir()
    code = cli.main(_loopback(tmp_path / "state", "--cacerts", str(cacerts)))
    out, err = capsys.readouterr()
    assert code == cli.EXIT_CONFIG == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("meshca: error: ")
    assert str(cacerts) in lines[0]
    assert "holds no CA" in lines[0]
    assert out == ""


def test_cli_partial_cacerts_names_the_missing_file(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    cacerts = tmp_path / "cacerts"
    cacerts.mkdir()
    (cacerts / "ca-cert.pem").write_text("x")
    code = cli.main(_loopback(tmp_path / "state", "--cacerts", str(cacerts)))
    lines = _error_lines(capsys.readouterr().err)
    assert code == 2
    assert len(lines) == 1
    assert "ca-key.pem" in lines[0]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (("--default-ttl", "1.5h"), "'1.5h'"),
        (("--max-ttl", "9999999999d"), "9999999999d"),
        (("--listen", "nowhere"), "'nowhere'"),
        (("--trust-domain", "Cluster.Local"), "Cluster.Local"),
        (("--ca-key-type", "ed25519"), "'ed25519'"),
        (("--grpc-workers", "0"), "--grpc-workers"),
        (("--default-ttl", "48h", "--max-ttl", "24h"), "--default-ttl"),
        (("--log-level", "verbose"), "verbose"),
    ],
)
def test_cli_bad_config_exits_2_without_a_traceback(
    extra: tuple[str, ...], words: str, tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(_loopback(tmp_path / "state", *extra))
    lines = _error_lines(capsys.readouterr().err)
    assert code == 2
    assert len(lines) == 1
    assert words in lines[0]


@pytest.mark.parametrize(
    ("variable", "value"), [("MESHCA_TTL_OVER_MAX", "truncate"), ("MESHCA_AUTH", "oidc")]
)
def test_cli_bad_choice_in_the_environment_exits_2(
    variable: str,
    value: str,
    tmp_path: Path,
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(variable, value)
    cacerts = tmp_path / "cacerts"
    cacerts.mkdir()
    code = cli.main(_loopback(tmp_path / "state", "--cacerts", str(cacerts)))
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert value in err


def test_cli_usage_error_exits_2(tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--auth", "magic"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_token_mints_a_token(tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["token", "--state-dir", str(tmp_path), "--namespace", "shop", "--service-account", "web"]
    )
    out = capsys.readouterr().out.strip()
    assert code == 0
    claims = jwt.decode(out, options={"verify_signature": False})
    assert claims["sub"] == "system:serviceaccount:shop:web"
    assert claims["aud"] == ["istio-ca"]
    assert claims["exp"] - claims["iat"] == 12 * 3600


def test_cli_token_bad_pod_binding_exits_2(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            "token",
            "--state-dir",
            str(tmp_path),
            "--namespace",
            "a",
            "--service-account",
            "b",
            "--pod-name",
            "p",
        ]
    )
    lines = _error_lines(capsys.readouterr().err)
    assert code == 2
    assert len(lines) == 1
