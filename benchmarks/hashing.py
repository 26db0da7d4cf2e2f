"""The content keys' cost: hashing a model's weights (workbench.provenance.file_digest, sha256 in 8 MiB chunks) next
to reading the same bytes once, and the check of an unchanged checkpoint, which is a stat and a lookup in the digest
cache instead of a read. A synthetic 1 GB file (64 MB with --quick) stands in for a checkpoint; both sides read it
from the page cache (it was just written), so the ratio is the hash's own cost over memory-speed reading. A cold
read from disk is slower for both sides alike, which makes the ratio smaller, not larger.

Every `run`, `sweep` and `localize` hashes its model once; the digest is kept by (path, size, mtime, ctime, inode),
so the next run of an unchanged checkpoint pays the cached check only.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from . import Section, goal, table

CHUNK = 8 << 20


def _write(path: Path, size: int) -> None:
    block = os.urandom(CHUNK)
    with path.open("wb") as fh:
        for _ in range(size // CHUNK):
            fh.write(block)


def _read(path: Path) -> int:
    n = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            n += len(chunk)
    return n


def run(quick: bool = False, log=print) -> Section:
    import workbench.provenance as prov

    size = (64 if quick else 1024) << 20
    with tempfile.TemporaryDirectory() as tmp:
        old_cache = os.environ.get("WORKBENCH_CACHE")
        os.environ["WORKBENCH_CACHE"] = str(Path(tmp) / "cache")   # a digest cache of its own, emptied at the end
        try:
            path = Path(tmp) / "model.safetensors"
            log(f"hashing: writing a {size >> 20} MiB file")
            _write(path, size)
            _read(path)                                               # both sides start from the page cache
            t0 = time.perf_counter()
            assert _read(path) == size
            read_s = time.perf_counter() - t0
            prov._DIGESTS.clear()
            t0 = time.perf_counter()
            digest = prov.file_digest(path)
            hash_s = time.perf_counter() - t0
            prov._DIGESTS.clear()                                     # a new process: only the on-disk cache
            t0 = time.perf_counter()
            again = prov.file_digest(path)
            cached_s = time.perf_counter() - t0
        finally:
            if old_cache is None:
                os.environ.pop("WORKBENCH_CACHE", None)
            else:
                os.environ["WORKBENCH_CACHE"] = old_cache
    gib = size / 2 ** 30
    rows = [["read once (no hash)", f"{read_s:.3f}", f"{gib / read_s:.2f}"],
            ["sha256 while reading (file_digest, first time)", f"{hash_s:.3f}", f"{gib / hash_s:.2f}"],
            ["unchanged file again (stat + digest cache)", f"{cached_s * 1e3:.2f} ms", "-"]]
    ratio = hash_s / read_s
    markdown = (table(["step", "seconds", "GiB/s"], rows)
                + f"\nHashing costs {ratio:.1f}x a plain read of the same {size >> 20} MiB "
                  f"({hash_s - read_s:+.2f} s); an unchanged checkpoint is then checked in {cached_s * 1e3:.2f} ms, "
                  f"{hash_s / cached_s:.0f}x faster than hashing it again. At this rate OLMo-1B's 4.7 GB of "
                  f"safetensors hash in about {4.7e9 / 2 ** 30 / gib * hash_s:.0f} s, once per checkpoint.\n")
    return Section("Content keys: hashing the weights", markdown,
                   goals=[goal("unchanged checkpoint: cached check vs re-hash", hash_s / cached_s, 100.0,
                               equal=again == digest, note=f"hash = {ratio:.1f}x a plain read")],
                   data={"read_s": read_s, "hash_s": hash_s, "cached_s": cached_s, "ratio": ratio, "bytes": size})
