"""The `meshca` command: one parser with a subcommand per part, each run by its own package.

Each part's flags (and its package) are imported only when that part's parser is built: a
command line that names its subcommand first gets a parser with that subcommand alone, so
`meshca agent --once on` in an init container does not import the CA server, the Kubernetes
client, the ledger or the scheduler (see `parse_command_line`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Callable, Mapping, Sequence

from ca.common import logs
from ca.common.flags import Subcommands, command_words, environment
from ca.errors import ErrorKind, MeshcaError

EXIT_CONFIG = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130

_OWNING_PARSER = "_owning_parser"


class CommandParser(argparse.ArgumentParser):
    """Reports an unknown flag with the usage of the (sub)command it was given to."""

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            owner: argparse.ArgumentParser = getattr(parsed, _OWNING_PARSER, self)
            owner.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print meshca's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("meshca")
        except PackageNotFoundError:
            installed = "unknown (not installed as a package)"
        print(f"meshca {installed}")
        parser.exit()


def _remember_owners(parser: argparse.ArgumentParser) -> None:
    """Each subcommand's parser is stored in the namespace it fills, for its own error messages."""
    parser.set_defaults(**{_OWNING_PARSER: parser})
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _remember_owners(sub)


def _serve_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    from ca.server.settings import add_serve_parser

    add_serve_parser(commands, environ)


def _agent_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    from ca.agent.settings import add_agent_parser

    add_agent_parser(commands, environ)


def _token_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    from ca.server.settings import add_token_parser

    add_token_parser(commands, environ)


def _audit_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    from ca.audit.settings import add_audit_parser

    add_audit_parser(commands, environ)


def _policy_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    from ca.policy.command import add_policy_parser

    add_policy_parser(commands, environ)


def _enforce_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    from ca.enforce.command import add_enforce_parser

    add_enforce_parser(commands, environ)


def _rotate_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    from ca.rotate.settings import add_rotate_parser

    add_rotate_parser(commands, environ)


def _revoke_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    from ca.rotate.settings import add_revoke_parser

    add_revoke_parser(commands, environ)


def _ca_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    from ca.server.settings import add_ca_parser

    add_ca_parser(commands, environ)


def _inject_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    from ca.inject.settings import add_inject_parser

    add_inject_parser(commands, environ)


def _up_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    from ca.sandbox.settings import add_up_parser

    add_up_parser(commands)


PARSERS: dict[str, Callable[[Subcommands, Mapping[str, str]], None]] = {
    "serve": _serve_parser,
    "agent": _agent_parser,
    "token": _token_parser,
    "audit": _audit_parser,
    "policy": _policy_parser,
    "enforce": _enforce_parser,
    "rotate": _rotate_parser,
    "revoke": _revoke_parser,
    "ca": _ca_parser,
    "inject": _inject_parser,
    "up": _up_parser,
}
"""Each subcommand's parser, in the order `meshca --help` lists them."""


def build_parser(environ: Mapping[str, str], only: str | None = None) -> argparse.ArgumentParser:
    """The `meshca` parser with every subcommand, or with the subcommand `only` alone."""
    parser = CommandParser(prog="meshca", description="A certificate authority for service meshes.")
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=argparse.ArgumentParser)
    for name, add_parser in PARSERS.items():
        if only is None or name == only:
            add_parser(commands, environ)
    _remember_owners(parser)
    return parser


def parse_command_line(words: Sequence[str], environ: Mapping[str, str]) -> argparse.Namespace:
    """The parsed command line. When its first word names a subcommand, that subcommand's parser
    alone reads it (its help is printed by it too); if that parser finds anything wrong, its
    message is dropped and the full parser reads the line again, so every error (an unknown
    flag, another subcommand's flag, a value out of range) reads as it always has."""
    command = words[0] if words and words[0] in PARSERS else None
    if command is not None:
        with contextlib.suppress(MeshcaError), contextlib.redirect_stderr(io.StringIO()):
            try:
                parser = build_parser(environ, only=command)
                return parser.parse_args(command_words(words, parser))
            except SystemExit as stop:
                if stop.code == 0:  # --help, printed to stdout: the same text the full parser prints
                    raise
    parser = build_parser(environ)
    return parser.parse_args(command_words(words, parser))


def _serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from ca.server.command import run_serve

    return run_serve(args, environ)


def _agent(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from ca.agent.command import run

    return run(args)


def _token(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from ca.server.command import run_token

    return run_token(args)


def _audit(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from ca.audit.command import run
    from ca.audit.settings import audit_config
    from ca.common.clock import SystemClock

    return run(audit_config(args, SystemClock().now(), environ))


def _policy(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from ca.policy.command import run

    return run(args)


def _enforce(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from ca.enforce.command import run

    return run(args)


def _rotate(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from ca.common.clock import SystemClock
    from ca.rotate.command import run
    from ca.rotate.settings import rotate_config

    clock = SystemClock()
    return run(rotate_config(args, clock.now()), clock=clock)


def _revoke(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from ca.rotate.command import run
    from ca.rotate.settings import revoke_config

    return run(revoke_config(args))


def _ca(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from ca.server.ca_command import run_ca

    return run_ca(args)


def _inject(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from ca.inject.command import run

    return run(args)


def _up(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from ca.sandbox.command import run
    from ca.sandbox.settings import up_config

    return run(up_config(args), environ, sys.argv[0])


COMMANDS: dict[str, Callable[[argparse.Namespace, Mapping[str, str]], int]] = {
    "serve": _serve,
    "agent": _agent,
    "token": _token,
    "audit": _audit,
    "policy": _policy,
    "enforce": _enforce,
    "rotate": _rotate,
    "revoke": _revoke,
    "ca": _ca,
    "inject": _inject,
    "up": _up,
}


def main(argv: Sequence[str] | None = None) -> int:
    environ = environment()
    logs.quiet_grpc_core(environ)
    try:
        try:
            args = parse_command_line(sys.argv[1:] if argv is None else argv, environ)
        except SystemExit as stop:
            return stop.code if isinstance(stop.code, int) else EXIT_CONFIG
        with logs.held_until_running():
            return COMMANDS[args.command](args, environ)
    except MeshcaError as err:
        print(f"meshca: error: {err}", file=sys.stderr)
        return EXIT_CONFIG if err.kind is ErrorKind.CONFIG else EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
