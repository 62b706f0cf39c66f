"""Keras 3 native ``.weights.h5`` files: the h5py reader (layers by name, variables in layer
order), the strict whole-model and by-name loads, and the atomic save."""

from __future__ import annotations

import os

import numpy as np

from .beside import config_path_beside
from .files import _decode
from .report import LoadReport, _compare, _mismatch_error, _model_layers, _weight_key

__all__ = ["save_weights"]


def _read_native(path):
    """Read a Keras 3 ``.weights.h5`` as {layer name: [array, ...]} (variables in layer order)."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        groups = []
        f.visititems(lambda name, obj: groups.append(name)
                     if isinstance(obj, h5py.Group) and name.split("/")[-1] == "vars" else None)
        for gpath in groups:
            vars_group = f[gpath]
            if not len(vars_group):
                continue
            parts = gpath.split("/")[:-1]
            # The owning layer is the deepest component listed directly under a "layers" group;
            # anything below it (e.g. TimeDistributed's "layer") belongs to that layer.
            owner = [i for i in range(1, len(parts)) if parts[i - 1] == "layers"]
            if not owner:
                continue
            owner_path = "/".join(parts[:owner[-1] + 1])
            owner_vars = f.get(owner_path + "/vars")
            name = owner_vars.attrs.get("name") if owner_vars is not None else None
            if name is None:
                raise ValueError(f"{path}: Keras 3 file without layer names (group {owner_path}); "
                                 "load it with by_name=False into the same architecture")
            arrays = [np.asarray(vars_group[k]) for k in sorted(vars_group, key=int)]
            out.setdefault(_decode(name), []).extend(arrays)
    return out


def _plan_native(keras_model, path, excl):
    """Validate a Keras 3 file by layer name; return ([(variable, array)], report)."""
    data = _read_native(path)
    leaves, _ = _model_layers(keras_model)
    report = LoadReport(path=path, kind="keras3-native")
    plan, problems = [], []
    for name, arrays in data.items():
        layer = leaves.get(name)
        if name in excl:
            report.excluded.append(name)
            if layer is not None:
                report.mismatched.extend((name, k, fs, ms) for k, fs, ms in
                                         _compare(layer, arrays) if fs != ms)
            continue
        if layer is None:
            report.skipped.append(name)
            continue
        weights = list(layer.weights)
        if len(weights) != len(arrays):
            raise ValueError(f"{path}: layer {name!r} has {len(arrays)} variables in the file but "
                             f"{len(weights)} in the model; pass exclude=[{name!r}] to skip it")
        for var, array in zip(weights, arrays):
            if tuple(var.shape) != tuple(array.shape):
                problems.append((name, _weight_key(var), tuple(array.shape), tuple(var.shape)))
            else:
                plan.append((var, array))
        report.loaded.append(name)
    if problems:
        raise _mismatch_error(path, problems)
    report.missing_in_file = [n for n, l in leaves.items()
                              if l.weights and n not in data and n not in excl]
    return plan, report


def _load_native_whole(keras_model, path):
    """Strict whole-model load of a Keras 3 file (Keras itself silently skips extra layers).

    When the file's weighted layer names are exactly the model's, layers are matched by name
    (every shape checked); otherwise (e.g. auto-generated names that differ between sessions)
    Keras' structural load is used after checking that both hold the same number of weighted
    layers and variables.
    """
    data = _read_native(path)
    leaves, _ = _model_layers(keras_model)
    weighted = {n: l for n, l in leaves.items() if l.weights}
    if set(data) == set(weighted):
        plan, report = _plan_native(keras_model, path, set())
        for variable, array in plan:
            variable.assign(array)
        return report
    n_file_vars = sum(len(a) for a in data.values())
    n_model_vars = sum(len(l.weights) for l in weighted.values())
    if len(data) != len(weighted) or n_file_vars != n_model_vars:
        only_file = sorted(set(data) - set(weighted))[:10]
        only_model = sorted(set(weighted) - set(data))[:10]
        raise ValueError(
            f"{path} holds {len(data)} layers / {n_file_vars} variables but the model has "
            f"{len(weighted)} / {n_model_vars} (only in the file: {only_file}; only in the model: "
            f"{only_model}). It was saved from another architecture or mode (e.g. a training "
            "checkpoint loaded into an inference model); load it with by_name=True to match "
            "layers by name.")
    try:
        keras_model.load_weights(path)
    except (ValueError, KeyError) as err:
        raise ValueError(f"{path}: Keras could not load it into this model as a whole; load it "
                         f"with by_name=True to match layers by name. Keras said: {err}") from err
    return LoadReport(path=path, kind="keras3-native", loaded=list(weighted))


def _native_path(path):
    path = os.fspath(path)
    return path if path.endswith(".weights.h5") else (
        path[:-3] + ".weights.h5" if path.endswith(".h5") else path + ".weights.h5")


def save_weights(keras_model, path, config=None):
    """Write ``keras_model``'s weights as a Keras 3 ``.weights.h5`` file, atomically.

    The suffix ``.weights.h5`` is appended when missing (``x.h5`` becomes ``x.weights.h5``).  The
    file is written to a temporary name in the same folder and renamed
    (:func:`mrcnn_nuclei.fileio.atomic_write`: fsync, the user's umask, free space checked first),
    so a reader never sees a half-written file and a failed save (OSError naming the file) leaves
    an older file of that name whole.  With ``config`` its JSON goes beside
    (:func:`config_path_beside`).  Returns the weights path.
    """
    from ..fileio import atomic_write

    final = _native_path(path)
    nbytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
                 for v in keras_model.weights) + (1 << 20)
    atomic_write(final, lambda tmp: keras_model.save_weights(tmp, overwrite=True),
                 min_free_bytes=nbytes)
    if config is not None:
        config.save_json(config_path_beside(final))
    return final
