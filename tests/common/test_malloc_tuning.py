"""The malloc tuning: once the CA has asked, blocks of 8 KiB or more that the heap's free memory
cannot hold are mapped on their own (so only their used pages are resident) instead of growing
the heap; an operator's own threshold is left alone. Each case runs in a fresh interpreter: the
setting lasts as long as the process."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys

import pytest

from ca.common.malloc_tuning import MMAP_THRESHOLD_BYTES, operator_chose_threshold

pytestmark = pytest.mark.skipif(
    not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc's malloc only (mallinfo2)"
)

BLOCKS = 64

# Asks (or not) with the environment given, then allocates BLOCKS blocks of `size` bytes and says
# how many malloc mapped on its own (mallinfo2's count of mapped blocks). The first few may
# still come from the free end of the heap.
PROBE = """
import ctypes, json, sys
from ca.common.malloc_tuning import map_large_blocks_apart

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
ask, environ, size, count = json.loads(sys.argv[1])
changed = map_large_blocks_apart(environ) if ask else False
before = libc.mallinfo2().hblks
blocks = [libc.malloc(size) for _ in range(count)]
mapped = libc.mallinfo2().hblks - before
for block in blocks:
    libc.free(block)
print(json.dumps({"changed": changed, "mapped": mapped}))
"""


def probe(*, ask: bool, environ: dict[str, str] | None = None, size: int = 16 * 1024) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([ask, environ or {}, size, BLOCKS])],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, int] = json.loads(done.stdout)
    return result


def test_without_the_tuning_16_kib_blocks_grow_the_heap() -> None:
    assert probe(ask=False) == {"changed": False, "mapped": 0}


def test_once_asked_blocks_of_the_threshold_or_more_are_mapped_on_their_own() -> None:
    for size in (16 * 1024, MMAP_THRESHOLD_BYTES):
        tuned = probe(ask=True, size=size)
        assert tuned["changed"] and tuned["mapped"] >= BLOCKS // 2


def test_smaller_blocks_still_come_from_the_heap() -> None:
    assert probe(ask=True, size=MMAP_THRESHOLD_BYTES // 2) == {"changed": True, "mapped": 0}


@pytest.mark.parametrize(
    "environ",
    [{"MALLOC_MMAP_THRESHOLD_": "131072"}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}],
)
def test_an_operators_own_threshold_is_kept(environ: dict[str, str]) -> None:
    assert operator_chose_threshold(environ)
    assert probe(ask=True, environ=environ) == {"changed": False, "mapped": 0}


def test_other_glibc_tunables_do_not_count_as_a_threshold() -> None:
    assert not operator_chose_threshold({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
