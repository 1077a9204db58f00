"""Flag helpers: the environment variable each flag reads, listen addresses, whole numbers, and
negative values on the command line."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca.common.flags import (
    dash_values_attached,
    env_name,
    listen_address,
    positive_int,
    refuse_negative_durations,
    whole_number,
)
from ca.errors import ConfigError


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


@given(st.integers(min_value=-50, max_value=50), st.sampled_from(["", " ", "\t"]))
def test_a_whole_number_in_range_is_read_and_one_outside_is_refused(value: int, pad: str) -> None:
    text = f"{pad}{value}{pad}"
    if 1 <= value <= 20:
        assert whole_number(text, "--n", minimum=1, maximum=20) == value
        return
    with pytest.raises(ConfigError) as caught:
        whole_number(text, "--n", minimum=1, maximum=20)
    assert caught.value.message == f"--n {value} is out of range; give a whole number from 1 to 20"


@given(st.text(max_size=12).filter(lambda t: re.fullmatch(r"[+-]?[0-9]+", t.strip()) is None))
def test_text_that_is_no_whole_number_is_refused_with_the_flag_and_the_range(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        whole_number(text, "--limit", minimum=1, maximum=10, hint=" (or export)")
    assert caught.value.message == f"--limit must be a whole number from 1 to 10 (or export), not {text!r}"


@pytest.mark.parametrize("text", ["1.5", "1e3", "", "ten", "0x10", "1_000", "١٢", "²"])
def test_numbers_in_other_shapes_are_not_whole_numbers(text: str) -> None:
    with pytest.raises(ConfigError, match="must be a whole number of 0 or more"):
        positive_int(text, "--token-cache-size")


@pytest.mark.parametrize(("text", "expected"), [("0", 0), ("16", 16), (" 10000 ", 10000)])
def test_counts_start_at_zero(text: str, expected: int) -> None:
    assert positive_int(text, "--grpc-workers") == expected


def test_a_negative_count_is_out_of_range() -> None:
    with pytest.raises(ConfigError) as caught:
        positive_int("-4", "--grpc-workers")
    assert caught.value.message == "--grpc-workers -4 is out of range; give a whole number of 0 or more"


def test_a_number_too_long_to_convert_is_out_of_range() -> None:
    with pytest.raises(ConfigError) as caught:
        whole_number("9" * 5000, "--limit", minimum=1, maximum=10)
    assert (
        caught.value.message == "--limit has 5000 digits, far out of range; give a whole number from 1 to 10"
    )


TAKES_VALUE = frozenset({"--max-ttl", "--limit", "--namespace"})


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["serve", "--max-ttl", "-3h"], ["serve", "--max-ttl=-3h"]),
        (["--limit", "-3", "--namespace", "-.5"], ["--limit=-3", "--namespace=-.5"]),
        (["--max-ttl", "--limit", "5"], ["--max-ttl", "--limit", "5"]),  # a missing value stays missing
        (["--max-ttl", "-x"], ["--max-ttl", "-x"]),  # shaped like a flag: argparse says what it is
        (["--version", "-3"], ["--version", "-3"]),  # takes no value
        (["-3h", "--max-ttl", "1h"], ["-3h", "--max-ttl", "1h"]),
        (["--max-ttl=-1h", "-2h"], ["--max-ttl=-1h", "-2h"]),
    ],
)
def test_negative_values_are_joined_to_the_flag_before_them(argv: list[str], expected: list[str]) -> None:
    assert dash_values_attached(argv, TAKES_VALUE) == expected


WORDS = ["--max-ttl", "--limit", "--on", "-3h", "-0", "-.5", "5", "x", "-"]


@given(st.lists(st.sampled_from(WORDS), max_size=8))
def test_joining_keeps_every_word_in_order(argv: list[str]) -> None:
    joined = dash_values_attached(argv, TAKES_VALUE)
    assert [part for word in joined for part in word.split("=")] == argv
    left_apart = [
        (a, b) for a, b in itertools.pairwise(joined) if a in TAKES_VALUE and b[:2] in {"-3", "-0", "-."}
    ]
    assert left_apart == []


@pytest.mark.parametrize("word", ["--max-ttl=-3h", "--ttl=-0", "--once-timeout= -1s", "--ledger-linger=-"])
def test_a_negative_duration_is_refused(word: str) -> None:
    with pytest.raises(ConfigError) as caught:
        refuse_negative_durations(["serve", word])
    flag, _, value = word.partition("=")
    assert caught.value.message == (
        f"{flag} cannot be negative, got {value}; give a duration such as 90s, 30m, 24h or 90d"
    )


@pytest.mark.parametrize("words", [["--max-ttl=3h"], ["--limit=-3"], ["--max-ttl", "-3h"], ["-3h"]])
def test_other_words_are_left_to_their_checks(words: list[str]) -> None:
    refuse_negative_durations(words)
