"""Output directories: never a source, one writer at a time, no stale temp files, write failures named.

    check_not_source(out, [model_dir])             # the overlapping source, or None: callers refuse the run
    with locked(out, "unlearn output"):            # a second run on `out` gets "in use by PID n"
        ...
    with named_write_errors("checkpoint", path):   # ENOSPC / EROFS / EACCES -> OutputError naming the write

A lock is a file beside the directory (`.<name>.lock`, through `filelock`), so it can be taken before the
directory exists and works for the organism cache too. A temp file or directory whose name carries the PID
of a process that no longer runs (`.<name>.tmp-<pid>`, `.<file>.<pid>.tmp`) is left by a killed run;
`remove_stale_temps` deletes those, and only those.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from .errors import OutputError, named_write_errors
from .provenance import atomic_write_json

_UMASK = os.umask(0)
os.umask(_UMASK)


def cache_dir(kind: str) -> Path:
    """The workbench's cache of `kind` (organisms, uds, ...): $WORKBENCH_CACHE/<kind>, else
    $XDG_CACHE_HOME/workbench/<kind> (default ~/.cache/workbench/<kind>)."""
    base = os.environ.get("WORKBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "workbench")
    return Path(base) / kind


def overlaps(a: str | Path, b: str | Path) -> bool:
    """True when one of two paths is the other or lies inside it (after resolving links)."""
    a, b = Path(a).expanduser().resolve(), Path(b).expanduser().resolve()
    return a == b or a in b.parents or b in a.parents


def check_not_source(out: str | Path, sources: Iterable[str | Path | None]) -> Path | None:
    """The first source directory that `out` is, contains or lies inside; None when `out` is clear of all."""
    for src in sources:
        if src is not None and overlaps(out, src):
            return Path(src).expanduser().resolve()
    return None


def _lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


def _owner_path(path: Path) -> Path:
    return path.parent / f".{path.name}.owner"


@contextlib.contextmanager
def locked(path: str | Path, what: str = "output", wait: float = 0.0) -> Iterator[Path]:
    """Hold the lock of `path` (a directory or file, existing or not) for the block.

    wait=0: another holder is an OutputError naming its PID (two runs must not share an output). wait>0: block up
    to that many seconds (-1: for ever) for the holder to finish (a cache entry another process is building)."""
    from filelock import FileLock, Timeout

    path = Path(path).expanduser().resolve()
    with named_write_errors(f"lock file of the {what}", _lock_path(path)):
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(_lock_path(path), timeout=wait, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            holder = _read_owner(path)
            raise OutputError(f"{what} {path} is in use by {f'PID {holder}' if holder else 'another process'}; "
                              "wait for that run to finish or choose another output") from None
    try:
        owner = _owner_path(path)
        with contextlib.suppress(OSError):
            owner.write_text(str(os.getpid()))
        yield path
    finally:
        with contextlib.suppress(OSError):
            if _read_owner(path) == os.getpid():
                _owner_path(path).unlink()
        lock.release()


def _read_owner(path: Path) -> int | None:
    try:
        return int(_owner_path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


# `.<name>.tmp-<pid>` (a directory being saved), `.<name>.<pid>.tmp` and `.<name>.<pid>.<random>.tmp` (a file)
_PID_TEMP = re.compile(r"^\.(?P<name>.+?)(?:\.tmp-(?P<pid1>\d+)|\.(?P<pid2>\d+)(?:\.[A-Za-z0-9_]+)?\.tmp)$")


def remove_stale_temps(directory: str | Path, name: str | None = None) -> list[Path]:
    """Delete the temp files/dirs in `directory` that a killed process left (PID in the name, process gone).

    `name`: only the temps of that output. Returns what was removed."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _PID_TEMP.match(p.name)
        if not m or (name is not None and m.group("name") != name):
            continue
        if pid_alive(int(m.group("pid1") or m.group("pid2"))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        removed.append(p)
    return removed


def remove_temp_dirs(directory: str | Path, prefix: str) -> list[Path]:
    """Delete every directory in `directory` whose name starts with `prefix` (temps of a killed build).

    Only safe while holding the lock of the entry those temps belong to: no live process is writing them then."""
    directory = Path(directory)
    removed = []
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.startswith(prefix) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def share_permissions(path: str | Path) -> None:
    """Give `path` (a file, or a directory and everything in it) the permissions the umask gives new files.

    Some writers (tempfile.mkdtemp, safetensors) create 0600/0700 entries; results are meant to be shared."""
    path = Path(path)
    paths = [path] + (list(path.rglob("*")) if path.is_dir() else [])
    for p in paths:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~_UMASK)


def check_writable(directory: str | Path, what: str = "output directory") -> Path:
    """Create `directory` if needed and prove a file can be written in it; an OutputError says why not."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"{what} {directory} exists and is not a directory")
    probe = directory / f".write-probe.{os.getpid()}.tmp"
    with named_write_errors(what, directory):
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    return directory


def check_output_path(path: str | Path, what: str) -> Path:
    """`path` can be a directory this run writes: it is one already, or it can be made. Made here (with a probe file
    written and removed), so an impossible output (/proc/figs, a regular file, a read-only mount) is an OutputError
    before any work, not after it."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} exists and is not a directory")
    try:
        return check_writable(path, what)
    except OSError as e:
        raise OutputError(f"cannot write the {what} {path} ({e.strerror or type(e).__name__}); choose another "
                          "directory") from None


# ---------------------------------------------------------------- directories a command made
def _claim_path(directory: Path) -> Path:
    return directory / ".workbench-output.json"


