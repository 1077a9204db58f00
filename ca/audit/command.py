"""Running `meshca audit`: open the ledger for reading, run one query, print the result.

Results go to stdout, notes about them (nothing matched, more matched than the
limit) to stderr, so a pipe gets only data. A long verify or export shows its
progress on stderr when that is a terminal (ca.audit.progress_view); an export whose
entries go to the terminal shows none, as the entries are progress enough. Exit
status: 0 done, 1 verification failed or a serial not found, 2 bad flags or no ledger.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from ca.audit import render, sources
from ca.audit.settings import DOCUMENT_FORMATS, AuditConfig
from ca.common.files import atomic_write
from ca.common.progress import ProgressCallback
from ca.errors import ConfigError, InvalidRequestError, LedgerTamperedError
from ca.ledger import queries
from ca.ledger.checkpoint import Checkpoint
from ca.ledger.ledger import HEAD_FILE
from ca.ledger.live_verify import (
    UnreadableHead,
    verify_at_head,
)
from ca.ledger.reader import LedgerReader, open_reader
from ca.ledger.verify import VerifyReport

if TYPE_CHECKING:
    from ca.audit.progress_view import ProgressBar

EXIT_OK = 0
EXIT_FAILED = 1


def terminal_width() -> int:
    return max(60, shutil.get_terminal_size((120, 24)).columns)


@contextlib.contextmanager
def _reader(cfg: AuditConfig) -> Iterator[LedgerReader]:
    reader = open_reader(cfg.ledger_url)
    try:
        yield reader
    finally:
        reader.dispose()


class _ProgressOnDemand:
    """A progress callback that draws a bar (and imports rich) only once the work reports
    progress with work left to do, so that a short run draws and imports nothing."""

    def __init__(self, description: str, stream: TextIO) -> None:
        self._description = description
        self._stream = stream
        self._bar: ProgressBar | None = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            if done >= total:
                return
            from ca.audit.progress_view import ProgressBar

            self._bar = ProgressBar(self._description, self._stream, done, total)
        else:
            self._bar.update(done, total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextlib.contextmanager
def _progress(
    cfg: AuditConfig, description: str, *, data_out: TextIO | None = None
) -> Iterator[ProgressCallback | None]:
    """A callback drawing progress on stderr if it is a terminal (and `data_out`, where the
    command writes entries as it goes, is not), else None; the bar is gone at the end."""
    stream = sys.stderr
    if not (cfg.progress and stream.isatty()) or (data_out is not None and data_out.isatty()):
        yield None
        return
    shown = _ProgressOnDemand(description, stream)
    try:
        yield shown
    finally:
        shown.close()


def _note(text: str) -> None:
    print(f"meshca: {text}", file=sys.stderr)


def _write(out: TextIO, lines: Iterable[str]) -> None:
    for line in lines:
        out.write(line if line.endswith("\n") else line + "\n")


def _entries(cfg: AuditConfig, out: TextIO, entries: list[dict[str, object]]) -> None:
    if cfg.output == "json":
        _write(out, (render.json_line(e) for e in entries))
    elif cfg.output == "csv":
        _write(out, render.csv_lines(render.ENTRY_FIELDS, entries))
    else:
        _write(out, render.entries_table(entries, terminal_width()))


def _list(cfg: AuditConfig, out: TextIO) -> int:
    with _reader(cfg) as reader:
        entries, more = queries.list_page(reader, cfg.filter, cfg.limit)
    _entries(cfg, out, entries)
    if not entries:
        _note("no ledger entries match the filters")
    elif more:
        _note(
            f"showing the newest {len(entries)} matching entries; more match: narrow the filters, "
            f"raise --limit (up to {queries.MAX_LIMIT}) or use 'meshca audit export'"
        )
    return EXIT_OK


def _show(cfg: AuditConfig, out: TextIO) -> int:
    assert cfg.serial is not None
    with _reader(cfg) as reader:
        entries = queries.find_serial(reader, cfg.serial)
    if not entries:
        _note(
            f"no ledger entry names serial {cfg.serial}; check the number "
            "('openssl x509 -noout -serial -in cert.pem') and that --ledger is this CA's ledger"
        )
        return EXIT_FAILED
    if cfg.output == "table":
        for index, entry in enumerate(entries):
            _write(out, ([""] if index else []) + render.entry_detail(entry))
    else:
        _entries(cfg, out, entries)
    return EXIT_OK


def _export(cfg: AuditConfig, out: TextIO) -> int:
    written = 0

    def counted(entries: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        nonlocal written
        for entry in entries:
            yield entry
            written += 1

    with _reader(cfg) as reader:
        try:
            with _progress(cfg, "exporting", data_out=out) as progress:
                entries = counted(queries.export(reader, cfg.filter, progress=progress))
                if cfg.output == "csv":
                    _write(out, render.csv_lines(render.ENTRY_FIELDS, entries))
                else:
                    _write(out, (render.json_line(e) for e in entries))
        except LedgerTamperedError as err:
            if written:
                _note(
                    f"the export stopped before entry {err.seq}; the {written} entries written "
                    "before it each passed the check"
                )
            raise
    return EXIT_OK


def _report(cfg: AuditConfig, out: TextIO) -> int:
    if cfg.output in DOCUMENT_FORMATS:
        return _document(cfg, out)
    with _reader(cfg) as reader:
        result = queries.report(reader, cfg.at, cfg.policy, cfg.filter)
    if cfg.output == "json":
        out.write(render.json_line(render.report_dict(result)) + "\n")
    elif cfg.output == "csv":
        _write(out, render.csv_lines(render.report_csv_fields(result), render.report_csv_rows(result)))
    else:
        _write(out, render.report_table(result, terminal_width()))
    return EXIT_OK


def _document(cfg: AuditConfig, out: TextIO) -> int:
    """The report as a document (ca.audit.document): to --out, or to `out`."""
    from ca.audit.document import build_document
    from ca.audit.document_render import render_html, render_markdown

    with _reader(cfg) as reader:
        document = build_document(sources.gather(cfg, reader))
    text = render_html(document) if cfg.output == "html" else render_markdown(document)
    if cfg.out is None:
        out.write(text)
        return EXIT_OK
    try:
        atomic_write(cfg.out, text.encode())
    except OSError as err:
        raise ConfigError(
            f"cannot write the report to {cfg.out} ({err}); give --out a path you may write"
        ) from err
    _note(f"wrote the {cfg.output} report to {cfg.out}")
    return EXIT_OK


def _external_heads(cfg: AuditConfig) -> tuple[list[Checkpoint], list[str]]:
    """The signed heads kept outside the database and where they were found."""
    found = sources.external_heads(cfg)
    return [head for head, _ in found], [where for _, where in found]


def _verify(cfg: AuditConfig, out: TextIO) -> int:
    found: list[str] = []
    with _reader(cfg) as reader:  # first: with no ledger there, that is what to say
        key = sources.verify_key(cfg)
        try:
            heads, found = _external_heads(cfg)
        except UnreadableHead as err:
            result = VerifyReport(0, 0, None, str(err))
        else:
            with _progress(cfg, "verifying") as progress:
                result = verify_at_head(reader, key, heads, progress=progress)
    if cfg.output == "json":
        out.write(render.json_line(render.verify_dict(result, found)) + "\n")
    else:
        out.write(result.summary() + "\n")
        if found:
            out.write(f"signed heads kept outside the database: {', '.join(found)}\n")
        elif result.ok:
            where = str(cfg.state_dir / HEAD_FILE)
            if cfg.kubeconfig is not None:
                where += f" or ConfigMap {cfg.ca_namespace}/meshca-ledger-head"
            out.write(
                f"note: no signed head kept outside the database was found (looked for {where}); "
                "without one, a rollback of the whole database cannot be detected\n"
            )
    return EXIT_OK if result.ok else EXIT_FAILED


ACTIONS: dict[str, Callable[[AuditConfig, TextIO], int]] = {
    "list": _list,
    "show": _show,
    "export": _export,
    "report": _report,
    "verify": _verify,
}


def run(cfg: AuditConfig, out: TextIO | None = None) -> int:
    try:
        return ACTIONS[cfg.action](cfg, out or sys.stdout)
    except InvalidRequestError as err:
        raise ConfigError(err.message) from err
    except BrokenPipeError:
        # The reader of the output went away (`| head`): not an error. Point stdout at
        # /dev/null so that the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
