"""The one exception type the CLI turns into a one-line message, and one-line texts for the
operating system's errors (a full disk, a read-only directory) that reach the CLI."""

from __future__ import annotations

import errno
import os
import sys


class SaeKitError(Exception):
    """A user-facing error: the message says what was wrong and what to do about it."""


OS_ERROR_HINTS = {
    errno.ENOSPC: "the disk is full: free some space (work already written is kept; --resume continues it)",
    errno.EDQUOT: "the disk quota is exhausted: free some space (work already written is kept)",
    errno.EACCES: "no permission: choose a directory you can write to (e.g. another --out)",
    errno.EPERM: "not permitted: choose a directory you can write to (e.g. another --out)",
    errno.EROFS: "the file system is read-only: choose a writable directory (e.g. another --out)",
    errno.ENOENT: "no such file or directory: check the path",
    errno.EISDIR: "a directory where a file was expected: check the path",
    errno.ENOTDIR: "a file where a directory was expected: check the path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer shards",
}


def describe_os_error(err: OSError) -> str:
    """`[Errno 28] No space left on device: 'x'` as one line that says what to do."""
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    hint = OS_ERROR_HINTS.get(err.errno)
    text = err.strerror or str(err) or type(err).__name__
    return f"{text}{where}" + (f"; {hint}" if hint else "")


def print_error_line(text: str) -> None:
    """Write `text` and its newline to stderr in one write(2).

    Two torchrun ranks share one stderr pipe; `print` writes the text and the newline
    separately, so their lines could interleave into one. A single write of at most PIPE_BUF
    (4096) bytes to a pipe is atomic (POSIX), so each rank's line arrives whole."""
    line = (text + "\n").encode("utf-8", "replace")
    sys.stderr.flush()
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stderr (pytest, notebooks)
        sys.stderr.write(line.decode("utf-8"))
        sys.stderr.flush()
        return
    os.write(fd, line)
