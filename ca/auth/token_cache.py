"""A bounded cache of verified tokens, each entry valid until a deadline.

Sidecars present the same token on every renewal and mass pod starts repeat
tokens across retries, so re-verifying a token already verified is wasted work.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

from ca.auth.base import Caller


def token_key(token: str) -> bytes:
    # Entries are keyed by digest so the cache never holds usable tokens.
    return hashlib.sha256(token.encode()).digest()


class TokenCache:
    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[bytes, tuple[Caller, datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes, now: datetime) -> Caller | None:
        if self._max <= 0:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            caller, valid_until = entry
            if now >= valid_until:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return caller

    def put(self, key: bytes, caller: Caller, valid_until: datetime) -> None:
        if self._max <= 0:
            return
        with self._lock:
            self._entries[key] = (caller, valid_until)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def through(self, token: str, now: datetime, verify: Callable[[], tuple[Caller, datetime]]) -> Caller:
        """The cached caller for `token`, or `verify()`'s, kept until the deadline it gives."""
        key = token_key(token)
        cached = self.get(key, now)
        if cached is not None:
            return cached
        caller, valid_until = verify()
        self.put(key, caller, valid_until)
        return caller

    def __len__(self) -> int:
        return len(self._entries)
