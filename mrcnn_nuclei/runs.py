"""Run folders and checkpoint names of :meth:`MaskRCNN.train` (no TensorFlow needed).

A run folder is ``<model_dir>/<name><YYYYmmddTHHMMSS>[_<n>]`` (Matterport's ``<name><YYYYmmddTHHMM>``
plus seconds and a collision number that keeps two runs started in the same second apart); in it
``config.json`` and one checkpoint per epoch, ``mask_rcnn_<name>_<epoch:04d>.weights.h5``.

* :func:`new_run_dir` names the folder of a new run, :func:`claim_run_dir` creates it (``os.mkdir``,
  so no run overwrites another's), :func:`resume_run` reads the folder and epoch a checkpoint
  continues in, :func:`checkpoint_pattern` gives the per-epoch file pattern.
* :func:`find_last_checkpoint` (Matterport's ``find_last`` without a model) and
  :func:`checkpoint_epoch` read them back.
"""

from __future__ import annotations

import datetime
import os
import re

__all__ = ["checkpoint_epoch", "find_last_checkpoint", "run_key", "new_run_dir", "claim_run_dir",
           "resume_run", "checkpoint_pattern"]

_CKPT_RE = re.compile(r"mask_rcnn_[\w-]*?(\d{4})\.(weights\.h5|h5)$")
#: Run folder: <name><YYYYmmddTHHMM[SS]>[_<n>] (Matterport's name plus seconds and a suffix that
#: keeps two runs started in the same second apart).
_RUN_RE = re.compile(r"(?P<name>.*?)(?P<stamp>\d{8}T\d{4}(?:\d{2})?)(?:_(?P<n>\d+))?")


def run_key(folder_name):
    """Sort key ``(time stamp, collision number, name)`` of a run folder name; None if it is
    not one.  Stamps without seconds sort as second 00."""
    m = _RUN_RE.fullmatch(folder_name)
    if not m:
        return None
    stamp = m.group("stamp")
    return stamp + "00" * (len(stamp) == 13), int(m.group("n") or 1), m.group("name")


def checkpoint_epoch(path):
    """Epoch of a checkpoint ``mask_rcnn_<name>_<epoch>.weights.h5`` (or ``.h5``) from its file
    name, as :meth:`MaskRCNN.set_log_dir` reads it; 0 for any other file name."""
    m = _CKPT_RE.search(os.path.basename(os.fspath(path)))
    return int(m.group(1)) if m else 0


def checkpoint_pattern(log_dir, name):
    """Per-epoch checkpoint path pattern of a run: ``log_dir/mask_rcnn_<name>_{epoch:04d}.weights.h5``
    (``name`` lower-cased; fill with ``.format(epoch=...)``)."""
    return os.path.join(log_dir, f"mask_rcnn_{str(name).lower()}_{{epoch:04d}}.weights.h5")


def new_run_dir(model_dir, name, now=None):
    """Path (not created) of a new run folder ``model_dir/<name><YYYYmmddTHHMMSS>``."""
    now = now or datetime.datetime.now()
    return os.path.join(os.fspath(model_dir), f"{str(name).lower()}{now:%Y%m%dT%H%M%S}")


def resume_run(model_path):
    """``(run folder or None, epoch)`` a weights file continues in.

    A checkpoint named ``mask_rcnn_<name>_<epoch>.weights.h5`` gives its epoch; when it also lies
    in a run folder, training continues in that folder.  Any other file: ``(None, 0)``.
    """
    model_path = os.fspath(model_path)
    m = _CKPT_RE.search(os.path.basename(model_path))
    if not m:
        return None, 0
    folder = os.path.dirname(os.path.abspath(model_path))
    return (folder if run_key(os.path.basename(folder)) else None), int(m.group(1))


def claim_run_dir(log_dir):
    """Create the run folder ``log_dir`` (``os.mkdir``); when another run holds that name,
    ``log_dir_2``, ``log_dir_3`` ... is created instead.  Returns the created path.  Raises
    OSError naming the parent folder when it is not writable."""
    from .fileio import check_writable_dir

    check_writable_dir(os.path.dirname(os.path.abspath(log_dir)), "model_dir")
    for k in range(1, 10000):
        candidate = log_dir if k == 1 else f"{log_dir}_{k}"
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        return candidate
    raise OSError(f"no free run folder name {log_dir}_<n> in {os.path.dirname(log_dir)}")


def find_last_checkpoint(model_dir, name=None):
    """Newest checkpoint ``mask_rcnn_*_<epoch>.weights.h5`` under ``model_dir``.

    name: a config NAME (lower-cased): only run folders ``<name><YYYYmmddTHHMM[SS]>[_<n>]`` of
        exactly that NAME count (Matterport's ``find_last``); None: run folders of any NAME.
    The newest run folder (by its time stamp, then collision number) that holds a checkpoint is
    chosen, and in it the checkpoint of the highest epoch.  Raises FileNotFoundError naming the
    folder when there is none.
    """
    model_dir = os.fspath(model_dir)
    key = None if name is None else str(name).lower()
    try:
        entries = os.listdir(model_dir)
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    runs = []
    for d in entries:
        k = run_key(d)
        if k and (key is None or k[2] == key) and os.path.isdir(os.path.join(model_dir, d)):
            runs.append((k[:2], d))
    what = f"'{key}<YYYYmmddTHHMM[SS]>'" if key is not None else "'<name><YYYYmmddTHHMM[SS]>'"
    if not runs:
        raise FileNotFoundError(
            f"no run folder {what} in model_dir {model_dir!r}: nothing to resume; train first "
            "or pass a weights path")
    runs.sort()
    # newest run folder first; a run stopped before its first checkpoint is passed over
    for _, d in reversed(runs):
        folder = os.path.join(model_dir, d)
        ckpts = sorted((int(m.group(1)), f) for f in os.listdir(folder)
                       for m in [_CKPT_RE.search(f)] if m and f.startswith("mask_rcnn"))
        if ckpts:
            return os.path.join(folder, ckpts[-1][1])
    raise FileNotFoundError(f"no run folder {what} in model_dir {model_dir!r} holds a checkpoint "
                            "(mask_rcnn_<name>_<epoch>.weights.h5); newest folder: "
                            f"{os.path.join(model_dir, runs[-1][1])!r}")
