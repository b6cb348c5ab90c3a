"""A small thread-safe LRU cache bounded by the total size of its values."""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["LRUCache"]


def _default_size(value: Any) -> int:
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    return sys.getsizeof(value)


class LRUCache:
    """Least-recently-used cache whose values add up to at most ``max_bytes``.

    Parameters
    ----------
    max_bytes
        Bound on the sum of ``sizeof(value)``; the oldest entries go first.
    sizeof
        Size of a value in bytes (``len`` for bytes, ``sys.getsizeof`` otherwise).

    Examples
    --------
    >>> cache = LRUCache(10)
    >>> cache.put("a", b"12345"); cache.put("b", b"12345"); cache.put("c", b"1")
    >>> cache.get("a") is None, cache.get("c")
    (True, b'1')
    """

    def __init__(self, max_bytes: int, sizeof: Callable[[Any], int] = _default_size):
        self.max_bytes = int(max_bytes)
        self.sizeof = sizeof
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        """The value of ``key`` (and mark it recent), or ``None``."""
        with self._lock:
            item = self._data.get(key)
            if item is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value``; values larger than the whole bound are not kept."""
        size = int(self.sizeof(value))
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return
            self._data[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and self._data:
                _, (_, dropped) = self._data.popitem(last=False)
                self._bytes -= dropped

    @property
    def nbytes(self) -> int:
        """Total size of the values held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        """Drop everything."""
        with self._lock:
            self._data.clear()
            self._bytes = 0
