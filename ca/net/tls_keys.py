"""Loading a certificate chain and its key, held in memory, into an `ssl.SSLContext`.

`SSLContext.load_cert_chain` reads only files, so the key is written to a private directory
(0700, the key 0600) for the moment of loading and removed at once.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
from pathlib import Path

from ca.common.files import SECRET_MODE


def load_chain_and_key(context: ssl.SSLContext, chain_pem: bytes, key_pem: bytes, *, prefix: str) -> None:
    """Raises ssl.SSLError, ValueError or OSError as `load_cert_chain` does."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        chain, key = directory / "chain.pem", directory / "key.pem"
        chain.write_bytes(chain_pem)
        key.touch(mode=SECRET_MODE)
        key.write_bytes(key_pem)
        context.load_cert_chain(chain, key)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
