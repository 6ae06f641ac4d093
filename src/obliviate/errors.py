"""One error type for bad input: the CLI prints its message on one line and exits 2.

File-system faults (cannot create, cannot write, disk full, read-only, a path that is a file)
are the user's to fix too: `os_error_line` turns an OSError into the same kind of one line.
"""

from __future__ import annotations

import errno
import os


class UserError(Exception):
    """Bad input from the user: a file, a field, a config key or a model name.

    The message says what is wrong, where (file and line, or config key) and how to fix it.
    The CLI prints it as one line, without a traceback, and exits with status 2.
    """


class RegistrationError(UserError, ValueError):
    """A method or benchmark registration refused (a name taken): a UserError, and still the
    ValueError that callers of the registries caught before."""


HINTS = {
    errno.ENOSPC: "free some space or choose another output_dir",
    errno.EDQUOT: "free some space or choose another output_dir",
    errno.EROFS: "choose an output_dir on a writable file system",
    errno.EACCES: "check the permissions or choose another path",
    errno.EPERM: "check the permissions or choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a directory; choose another path",
    errno.EEXIST: "the path exists and is in the way; choose another path",
    errno.EISDIR: "the path is a directory; give a file",
    errno.ENOENT: "check the path",
}


def os_error_line(error: OSError, path=None, action: str = "file-system error at") -> str:
    """One line for an OSError: the action, the path, the cause in words and a hint."""
    where = path if path is not None else error.filename
    cause = (error.strerror or os.strerror(error.errno)) if error.errno else str(error) or type(error).__name__
    hint = HINTS.get(error.errno, "check the path and the disk")
    head = f"{action} {where}" if where is not None else action.rsplit(" at", 1)[0]
    return " ".join(f"{head}: {cause.lower()}; {hint}".split())


# torch.save and safetensors report a full disk in their own words, without errno
WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed", "No space left", "StorageFull",
                  "file write failed")


def write_failure_line(error: Exception) -> str | None:
    """One line for a library's failed write (a checkpoint or model save), or None if `error` is
    something else. These libraries lose errno; a full disk is by far the usual cause."""
    text = " ".join(str(error).split())
    if not any(marker in text for marker in WRITE_FAILURES):
        return None
    return (f"writing a checkpoint or model failed ({text[:120]}): most likely no space left on device; "
            "free some space or choose another output_dir, then rerun with --resume")
