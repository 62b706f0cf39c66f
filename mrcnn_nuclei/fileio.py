"""Safe file writing: one atomic-write primitive for every file the package writes.

:func:`atomic_write` writes through a temporary file in the destination's folder, flushes it to
disk (``fsync``), gives it the permissions a plain ``open(path, "w")`` would (``0o666`` minus the
user's umask; ``tempfile.mkstemp`` alone gives ``0o600``) and renames it over ``path`` with
``os.replace``.  A reader therefore sees either the previous file, whole, or the new one, whole.
On any error the temporary file is removed and an ``OSError`` (full disk, no permission ...) is
re-raised naming ``path`` and the likely fix; other exceptions pass through unchanged after the
clean-up.

    atomic_write("run/ckpt.weights.h5", lambda tmp: model.save_weights(tmp))
    atomic_write_text("out/summary.json", json.dumps(summary))

:func:`check_writable_dir` creates a folder (if needed) and proves it writable, so a command can
fail on a bad ``--logs``/``--out`` folder before any long work starts.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

__all__ = ["atomic_write", "atomic_write_text", "check_writable_dir", "current_umask",
           "TMP_PREFIX"]

#: Prefix of the temporary files (hidden; the final name follows, so the extension is kept).
TMP_PREFIX = ".tmp-"

_HINTS = {
    errno.ENOSPC: "the disk is full; free space or write elsewhere",
    errno.EDQUOT: "the disk quota is exceeded; free space or write elsewhere",
    errno.EACCES: "no permission to write there; choose a folder you can write to",
    errno.EPERM: "no permission to write there; choose a folder you can write to",
    errno.EROFS: "the file system is read-only; choose a writable folder",
}


def current_umask():
    """The process umask (read from /proc on Linux, else set-and-restore)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _error(path, err, action="write"):
    """OSError with ``err``'s errno whose message names ``path`` and a fix."""
    code = getattr(err, "errno", None)
    reason = getattr(err, "strerror", None) or str(err)
    hint = _HINTS.get(code)
    message = f"cannot {action} {path}: {reason}" + (f" ({hint})" if hint else "")
    return OSError(code, message) if code is not None else OSError(message)


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write_fn, min_free_bytes=0):
    """Write ``path`` atomically: ``write_fn(tmp_path)`` writes a temporary file, then it replaces
    ``path``.

    path: destination (its folder is created when missing).
    write_fn: callable taking the temporary path (same folder, name ``.tmp-XXXX-<basename>``,
        so the extension - e.g. ``.weights.h5`` - is kept); it must write a complete file there.
        The temporary file exists (empty) when it is called; writers must overwrite it.
    min_free_bytes: when > 0, raise ``OSError(ENOSPC)`` naming ``path`` before writing anything if
        the folder's file system has less free space (avoids writers that crash on a full disk).
    Returns ``path``.  The file gets mode ``0o666 & ~umask``.  On any error nothing is left at
    the temporary name and an existing ``path`` is untouched; ``OSError``\\ s are re-raised with
    ``path`` and the fix in the message (errno kept).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        raise _error(directory, err, "create the folder") from err
    if min_free_bytes > 0:
        free = shutil.disk_usage(directory).free
        if free < min_free_bytes:
            raise OSError(errno.ENOSPC, f"cannot write {path}: {free / 1e6:.1f} MB free in "
                          f"{directory} but about {min_free_bytes / 1e6:.1f} MB are needed "
                          f"({_HINTS[errno.ENOSPC]})")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX,
                                   suffix="-" + os.path.basename(path))
    except OSError as err:
        raise _error(path, err) from err
    os.close(fd)
    try:
        write_fn(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise _error(path, err) from err
        raise
    _fsync_dir(directory)
    return path


def atomic_write_text(path, text, encoding="utf-8", newline=None):
    """Write the string ``text`` to ``path`` atomically (see :func:`atomic_write`).

    newline: as for :func:`open` (``""`` writes ``\\n`` unchanged, e.g. for CSV).
    Returns ``path``.
    """
    def write(tmp):
        with open(tmp, "w", encoding=encoding, newline=newline) as f:
            f.write(text)

    return atomic_write(path, write)


def check_writable_dir(path, what="folder"):
    """Create folder ``path`` if needed and check that files can be created in it.

    what: how the folder is called in the message (e.g. ``"--logs folder"``).
    Returns the absolute path.  Raises ``OSError`` naming the folder and the fix (no write
    permission, read-only file system, a file in the way, ...).
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, f"{what} {path} is a file, not a folder; pass a "
                                 "folder")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=TMP_PREFIX, suffix="-probe")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        reason = getattr(err, "strerror", None) or str(err)
        hint = _HINTS.get(err.errno, "check the path and its permissions")
        raise OSError(err.errno, f"{what} {path} cannot be created or written: {reason} "
                      f"({hint})") from err
    return path
