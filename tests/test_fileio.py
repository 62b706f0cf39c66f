"""mrcnn_nuclei.fileio: the one atomic-write primitive (whole file or old file, umask
permissions, no temp file left, clear errors) and the writable-folder check."""

import errno
import os
import re
import stat
from pathlib import Path

import pytest

from mrcnn_nuclei import fileio

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_text_is_written_whole_with_the_umask(tmp_path, umask_027):
    path = tmp_path / "sub" / "a.json"
    assert fileio.atomic_write_text(path, "x = 1\n") == str(path)
    assert path.read_text() == "x = 1\n"
    # a plain open() would give 0o666 & ~umask; mkstemp alone gives 0o600
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert fileio.current_umask() == 0o027
    assert os.listdir(tmp_path / "sub") == ["a.json"]


def test_failed_write_keeps_the_old_file_and_names_the_path(tmp_path):
    path = tmp_path / "ckpt.weights.h5"
    path.write_bytes(b"old, whole")
    seen = []

    def full_disk(tmp):
        seen.append(tmp)
        assert tmp.endswith("-ckpt.weights.h5")  # the extension survives (Keras checks it)
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"cannot write .*ckpt\.weights\.h5.*disk is full") as err:
        fileio.atomic_write(path, full_disk)
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old, whole"
    assert os.listdir(tmp_path) == ["ckpt.weights.h5"] and not os.path.exists(seen[0])

    def bug(tmp):
        raise KeyError("not an OSError")

    with pytest.raises(KeyError):                    # other errors pass through, cleaned up too
        fileio.atomic_write(path, bug)
    assert os.listdir(tmp_path) == ["ckpt.weights.h5"]


def test_too_little_free_space_fails_before_writing(tmp_path):
    called = []
    with pytest.raises(OSError, match=r"MB free.*disk is full") as err:
        fileio.atomic_write(tmp_path / "big.bin", called.append, min_free_bytes=1 << 62)
    assert err.value.errno == errno.ENOSPC and called == [] and os.listdir(tmp_path) == []


def test_check_writable_dir(tmp_path):
    assert fileio.check_writable_dir(tmp_path / "new" / "logs") == str(tmp_path / "new" / "logs")
    assert os.listdir(tmp_path / "new" / "logs") == []    # the probe file is gone
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OSError, match=r"--logs folder .*file\.txt.* is a file"):
        fileio.check_writable_dir(blocker, "--logs folder")
    with pytest.raises(OSError, match=r"--logs folder .*file\.txt/logs cannot be created"):
        fileio.check_writable_dir(blocker / "logs", "--logs folder")


def test_atomic_write_is_the_only_copy():
    """Every writer uses fileio; no module keeps its own mkstemp/os.replace."""
    hits = []
    for folder in ("mrcnn_nuclei", "samples", "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            if re.search(r"mkstemp|os\.replace", text) and path.name != "fileio.py":
                hits.append(str(path.relative_to(REPO)))
    assert hits == []
