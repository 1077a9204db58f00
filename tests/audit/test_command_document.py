"""`meshca audit report --format html|markdown` as a user runs it (ca.cli.main.main): the
document to --out or to stdout, --out refused with the other formats, and the table, JSON and
CSV reports unchanged beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ca.cli.main import main
from ca.ledger.store import sqlite_url
from tests.support.compliance_mesh import MAX_TTL, REPORT_AT, ComplianceMesh, write_mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> ComplianceMesh:
    directory = tmp_path_factory.mktemp("mesh")
    return write_mesh(
        sqlite_url(directory / "state" / "ledger.db"), directory / "state", directory / "policies"
    )


def report(capsys: pytest.CaptureFixture[str], mesh: ComplianceMesh, *flags: str) -> tuple[int, str, str]:
    code = main(
        [
            "audit",
            "report",
            "--state-dir",
            str(mesh.state),
            "--at",
            REPORT_AT.isoformat(),
            "--max-ttl",
            MAX_TTL,
            *flags,
        ]
    )
    out, err = capsys.readouterr()
    return code, out, err


def test_html_to_a_file(capsys: pytest.CaptureFixture[str], mesh: ComplianceMesh, tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.html"
    code, out, err = report(
        capsys, mesh, "--format", "html", "--policies", str(mesh.policies), "--out", str(target)
    )
    assert (code, out) == (0, "")
    assert err == f"meshca: wrote the html report to {target}\n"
    page = target.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "2 of 9 identities serve traffic that is not STRICT" in page


def test_markdown_to_stdout_without_policies(
    capsys: pytest.CaptureFixture[str], mesh: ComplianceMesh
) -> None:
    code, out, _ = report(capsys, mesh, "--format", "markdown", "--since", "2026-11-19")
    assert code == 0
    assert out.startswith("# meshca compliance report\n\n**Period:** 2026-11-19 00:00 UTC to")
    assert "Not assessed: give `--policies DIR` or `--policies kube`." in out


def test_out_goes_only_with_a_document(
    capsys: pytest.CaptureFixture[str], mesh: ComplianceMesh, tmp_path: Path
) -> None:
    code, out, err = report(capsys, mesh, "-o", "json", "--out", str(tmp_path / "r.json"))
    assert (code, out) == (2, "")
    assert "--out writes a document: give it with --format html or markdown" in err


def test_the_table_json_and_csv_reports_are_unchanged(
    capsys: pytest.CaptureFixture[str], mesh: ComplianceMesh
) -> None:
    code, out, _ = report(capsys, mesh, "-o", "json")
    assert code == 0
    data = json.loads(out)
    assert len(data["identities"]) == 10 and data["violations_total"] == 9
    code, out, _ = report(capsys, mesh, "--output", "csv")
    assert code == 0 and out.startswith("section,namespace,spiffe_id,")
    code, out, _ = report(capsys, mesh)
    assert code == 0 and out.startswith("Certificates by namespace and identity at")


def test_a_missing_policy_directory_is_a_config_error(
    capsys: pytest.CaptureFixture[str], mesh: ComplianceMesh, tmp_path: Path
) -> None:
    code, _, err = report(capsys, mesh, "--format", "markdown", "--policies", str(tmp_path / "absent"))
    assert code == 2
    assert "meshca: error:" in err


def test_an_out_path_that_cannot_be_written_is_refused_with_what_to_do(
    capsys: pytest.CaptureFixture[str], mesh: ComplianceMesh, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, out, err = report(capsys, mesh, "--format", "html", "--out", str(blocker / "report.html"))
    assert (code, out) == (2, "")
    assert err.startswith(f"meshca: error: cannot write the report to {blocker / 'report.html'} (")
    assert "give --out a path you may write" in err
    assert "Traceback" not in err
