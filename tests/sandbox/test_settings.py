from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from ca.cli.main import parse_command_line
from ca.errors import ConfigError
from ca.sandbox.settings import UpConfig, up_config


def config(*words: str, environ: dict[str, str] | None = None) -> UpConfig:
    return up_config(parse_command_line(["up", *words], environ or {}))


def test_defaults_a_temporary_directory_short_certificates_and_a_call_a_second() -> None:
    assert config() == UpConfig(
        state_dir=None, cert_ttl=timedelta(minutes=4), call_interval=timedelta(seconds=1)
    )


def test_a_state_dir_is_kept_and_flags_are_read() -> None:
    cfg = config("--state-dir", "sb", "--cert-ttl", "90s", "--call-interval", "250ms")
    assert cfg == UpConfig(
        state_dir=Path("sb"), cert_ttl=timedelta(seconds=90), call_interval=timedelta(milliseconds=250)
    )


def test_the_state_dir_is_not_taken_from_the_ca_setting_in_the_environment() -> None:
    assert config(environ={"MESHCA_STATE_DIR": "/var/lib/meshca"}).state_dir is None


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["--cert-ttl", "10s"], "--cert-ttl '10s' is outside 30s to 1d"),
        (["--cert-ttl", "2d"], "--cert-ttl '2d' is outside 30s to 1d"),
        (["--call-interval", "10ms"], "--call-interval '10ms' is outside 100ms to 1m"),
        (["--cert-ttl", "soon"], "'soon' is not a duration"),
    ],
)
def test_durations_out_of_range_say_the_range(words: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(*words)
