"""glibc's malloc, tuned for a server holding thousands of TLS connections.

Each connection gRPC accepts keeps buffers of which it touches only a part: two 17 KiB buffers
between BoringSSL and the socket (a TLS record at a time goes through them), and 8 KiB slices
for the socket read it waits on and for its encryption staging. Taken from the heap, such a
buffer mostly lands on memory that earlier requests already touched, and all of it counts as
resident; mapped on its own, only the pages it uses do. glibc maps a block on its own when the
heap's free memory cannot hold it and the block is over a threshold (128 KiB or more); the CA
lowers that to 8 KiB, so those blocks are mapped instead of growing the heap. With
scripts/bench_rotate.py's 3,000 idle control streams that is about 11 KiB less per stream. Each
mapped block costs an mmap and a munmap, about one per request or socket read; the mappings
merge, so the CA's map count stays in the hundreds.

An operator who sets MALLOC_MMAP_THRESHOLD_ or glibc.malloc.mmap_threshold in GLIBC_TUNABLES
keeps their value. Elsewhere than glibc nothing changes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
MMAP_THRESHOLD_BYTES = 8 * 1024


def operator_chose_threshold(environ: Mapping[str, str]) -> bool:
    return "MALLOC_MMAP_THRESHOLD_" in environ or "glibc.malloc.mmap_threshold" in environ.get(
        "GLIBC_TUNABLES", ""
    )


def map_large_blocks_apart(environ: Mapping[str, str]) -> bool:
    """Have malloc map blocks of MMAP_THRESHOLD_BYTES or more on their own rather than grow the
    heap for them, in this process only (its children start with glibc's defaults). Call before
    the gRPC server starts: blocks allocated earlier stay where they are. False if nothing
    changed."""
    if operator_chose_threshold(environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
