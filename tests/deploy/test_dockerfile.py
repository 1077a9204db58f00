"""deploy/Dockerfile installs meshca exactly as the README's install command does (no image can be
built here, so the steps are compared), from an official slim Python, as a non-root user, with
`meshca` as the entrypoint."""

from __future__ import annotations

import json
import re
import shlex

from tests.deploy.install import DEPLOY, OVERLAYS, REPO, ca_container, find, overlay, render

DOCKERFILE = DEPLOY / "Dockerfile"
README = REPO / "README.md"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    found = []
    for line in lines:
        word, _, rest = line.partition(" ")
        found.append((word.upper(), rest.strip()))
    return found


def steps(command: str) -> list[list[str]]:
    """A shell `a && b && c` as its commands, each split into words."""
    return [shlex.split(part) for part in re.split(r"\s*&&\s*", command.strip()) if part]


def readme_install_steps() -> list[list[str]]:
    """The README's first command (install and run the CA), without its last step (the run)."""
    block = re.search(r"```sh\n(.*?)\n```", README.read_text(), re.S)
    assert block is not None, "the README starts without a ```sh block"
    command = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(command) == 1, command
    found = steps(command[0])
    assert found[-1][0].endswith("meshca"), (
        f"the README's first command does not end by running meshca: {found}"
    )
    return found[:-1]


def is_install(step: list[str]) -> bool:
    return any("venv" in word or "pip" in word for word in step)


def test_the_images_install_steps_are_the_readmes() -> None:
    run_steps = [
        s for kind, rest in instructions(DOCKERFILE.read_text()) if kind == "RUN" for s in steps(rest)
    ]
    installs = [s for s in run_steps if is_install(s)]
    assert installs == readme_install_steps()
    assert ["python3", "-m", "venv", ".venv"] in installs
    assert any("requirements.lock" in s for s in installs)  # locked, with hashes


def test_the_image_copies_what_the_install_reads_before_it_runs() -> None:
    copied: set[str] = set()
    for kind, rest in instructions(DOCKERFILE.read_text()):
        if kind == "COPY":
            copied.update(w.rstrip("/") for w in shlex.split(rest)[:-1])
        elif kind == "RUN" and "requirements.lock" in rest:
            assert "requirements.lock" in copied
        elif kind == "RUN" and "-e ." in rest:
            assert {"pyproject.toml", "README.md", "ca"} <= copied  # the package and its readme field
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {"!requirements.lock", "!pyproject.toml", "!README.md", "!ca/"} <= set(ignore)


def test_an_official_slim_python_a_non_root_user_and_meshca_as_the_entrypoint() -> None:
    parsed = instructions(DOCKERFILE.read_text())
    assert [rest for kind, rest in parsed if kind == "FROM"] in (["python:3.11-slim"], ["python:3.12-slim"])
    users = [rest for kind, rest in parsed if kind == "USER"]
    assert users, "the image runs as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root uid (runAsNonRoot can check only numbers)"
    assert json.loads(next(rest for kind, rest in parsed if kind == "ENTRYPOINT")) == ["meshca"]
    # The manifests run the image as that user.
    for name in OVERLAYS:
        manifests = render(overlay(name))
        pod = find(manifests, "Deployment", "meshca")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == int(uid)
        assert pod["securityContext"]["runAsGroup"] == int(gid or uid)
        assert ca_container(manifests)["image"] == "meshca:0.1.0"


def test_the_image_compiles_meshcas_bytecode_before_it_stops_being_root() -> None:
    """At run time the image sets PYTHONDONTWRITEBYTECODE and runs as a user who cannot write to
    ca/: bytecode not compiled into the image would be compiled again at every start."""
    parsed = instructions(DOCKERFILE.read_text())
    kinds = [kind for kind, _ in parsed]
    compile_at = next(
        i
        for i, (kind, rest) in enumerate(parsed)
        if kind == "RUN" and ["python3", "-m", "compileall", "-q", "ca"] in steps(rest)
    )
    copied_at = next(
        i for i, (kind, rest) in enumerate(parsed) if kind == "COPY" and shlex.split(rest)[0] == "ca"
    )
    assert copied_at < compile_at < kinds.index("USER")
    env = " ".join(rest for kind, rest in parsed if kind == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # why the step is needed; if this goes, so may it
