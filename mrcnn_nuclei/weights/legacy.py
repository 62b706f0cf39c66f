"""Reader of Matterport's legacy Keras 1/2 HDF5 weight files: layers matched by layer name and,
inside a layer, by weight name (Keras-1 ``<layer>_W`` / ``running_std`` names mapped), nested
``rpn_model`` and TimeDistributed head groups resolved; validated against the model before
anything is assigned."""

from __future__ import annotations

import re

import numpy as np

from .files import _decode
from .report import LoadReport, _compare, _layer_weights, _mismatch_error, _model_layers


# Keras-1 weight-name suffixes -> Keras 2/3 variable names.
_KERAS1_SUFFIXES = {
    "W": "kernel", "b": "bias", "gamma": "gamma", "beta": "beta",
    "running_mean": "moving_mean", "running_std": "moving_variance",
    "moving_mean": "moving_mean", "moving_variance": "moving_variance",
    "kernel": "kernel", "bias": "bias",
}


def _read_legacy(path):
    """Read a Keras 1/2 HDF5 weights file.

    Returns {layer group name: {sub-layer name: {weight key: array}}} for layers that hold
    weights, in file order.  For plain layers the sub-layer name is the group name itself.
    """
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "layer_names" not in f.attrs else f
        for lname in (_decode(n) for n in root.attrs["layer_names"]):
            group = root[lname]
            wnames = [_decode(n) for n in group.attrs.get("weight_names", [])]
            if not wnames:
                continue
            layer = out.setdefault(lname, {})
            for wname in wnames:
                parts = wname.split(":")[0].split("/")
                sub = parts[-2] if len(parts) >= 2 else lname
                key = _legacy_key(parts[-1], sub, lname, path)
                target = layer.setdefault(sub, {})
                if key in target:
                    raise ValueError(f"{path}: layer {lname!r} lists weight {key!r} of {sub!r} "
                                     "twice")
                target[key] = np.asarray(group[wname])
    return out


def _legacy_key(last, sub, group_name, path):
    """Map a stored weight's last name component to the Keras 3 variable name."""
    for prefix in (sub + "_", group_name + "_"):  # Keras 1: "<layer>_W", "<layer>_running_std"
        if last.startswith(prefix) and last[len(prefix):] in _KERAS1_SUFFIXES:
            return _KERAS1_SUFFIXES[last[len(prefix):]]
    if last in _KERAS1_SUFFIXES:  # Keras 2: "kernel", "moving_variance" ...
        return _KERAS1_SUFFIXES[last]
    raise ValueError(f"{path}: weight {last!r} of layer {group_name!r} has a name this reader "
                     f"does not know (expected one of {sorted(set(_KERAS1_SUFFIXES.values()))} "
                     "or Keras-1 '<layer>_W', '<layer>_b', '<layer>_running_mean' ...)")


def _plan_legacy(keras_model, path, by_name, excl):
    """Validate a legacy file against the model; return ([(variable, array)], report)."""
    data = _read_legacy(path)
    leaves, submodels = _model_layers(keras_model)
    report = LoadReport(path=path, kind="legacy-keras-h5")
    plan, problems, seen = [], [], set()
    for group_name, subs in data.items():
        for sub_name, arrays in subs.items():
            layer, label = _legacy_target(group_name, sub_name, leaves, submodels)
            if group_name in excl or label in excl:
                report.excluded.append(label)
                seen.add(label)
                if layer is not None:
                    for key, fs, ms in _compare(layer, arrays):
                        if fs != ms:
                            report.mismatched.append((label, key, fs, ms))
                continue
            if layer is None:
                report.skipped.append(label)
                continue
            seen.add(layer.name)
            model_w = _layer_weights(layer)
            if set(model_w) != set(arrays):
                raise ValueError(
                    f"{path}: layer {label!r} holds weights {sorted(arrays)} in the file but "
                    f"{sorted(model_w)} in the model (different layer type, e.g. batch norm vs "
                    f"group norm?); pass exclude=[{label!r}] to skip it")
            for key, array in arrays.items():
                var = model_w[key]
                if tuple(var.shape) != tuple(array.shape):
                    problems.append((label, key, tuple(array.shape), tuple(var.shape)))
                else:
                    plan.append((var, array))
            report.loaded.append(label)
    if problems:
        raise _mismatch_error(path, problems)
    missing = [n for n, l in leaves.items() if l.weights and n not in seen and n not in excl]
    report.missing_in_file = missing
    if missing and not by_name:
        raise ValueError(
            f"{path} lacks {len(missing)} layers of the model: {', '.join(missing[:20])}"
            f"{' ...' if len(missing) > 20 else ''}. Load with by_name=True to keep their current "
            "values (e.g. ImageNet backbone weights into a full Mask R-CNN).")
    return plan, report


def _legacy_target(group_name, sub_name, leaves, submodels):
    """(model layer or None, report label) for one stored (group, sub-layer) entry.

    A group that is a nested model in the model (``rpn_model``) is entered by sub-layer name;
    otherwise the group name is authoritative (TimeDistributed heads, and TF's uniquified
    variable prefixes such as ``conv1_1/kernel:0``); a nested group of a flat model falls back to
    top-level layers named like its sub-layers.  A trailing ``_<n>`` that TF appended to a
    re-created variable is ignored when the exact name is absent.
    """
    def lookup(table, name):
        if name in table:
            return table[name], name
        base = re.sub(r"_\d+$", "", name)
        return table.get(base), base

    if sub_name == group_name or group_name in leaves and group_name not in submodels:
        return leaves.get(group_name), group_name
    if group_name in submodels:
        layer, name = lookup(submodels[group_name], sub_name)
        return layer, name
    layer, name = lookup(leaves, sub_name)
    return layer, name
