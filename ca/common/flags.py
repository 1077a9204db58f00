"""Flags that can also be set from the environment, and the value parsers every command shares.

Every flag `--some-flag` can also be set as `MESHCA_SOME_FLAG`; a flag given on
the command line wins. This is the only module that reads `os.environ`
(`environment()`); the command line passes what it read to each command.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Collection, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from ca.errors import ConfigError

if TYPE_CHECKING:
    Subcommands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
    """What `add_subparsers()` returns: each command adds its own parser to it."""
else:
    Subcommands = argparse._SubParsersAction

DEFAULT_STATE_DIR = "./meshca-state"
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() would also take '١٢' and '1_000'

# The flags whose value is a length of time (ca.common.durations), in whichever command has them.
DURATION_FLAGS = frozenset(
    {
        "--default-ttl",
        "--max-ttl",
        "--ttl",
        "--token-leeway",
        "--ledger-checkpoint-interval",
        "--ledger-retention",
        "--ledger-linger",
        "--crl-validity",
        "--once-timeout",
        "--grace",
        "--spread",
        "--leader-lease-duration",
        "--leader-renew-deadline",
        "--leader-retry-period",
        "--ca-signing-ttl",
        "--ca-root-ttl",
        "--ca-ack-wait",
        "--ca-root-publish",
        "--wait",
        "--cert-ttl",
        "--call-interval",
    }
)
_DASH_VALUE = re.compile(r"-[0-9.]")  # no flag starts so: a negative value such as -3h or -0.5

PORTS_FILE_HELP = (
    "once every listener is bound, write their ports to this file as one JSON object (a listen "
    "address with port 0 gets a free port); removed at exit"
)


def env_name(flag: str) -> str:
    return "MESHCA_" + flag.lstrip("-").replace("-", "_").upper()


def listen_address(text: str) -> str | None:
    """`:15012` -> `0.0.0.0:15012`; `off` or empty disables the listener."""
    text = text.strip()
    if text in ("", "off", "none"):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{text!r} is not a listen address; write it as HOST:PORT or :PORT")
    return f"{host or '0.0.0.0'}:{port}"


def split_list(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


class EnvDefaults:
    def __init__(self, parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
        self._parser = parser
        self._environ = environ

    @property
    def parser(self) -> argparse.ArgumentParser:
        return self._parser

    def add(self, flag: str, default: str | None, help_text: str, **kwargs: object) -> None:
        env = env_name(flag)
        value = self._environ.get(env)
        choices = kwargs.get("choices")
        if value is not None and isinstance(choices, list) and value not in choices:
            raise ConfigError(f"{env}={value!r} is not one of {', '.join(choices)}")
        if kwargs.get("action") == "append":
            # An append flag given on the command line replaces the environment's list
            # rather than adding to it, so the environment is applied after parsing.
            self._parser.set_defaults(**{f"{flag.lstrip('-').replace('-', '_')}_env": value})
            value = None
        elif value is None:
            value = default
        self._parser.add_argument(
            flag,
            default=value,
            help=f"{help_text} [env {env}; default {default}]",
            **kwargs,  # type: ignore[arg-type]
        )


def path_or_off(text: str | None) -> Path | None:
    return None if text is None or text.strip() in ("", "off", "none") else Path(text)


def fraction(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{flag} must be a number such as 0.5, not {text!r}") from None


def whole_number(
    text: str, flag: str, *, minimum: int = 0, maximum: int | None = None, hint: str = ""
) -> int:
    """A flag's whole number from `minimum` to `maximum` (no upper bound when None); `hint`
    follows the range in the error, such as where to turn for more."""
    span = f"from {minimum} to {maximum}" if maximum is not None else f"of {minimum} or more"
    wanted = f"a whole number {span}{hint}"
    digits = text.strip()
    if _WHOLE_NUMBER.fullmatch(digits) is None:
        raise ConfigError(f"{flag} must be {wanted}, not {text!r}")
    try:
        value = int(digits)
    except ValueError:  # past the number of digits int() converts
        raise ConfigError(f"{flag} has {len(digits)} digits, far out of range; give {wanted}") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise ConfigError(f"{flag} {value} is out of range; give {wanted}")
    return value


def positive_int(text: str, flag: str) -> int:
    """A count flag: a whole number, 0 or more."""
    return whole_number(text, flag)


def value_flags(parser: argparse.ArgumentParser) -> frozenset[str]:
    """The long flags that take a value, of `parser` and of its subcommands' parsers."""
    return frozenset(_value_flags(parser))


def _value_flags(parser: argparse.ArgumentParser) -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _value_flags(sub)
        elif action.nargs is None:
            yield from (flag for flag in action.option_strings if flag.startswith("--"))


def command_words(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """The command line as `parser` is to read it: negative values joined to their flags, and
    negative durations refused."""
    words = dash_values_attached(argv, value_flags(parser))
    refuse_negative_durations(words)
    return words


def dash_values_attached(argv: Sequence[str], takes_value: Collection[str]) -> list[str]:
    """`--max-ttl -3h` -> `--max-ttl=-3h`.

    argparse reads a word that starts with '-' as a flag unless it is a plain negative number,
    so `--max-ttl -3h` would fail with "expected one argument". Joined to its flag, the value
    reaches the flag's own check, which can say what is wrong with it.
    """
    words: list[str] = []
    for word in argv:
        if words and words[-1] in takes_value and _DASH_VALUE.match(word):
            words[-1] = f"{words[-1]}={word}"
        else:
            words.append(word)
    return words


def refuse_negative_durations(words: Sequence[str]) -> None:
    for word in words:
        flag, _, value = word.partition("=")
        if flag in DURATION_FLAGS and value.strip().startswith("-"):
            raise ConfigError(
                f"{flag} cannot be negative, got {value}; give a duration such as 90s, 30m, 24h or 90d"
            )


def audiences(args: argparse.Namespace) -> tuple[str, ...]:
    return split_list(args.audience or [args.audience_env or "istio-ca"])


def environment() -> MutableMapping[str, str]:
    """The process environment: read here and nowhere else, and passed to whatever needs it."""
    return os.environ
