"""`meshca inject` as a user runs it: files, a directory, stdin; errors; and the real API server
takes what it writes."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ca.cli.main import main
from ca.inject import settings as names

MESHCA = [sys.executable, "-m", "ca.cli"]

DEPLOYMENT = """\
# the shop's web tier
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {meshca.io/enforce-ports: "8080/http"}
    spec:
      containers:
        - name: app
          image: example.com/shop/web:1.0
          ports: [{containerPort: 8080}]
"""
SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 15006}]
"""
JOB = """\
apiVersion: batch/v1
kind: Job
metadata: {name: migrate, namespace: shop}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: migrate, image: example.com/shop/migrate:1.0}]
"""


def _run(argv: list[str], capsys: pytest.CaptureFixture[str], stdin: str = "") -> tuple[int, list[Any], str]:
    sys_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = main(["inject", *argv])
    finally:
        sys.stdin = sys_stdin
    out, err = capsys.readouterr()
    return code, list(yaml.safe_load_all(out)), err


def _containers(obj: dict[str, Any]) -> list[str]:
    return [c["name"] for c in obj["spec"]["template"]["spec"]["containers"]]


def test_a_file_of_several_documents_comes_out_injected_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "web.yaml").write_text(DEPLOYMENT + "---\n" + SERVICE + "---\n")
    code, docs, err = _run(["-f", str(tmp_path / "web.yaml")], capsys)
    assert code == 0
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]  # the empty last document dropped
    assert _containers(docs[0]) == ["app", names.AGENT, names.ENFORCE]
    assert docs[1] == yaml.safe_load(SERVICE)
    assert "warning" in err and "Deployment shop/web" in err and str(tmp_path / "web.yaml") in err


def test_the_output_injected_again_is_the_same(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "web.yaml").write_text(DEPLOYMENT)
    _, once, _ = _run(["-f", str(tmp_path / "web.yaml")], capsys)
    _, twice, _ = _run(["-f", "-"], capsys, stdin=yaml.safe_dump_all(once))
    assert twice == once


def test_a_directory_is_read_in_name_order_and_stdin_after_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "b-job.yml").write_text(JOB)
    (tmp_path / "a-web.yaml").write_text(DEPLOYMENT)
    (tmp_path / "c-service.json").write_text(yaml.safe_load(SERVICE).__repr__().replace("'", '"'))
    (tmp_path / "notes.txt").write_text("not a manifest: {")
    code, docs, _ = _run(["-f", str(tmp_path), "-f", "-"], capsys, stdin=JOB.replace("migrate", "seed"))
    assert code == 0
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("Deployment", "web"),
        ("Job", "migrate"),
        ("Service", "web"),
        ("Job", "seed"),
    ]
    assert _containers(docs[1]) == ["migrate"]  # a Job must end: only the init agent
    assert [c["name"] for c in docs[3]["spec"]["template"]["spec"]["initContainers"]] == [names.AGENT_INIT]


def test_flags_reach_the_injected_containers(capsys: pytest.CaptureFixture[str]) -> None:
    code, docs, _ = _run(
        ["-f", "-", "--image", "registry.example/meshca:1.2", "--ca-addr", "ca.mesh.svc:15012"],
        capsys,
        stdin=JOB,
    )
    init = docs[0]["spec"]["template"]["spec"]["initContainers"][0]
    assert code == 0 and init["image"] == "registry.example/meshca:1.2"
    assert init["args"][init["args"].index("--ca-addr") + 1] == "ca.mesh.svc:15012"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p / "missing.yaml", "no such file or directory; name a manifest file"),
        (
            lambda p: (p / "bad.yaml").write_text("kind: Pod\nspec: [unclosed\n") and p / "bad.yaml",
            "not valid YAML at line",
        ),
        (lambda p: (p / "bin.yaml").write_bytes(b"\xff\xfe\x00") and p / "bin.yaml", "cannot be read"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "holds no *.yaml"),
        (
            lambda p: (
                (p / "ports.yaml").write_text(DEPLOYMENT.replace("8080/http", "eighty")) and p / "ports.yaml"
            ),
            "ports.yaml: Deployment shop/web: annotation meshca.io/enforce-ports='eighty'",
        ),
    ],
)
def test_bad_input_exits_2_with_what_to_do_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: Any, message: str
) -> None:
    (tmp_path / "good.yaml").write_text(DEPLOYMENT)
    path = setup(tmp_path)
    sys_stdin = sys.stdin
    code = main(["inject", "-f", str(tmp_path / "good.yaml"), "-f", str(path)])
    sys.stdin = sys_stdin
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""  # no half output
    assert message in err and err.startswith("meshca: error: ")


def test_the_command_runs_as_a_process(tmp_path: Path) -> None:
    done = subprocess.run(
        [*MESHCA, "inject", "-f", "-"], input=DEPLOYMENT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert _containers(yaml.safe_load(done.stdout)) == ["app", names.AGENT, names.ENFORCE]
    missing = subprocess.run([*MESHCA, "inject"], capture_output=True, text=True, check=False)
    assert missing.returncode == 2 and "-f/--filename" in missing.stderr