def claimed_by(directory: str | Path) -> str | None:
    """The command whose output `directory` is (its claim file), or None."""
    import json

    try:
        data = json.loads(_claim_path(Path(directory)).read_text())
        return data.get("command") if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def check_claimable(directory: str | Path, command: str, legacy: tuple[str, ...] = ()) -> None:
    """Refuse to write into `directory` unless it is new, empty, an output of `command` (its claim file), or holds
    all of `legacy` (what that command wrote before outputs were claimed). Reads only; `claim` writes the claim."""
    d = Path(directory).expanduser()
    if d.is_symlink() or (d.exists() and not d.is_dir()):
        raise OutputError(f"output {d} is {'a symbolic link' if d.is_symlink() else 'not a directory'}; "
                          f"`workbench {command}` writes a directory of its own: choose a new one")
    if not d.exists() or claimed_by(d) == command:
        return
    if claimed_by(d) is not None:
        raise OutputError(f"output {d} is the output of `workbench {claimed_by(d)}`, not of `workbench {command}`; "
                          "choose a new directory")
    held = sorted(p.name for p in d.iterdir())
    if held and not (legacy and all((d / name).exists() for name in legacy)):
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise OutputError(f"output {d} already holds {shown}, which `workbench {command}` did not write; it writes "
                          "only into a new or empty directory or one of its own outputs: choose another")


def claim(directory: str | Path, command: str) -> Path:
    """Mark `directory` (checked by `check_claimable`) as `command`'s output, so a later run may reuse and replace
    what that command made there, and nothing else."""
    d = Path(directory)
    if claimed_by(d) != command:
        atomic_write_json(_claim_path(d), {"command": command, "pid": os.getpid()})
    return d


def entry_complete(path: str | Path, marker: str) -> bool:
    """A cache entry is complete when its marker file (written last) parses as JSON and every safetensors weight
    file in it is as long as its header says (a truncated copy or a full disk is not complete)."""
    import json

    path = Path(path)
    try:
        json.loads((path / marker).read_text())
        return not any(safetensors_problem(f) for f in path.glob("*.safetensors"))
    except (OSError, ValueError):
        return False


# bytes per element of each safetensors dtype (sub-byte float formats are left out: their sizes are not checked)
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
                "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own bound on a header


def safetensors_header(path: str | Path) -> dict[str, dict]:
    """{tensor name: {"dtype", "shape", "data_offsets"}} of a safetensors file, every entry checked against the file:
    a shape whose bytes are not its byte range (a header that lies), ranges that overlap or leave gaps, a file
    shorter or longer than its ranges (a killed copy, a full disk). A ValueError says what is wrong."""
    import json
    import math
    import struct

    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ValueError(f"{size}-byte file, too short for a safetensors header")
        n = struct.unpack("<Q", raw)[0]
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise ValueError(f"header of {n} bytes in a {size}-byte file")
        header = json.loads(fh.read(n))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    spans = []
    for name, t in tensors.items():
        if not isinstance(t, dict):
            raise ValueError(f"tensor {name!r}: its header entry is not an object")
        dtype, shape, offsets = t.get("dtype"), t.get("shape"), t.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                for d in shape)):
            raise ValueError(f"tensor {name!r}: shape {shape!r} is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"tensor {name!r}: data_offsets {offsets!r} are not [begin, end]")
        if not isinstance(dtype, str):
            raise ValueError(f"tensor {name!r}: dtype {dtype!r} is not a name")
        if dtype in _DTYPE_BYTES and math.prod(shape) * _DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
            raise ValueError(f"tensor {name!r}: shape {shape} of {dtype} is {math.prod(shape) * _DTYPE_BYTES[dtype]} "
                             f"bytes, but its data range holds {offsets[1] - offsets[0]}")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise ValueError(f"tensor {name!r}: its data starts at byte {begin}, expected {end} "
                             "(ranges overlap or leave a gap)")
        end = stop
    if 8 + n + end != size:
        raise ValueError(f"{size} bytes, its header describes {8 + n + end}")
    return tensors


def safetensors_problem(path: str | Path) -> str | None:
    """Why a safetensors file is not whole or not what its header says (`safetensors_header`), or None. The format
    is an 8-byte header length, a JSON header giving each tensor's dtype, shape and byte range, then the data."""
    try:
        safetensors_header(path)
    except (OSError, ValueError, OverflowError) as e:
        return str(e)
    return None


def cached_build(target: str | Path, make, *, marker: str, force: bool = False, wait: float = -1) -> Path:
    """Build the cache entry `target` once, whatever runs at the same time, and return its path.

    `make(tmp)` writes the entry into an empty temp directory beside `target`, `marker` last. A complete entry is
    returned as it is; otherwise the entry's lock is taken (waiting up to `wait` s, -1: for ever, while another
    process builds it), temp directories of killed builds of this entry are removed, and `make` runs; its result
    gets shared permissions and replaces `target` in one rename. A truncated or corrupt entry is rebuilt, not loaded."""
    import tempfile

    target = Path(target)
    if not force and entry_complete(target, marker):
        return target
    with locked(target, "cache entry", wait=wait):
        if not force and entry_complete(target, marker):  # another process built it while this one waited
            return target
        remove_temp_dirs(target.parent, f".{target.name}.")  # no live builder: the lock is held here
        with named_write_errors("cache entry", target):
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        old = target.parent / f".{target.name}.old"
        try:
            make(tmp)
            share_permissions(tmp)
            if target.exists():  # a forced rebuild or an incomplete entry: set aside, then one rename swaps them
                os.replace(target, old)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    return target
