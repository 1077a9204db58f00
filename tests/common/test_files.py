"""Atomic writes: the mode, the replacement by rename, no temporary file left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ca.common.files import PUBLIC_MODE, SECRET_MODE, atomic_write


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name not in keep)


@pytest.mark.parametrize("mode", [SECRET_MODE, PUBLIC_MODE, 0o640])
def test_atomic_write_sets_the_mode(mode: int, tmp_path: Path) -> None:
    path = tmp_path / "file"
    atomic_write(path, b"data", mode=mode)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert path.read_bytes() == b"data"
    assert _leftovers(tmp_path, {"file"}) == []


def test_atomic_write_default_mode_is_public(tmp_path: Path) -> None:
    atomic_write(tmp_path / "f", b"x")
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == PUBLIC_MODE


def test_atomic_write_mode_ignores_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "f", b"x", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_atomic_write_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"old contents that are longer")
    os.chmod(path, 0o666)
    atomic_write(path, b"new", mode=SECRET_MODE)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == SECRET_MODE
    assert _leftovers(tmp_path, {"file"}) == []


def test_atomic_write_replaces_by_rename(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"old")
    reader = path.open("rb")
    try:
        atomic_write(path, b"new")
        assert reader.read() == b"old"
    finally:
        reader.close()
    assert path.read_bytes() == b"new"


def test_atomic_write_creates_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "file"
    atomic_write(path, b"x")
    assert path.read_bytes() == b"x"


def test_failed_atomic_write_leaves_no_temp_file_and_the_old_contents(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write(path, "not bytes", mode=SECRET_MODE)  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert _leftovers(tmp_path, {"file"}) == []


def test_many_atomic_writes_leave_only_the_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    for i in range(20):
        atomic_write(path, str(i).encode())
    assert path.read_bytes() == b"19"
    assert _leftovers(tmp_path, {"file"}) == []
