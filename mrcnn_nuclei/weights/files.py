"""Which kind of weights file a path is (legacy Keras 1/2 HDF5 or Keras 3 native), checked
cheaply without a model: missing, truncated, not HDF5 and unknown layouts are errors naming the
file."""

from __future__ import annotations

import os

from .registry import _missing_file_message

__all__ = ["file_kind", "check_weights_file"]


def file_kind(path):
    """'legacy' (Keras 1/2 HDF5 with ``layer_names``) or 'native' (Keras 3 ``.weights.h5``).

    Raises FileNotFoundError if ``path`` does not exist and ValueError if it is neither layout.
    """
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(_missing_file_message(path))
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not a weights file; pass the .h5 / .weights.h5 "
                         "file (or --weights=last to take the newest checkpoint of a logs folder)")
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path} is not an HDF5 weights file (expected Matterport's .h5 or a "
                         "Keras 3 .weights.h5 written by save_weights)")
    try:
        with h5py.File(path, "r") as f:
            if "layer_names" in f.attrs or (
                    "model_weights" in f and "layer_names" in f["model_weights"].attrs):
                return "legacy"
            if "layers" in f or "vars" in f:
                return "native"
    except OSError as err:
        raise ValueError(_damaged_message(path, err)) from None
    raise ValueError(f"{path}: unknown weights layout (no 'layer_names' attribute as in Keras 1/2 "
                     "files, no 'layers' group as in Keras 3 files)")


def _damaged_message(path, err):
    """Message for an HDF5 file h5py cannot read (truncated download, interrupted write)."""
    size = os.path.getsize(path) if os.path.exists(path) else 0
    return (f"weights file {path} ({size / 1e6:.1f} MB) is truncated or damaged and cannot be "
            f"read ({str(err).splitlines()[0][:200]}). It was not completely downloaded or "
            "written: download it again, or use an earlier checkpoint of the run.")


def check_weights_file(path):
    """Cheap check that ``path`` is a readable weights file (no model needed): returns its
    :func:`file_kind`.  Raises FileNotFoundError / ValueError naming the file (missing,
    truncated, not HDF5, unknown layout)."""
    return file_kind(path)


def _decode(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)
