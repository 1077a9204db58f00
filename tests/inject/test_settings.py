"""The injected command lines are ones meshca's own parser takes, and mean what injection says."""

from __future__ import annotations

from pathlib import Path

import pytest

from ca.agent.settings import agent_config
from ca.cli.main import build_parser
from ca.common.flags import command_words
from ca.enforce.settings import config_from_args
from ca.errors import ConfigError
from ca.inject import settings as names
from ca.inject.pod import agent_args, enforce_args
from ca.inject.settings import InjectSettings, inject_settings
from ca.policy.ports import InboundPort


def _parse(words: list[str], environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    parser = build_parser(environ or {})
    return parser.parse_args(command_words(words, parser))


def test_the_init_agent_writes_once_into_the_certificate_volume() -> None:
    config = agent_config(_parse(agent_args(InjectSettings(), once=True)))
    assert config.once
    assert config.output_dir == Path(names.CERTS_DIR)
    assert config.ca_root == Path(names.ROOT_DIR) / names.ROOT_CERT_KEY
    assert config.token_file == Path(names.TOKEN_DIR) / names.TOKEN_FILE
    assert config.sds_socket is None and config.workload_api_socket is None and config.health_listen is None
    assert config.ca_address == "meshca.istio-system.svc:15012"
    assert (
        config.ca_control_address == "meshca.istio-system.svc:15013"
    )  # the renewal port, found by the agent


def test_the_sidecar_agent_keeps_running_with_its_socket_and_probe_port() -> None:
    settings = InjectSettings(
        cluster_id="east", ca_server_name="meshca.istio-system.svc", agent_args=("--ttl", "12h")
    )
    config = agent_config(_parse(agent_args(settings, once=False)))
    assert not config.once
    assert config.workload_api_socket == Path(names.WORKLOAD_API_SOCKET)
    assert config.health_listen == f"0.0.0.0:{names.AGENT_HEALTH_PORT}"  # the kubelet probes the pod IP
    assert config.cluster_id == "east" and config.ca_server_name == "meshca.istio-system.svc"
    assert config.ttl.total_seconds() == 12 * 3600


def test_the_enforcer_listens_in_front_of_the_ports_with_the_pods_labels() -> None:
    ports = [InboundPort(15006, 8080, "http"), InboundPort(15007, 9090, "tcp")]
    words = enforce_args(InjectSettings(), ports, {"app": "web", "version": "v1"})
    config = config_from_args(_parse(words, {"MESHCA_NAMESPACE": "shop"}))  # the fieldRef's value
    assert config.inbound == tuple(ports)
    assert config.cert_dir == Path(names.CERTS_DIR)
    assert config.workload.namespace == "shop"
    assert config.workload.labels == {"app": "web", "version": "v1"}
    assert config.policies == "kube"


def test_the_paths_and_ports_are_meshcas_own_defaults() -> None:
    agent = _parse(["agent"])
    enforce = _parse(["enforce", "--inbound", "1:2"])
    assert agent.token_file == f"{names.TOKEN_DIR}/{names.TOKEN_FILE}"
    assert agent.workload_api_socket == names.WORKLOAD_API_SOCKET
    assert agent.health_listen.endswith(f":{names.AGENT_HEALTH_PORT}")
    assert enforce.metrics_listen == f":{names.ENFORCE_METRICS_PORT}"


def test_flags_make_the_settings() -> None:
    args = _parse(
        [
            "inject", "-f", "-", "--image", "registry.example/meshca:1.2",
            "--image-pull-policy", "IfNotPresent",
            "--trust-domain", "prod.example", "--agent-arg=--ttl=12h", "--agent-arg=--key-type=ec-p384",
            "--requests-cpu", "", "--run-as-user", "1337", "--token-expiration-seconds", "7200",
        ]
    )  # fmt: skip
    settings = inject_settings(args)
    assert settings.image == "registry.example/meshca:1.2"
    assert settings.image_pull_policy == "IfNotPresent"
    assert settings.trust_domain == "prod.example"
    assert settings.agent_args == ("--ttl=12h", "--key-type=ec-p384")
    assert settings.resources == {"requests": {"memory": "64Mi"}, "limits": {"memory": "256Mi"}}
    assert settings.run_as_user == 1337
    assert settings.token_expiration_seconds == 7200


def test_the_defaults_of_the_flags_are_the_settings_defaults() -> None:
    assert inject_settings(_parse(["inject", "-f", "-"])) == InjectSettings()


def test_the_environment_sets_the_flags() -> None:
    args = _parse(
        ["inject", "-f", "-"], {"MESHCA_IMAGE": "meshca:9", "MESHCA_AGENT_ARG": "--ttl=1h --once-timeout=2m"}
    )
    settings = inject_settings(args)
    assert settings.image == "meshca:9"
    assert settings.agent_args == ("--ttl=1h", "--once-timeout=2m")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--token-expiration-seconds", "60"], "at least 600|10 minutes"),
        (["--image-pull-policy", "Sometimes"], "Always, IfNotPresent or Never"),
        (["--run-as-user", "0"], "non-root"),
        (["--trust-domain", "Not A Domain"], "trust domain"),
    ],
)
def test_wrong_flags_say_what_to_give(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        inject_settings(_parse(["inject", "-f", "-", *flags]))
