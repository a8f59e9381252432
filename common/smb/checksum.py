"""Streaming checksums of the bytes a copy reads, by algorithm name.

``new_hasher(name)`` returns an object with ``update(bytes)`` and ``hexdigest()``. The
default, ``xxh3_128``, was chosen by measurement on the lab machine (docs/checksums.md:
about 10x faster than SHA-256, so hashing never limits a copy); ``sha256`` is offered
for audits that need a cryptographic hash, and ``crc64nvme`` for comparison with tools
that report CRC64 (the NVMe/Azure polynomial).

This module must never read files itself nor pick an algorithm silently: an unknown
name is an error. ``python -m common.smb.checksum`` re-measures the candidates.
"""

from __future__ import annotations

import hashlib
import os
import time

import anycrc
import xxhash

DEFAULT_ALGORITHM = "xxh3_128"


class _Crc64:
    """CRC-64/NVME as a streaming hasher (anycrc computes it incrementally)."""

    _model = None

    def __init__(self) -> None:
        if _Crc64._model is None:
            _Crc64._model = anycrc.Model("CRC64-NVME")
        self._value: int | None = None

    def update(self, data) -> None:
        """Feed the next bytes."""
        model = _Crc64._model
        self._value = model.calc(data) if self._value is None else model.calc(data, self._value)

    def hexdigest(self) -> str:
        """The CRC of every byte fed so far, as 16 hex digits."""
        if self._value is None:
            self._value = _Crc64._model.calc(b"")
        return f"{self._value:016x}"


_FACTORIES = {
    "xxh3_128": xxhash.xxh3_128,
    "xxh3_64": xxhash.xxh3_64,
    "xxh64": xxhash.xxh64,
    "crc64nvme": _Crc64,
    "blake2b": hashlib.blake2b,
    "sha256": hashlib.sha256,
}

ALGORITHMS = tuple(_FACTORIES)


def new_hasher(algorithm: str = DEFAULT_ALGORITHM):
    """A fresh streaming hasher for ``algorithm`` (one of ALGORITHMS)."""
    try:
        return _FACTORIES[algorithm]()
    except KeyError:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}; choose one of {ALGORITHMS}") from None


def hash_bytes(data: bytes, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """The hex digest of ``data`` under ``algorithm``."""
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return hasher.hexdigest()


def measure_throughput(total_mib: int = 256, chunk_kib: int = 1024, rounds: int = 3) -> dict[str, float]:
    """MB/s of each algorithm over random data fed in copy-sized chunks (best of rounds)."""
    data = os.urandom(total_mib << 20)
    view = memoryview(data)
    chunk = chunk_kib << 10
    results = {}
    for name in ALGORITHMS:
        best = 0.0
        for _ in range(rounds):
            hasher = new_hasher(name)
            start = time.perf_counter()
            for offset in range(0, len(data), chunk):
                hasher.update(view[offset:offset + chunk])
            hasher.hexdigest()
            best = max(best, len(data) / (time.perf_counter() - start) / 1e6)
        results[name] = best
    return results


if __name__ == "__main__":
    for algorithm_name, rate in measure_throughput().items():
        print(f"{algorithm_name:10s} {rate:10.0f} MB/s")
