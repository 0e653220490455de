"""Errors a user can act on, atomic outputs, and the entry point every stage script shares."""
import contextlib
import errno
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """A problem with params or inputs that the user can fix; printed as one line, exit 1."""


# A stage that cannot write its output: what happened and what to do, by errno.
WRITE_FAULTS = {
    errno.ENOSPC: ("the disk is full", "free some space on it"),
    errno.EDQUOT: ("the disk quota is used up", "free some space or raise the quota"),
    errno.EFBIG: ("the file grew beyond the size allowed to this process", "raise the limit (`ulimit -f`)"),
    errno.EROFS: ("the file system is read-only", "remount it writable, or run the project from a writable folder"),
    errno.EACCES: ("permission denied", "make the folder writable for this user"),
    errno.EPERM: ("the operation is not permitted", "make the folder writable for this user"),
    errno.ENOTDIR: ("a file stands where a folder must be", "remove or rename that file"),
    errno.EEXIST: ("a file stands where a folder must be", "remove or rename that file"),
}


@contextmanager
def atomic_output(path):
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    A failed or killed stage then never leaves a half-written output that DVC could cache, and an
    older file at `path` (a resume state, say) stays as it was. Works for files and for folders (the
    block creates whichever it wants at the temporary path). A write the environment refuses (a full
    disk, a read-only folder) becomes one UserError naming `path`, the cause and the remedy.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(tmp)
        yield tmp
        _remove(path)
        os.replace(tmp, path)
    except OSError as e:
        code = e.errno if e.errno is not None else _short_write(e, path)  # numpy's short writes carry no errno
        if code not in WRITE_FAULTS or not _writing(e, path, tmp):
            raise
        cause, remedy = WRITE_FAULTS[code]
        raise UserError(f"could not write {path}: {cause} ({e.strerror}); {remedy}, then run the stage again "
                        "(nothing was half-written)") from None
    finally:
        with contextlib.suppress(OSError):
            _remove(tmp)


def _short_write(error, path):
    """ENOSPC for a write that stopped short (numpy: `768000 requested and 110560 written`) on a disk
    with next to nothing left, else None."""
    try:
        full = shutil.disk_usage(path.parent).free < 16 << 20
    except OSError:
        return None
    return errno.ENOSPC if full and "written" in str(error) else None


def _writing(error, path, tmp):
    """Whether an OSError came from writing `path` (through `tmp`), not from reading some input."""
    names = [Path(n) for n in (error.filename, error.filename2) if n is not None]
    return not names or any(n in (path, path.parent, tmp) or tmp in n.parents for n in names)


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def run(main):
    """Run a stage's main(); turn a UserError into one clear line on stderr and exit status 1.

    A stage (stages/) that succeeds ends with one line saying how long it took, imports included (DVC
    itself says nothing of a stage's time): `evaluate baseline: done in 18.3 s`.
    """
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    script = Path(sys.argv[0])
    if script.parent.name == "stages":  # `python -m stages.evaluate baseline` says: evaluate baseline: done in ...
        print(f"{' '.join([script.stem, *sys.argv[1:]])}: done in {process_seconds():.1f} s", flush=True)


def process_seconds():
    """Seconds since this process started (Linux: from /proc), else since this module was imported."""
    try:
        start = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])  # field 22, in ticks
        return float(Path("/proc/uptime").read_text().split()[0]) - start / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


_IMPORTED = time.monotonic()
