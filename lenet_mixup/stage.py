"""Errors a user can act on, atomic outputs, and the entry point every stage script shares."""
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """A problem with params or inputs that the user can fix; printed as one line, exit 1."""


@contextmanager
def atomic_output(path):
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    A failed or killed stage then never leaves a half-written output that DVC could cache.
    Works for files and for folders (the block creates whichever it wants at the temporary path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        _remove(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def run(main):
    """Run a stage's main(); turn a UserError into one clear line on stderr and exit status 1."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
