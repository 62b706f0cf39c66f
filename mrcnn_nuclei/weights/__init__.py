"""Weight files: Matterport's legacy ``.h5`` files, Keras 3 native files, and where to find them.

Three kinds of file load through :func:`load_weights`:

* **Legacy Matterport Keras-2 HDF5** (``mask_rcnn_coco.h5``, checkpoints of the TF1 code).  The
  root (or a ``model_weights`` group) has the attribute ``layer_names``; each layer has a group
  whose attribute ``weight_names`` lists its variables (``conv1/kernel:0``).  Weights are matched
  by *layer name* and, inside a layer, by *weight name* (``kernel``, ``bias``, ``gamma``, ``beta``,
  ``moving_mean``, ``moving_variance``), never by position.  The nested ``rpn_model`` group
  (``rpn_conv_shared/kernel:0`` ...) goes to the layers of the Keras model's ``rpn_model``
  sub-model; TimeDistributed head names (``mrcnn_class_bn1/gamma:0``) go to the layer of that name,
  whether the model wraps it in TimeDistributed or not.
* **Keras-1-era ImageNet ResNet-50** (``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``):
  same layer names, its own weight names (``conv1_W:0``, ``conv1_b:0``, ``bn_conv1_gamma:0``,
  ``bn_conv1_running_mean:0``, ``bn_conv1_running_std:0``).  ``W``/``b`` map to kernel/bias and
  ``running_mean``/``running_std`` to moving_mean/moving_variance (Keras 1 stored the variance
  under the name ``running_std``; the values are used unchanged).
* **Keras 3 native** ``.weights.h5`` written by :func:`save_weights`.  With ``by_name=False`` and
  no ``exclude`` Keras' own ``load_weights`` reads it (same architecture required).  With
  ``by_name=True`` or ``exclude`` the file is read with h5py: Keras 3 stores each layer's variables
  as datasets ``0, 1, ...`` in a ``vars`` group whose attribute ``name`` is the layer name; a
  wrapper's inner layer (TimeDistributed) sits below the wrapper's group.  Layers are matched by
  name and, inside a layer, variables by that order (Keras fixes it per layer type), checking
  every shape.

Every load validates the whole file against the model *before* assigning anything, so a failing
load never leaves a half-loaded model.  A shape mismatch on a layer that is not excluded raises
:class:`ValueError` naming the layer, the weight and both shapes (and, for the class-count
dependent heads, the ``exclude`` list to pass).

:func:`save_weights` writes a Keras 3 native file atomically with the config JSON beside it;
:func:`find_weights_file` finds ``mask_rcnn_coco.h5`` / the ImageNet ResNet-50 file on disk and
never downloads anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from pathlib import Path

import numpy as np

__all__ = [
    "LoadReport", "load_weights", "save_weights", "config_path_beside", "load_config_beside",
    "find_weights_file", "weights_search_dirs", "verify_weights_file", "file_kind",
    "CLASS_SPECIFIC_LAYERS", "WEIGHT_FILES", "resolve_weights_arg", "load_start_weights",
    "PartialWeightsError", "check_weights_file",
]

logger = logging.getLogger("mrcnn_nuclei.weights")

#: Head layers whose shapes depend on NUM_CLASSES (Matterport's nucleus exclude list).
CLASS_SPECIFIC_LAYERS = ("mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask")

#: Known weight files: file name, where it is published, checksum.
WEIGHT_FILES = {
    "coco": {
        "filename": "mask_rcnn_coco.h5",
        "url": "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5",
        "published": "Matterport Mask R-CNN release v2.0, asset mask_rcnn_coco.h5 (MIT license)",
        "size": 257557808,
        "sha256": "ee7eeb918fe544c8bc1fd0f1f9588bf9f8e0e1055a4d12a98f83fa83c5f8b36d",
    },
    "imagenet": {
        "filename": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "url": "https://github.com/fchollet/deep-learning-models/releases/download/v0.2/"
               "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "published": "fchollet/deep-learning-models release v0.2 (Keras-1-era ImageNet ResNet-50, "
                     "no top)",
        "md5": "a268eb855778b3df3c7506639542a6af",
    },
}

ENV_WEIGHTS_DIR = "MRCNN_NUCLEI_WEIGHTS"
_REPO_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"

# Keras-1 weight-name suffixes -> Keras 2/3 variable names.
_KERAS1_SUFFIXES = {
    "W": "kernel", "b": "bias", "gamma": "gamma", "beta": "beta",
    "running_mean": "moving_mean", "running_std": "moving_variance",
    "moving_mean": "moving_mean", "moving_variance": "moving_variance",
    "kernel": "kernel", "bias": "bias",
}


# ---------------------------------------------------------------------------------------- report
@dataclasses.dataclass
class LoadReport:
    """What a :func:`load_weights` call did, by layer name.

    loaded: model layers whose weights were set from the file.
    skipped: layers of the file with weights that the model does not have.
    excluded: layers named in ``exclude`` (left untouched).
    mismatched: ``(layer, weight, file_shape, model_shape)`` shape differences found on excluded
        layers (informational; on other layers a mismatch raises).
    missing_in_file: model layers with weights that the file does not hold (left untouched).
    unfilled: every model layer with weights that this load did not set (missing in the file or
        excluded): they keep their previous (usually random) values.
    """

    path: str = ""
    kind: str = ""
    loaded: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    excluded: list = dataclasses.field(default_factory=list)
    mismatched: list = dataclasses.field(default_factory=list)
    missing_in_file: list = dataclasses.field(default_factory=list)
    unfilled: list = dataclasses.field(default_factory=list)

    def __str__(self):
        def names(items, limit=8):
            items = [str(i) for i in items]
            more = f", ... (+{len(items) - limit})" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        lines = [f"Loaded weights from {self.path} ({self.kind}):",
                 f"  loaded {len(self.loaded)} layers"]
        if self.excluded:
            lines.append(f"  excluded {len(self.excluded)}: {names(self.excluded)}")
        if self.mismatched:
            lines.append("  shape differences on excluded layers: " + names(
                [f"{l}/{w} file {fs} model {ms}" for l, w, fs, ms in self.mismatched], 4))
        if self.skipped:
            lines.append(f"  in the file but not in the model (skipped) {len(self.skipped)}: "
                         f"{names(self.skipped)}")
        if self.missing_in_file:
            lines.append(f"  in the model but not in the file (left as they were) "
                         f"{len(self.missing_in_file)}: {names(self.missing_in_file)}")
        return "\n".join(lines)


class PartialWeightsError(ValueError):
    """A weights file would leave layers of the model unfilled and the caller did not pass
    ``allow_partial=True`` (``--allow-partial-weights``).  ``.report`` is the LoadReport."""

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


def _partial_message(path, unfilled, report):
    """Error text for a load that leaves ``unfilled`` layers: the layers and the likely cause."""
    shown = ", ".join(unfilled[:12]) + (f", ... (+{len(unfilled) - 12})" if len(unfilled) > 12
                                        else "")
    backbone = [n for n in unfilled if re.match(r"(res\d|bn\d|conv1$|bn_conv1$)", n)]
    heads = [n for n in unfilled if n in CLASS_SPECIFIC_LAYERS]
    if backbone:
        cause = ("the file was saved from a model with another backbone depth (e.g. a ResNet-18 "
                 "checkpoint into a ResNet-34/50 model): set BACKBONE (--backbone) to the file's")
    elif heads and len(heads) == len(unfilled):
        cause = ("the class-specific heads were excluded or are absent (a file of another class "
                 "count, e.g. COCO): train the heads first, then detect with that checkpoint")
    elif all(n.startswith(("mrcnn_", "rpn_", "fpn_")) for n in unfilled):
        cause = ("the file holds only a backbone (e.g. ImageNet weights): train first, then "
                 "detect with a checkpoint")
    else:
        cause = "the file was saved from another architecture or config; check the config"
    return (f"{path} leaves {len(unfilled)} of the model's layers unfilled (they would keep "
            f"random values; {len(report.loaded)} layers loaded): {shown}. Likely cause: {cause}. "
            "Nothing was loaded. To use the file anyway pass allow_partial=True (command line: "
            "--allow-partial-weights).")


# ---------------------------------------------------------------------------------------- model index
def _model_layers(keras_model):
    """Leaf layers of ``keras_model`` by name, descending into nested keras.Model sub-models.

    Returns (leaves: {name: layer}, submodels: {name: {sub_name: layer}}).  A TimeDistributed (or
    any non-Model) layer counts as one leaf: its weights are those of the layer it wraps.
    """
    import keras

    leaves, submodels = {}, {}

    def walk(model, into):
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                inner = {}
                walk(layer, inner)
                submodels[layer.name] = inner
                for name, sub in inner.items():
                    into.setdefault(name, sub)
            else:
                into.setdefault(layer.name, layer)

    walk(keras_model, leaves)
    return leaves, submodels


def _weight_key(variable):
    """Short name of a Keras variable: ``kernel``, ``gamma`` ... (path's last component)."""
    name = getattr(variable, "path", None) or variable.name
    return name.split("/")[-1].split(":")[0]


def _layer_weights(layer):
    """{weight key: variable} of one leaf layer; raises if two weights share a key."""
    out = {}
    for v in layer.weights:
        key = _weight_key(v)
        if key in out:
            raise ValueError(f"layer {layer.name!r} has two weights named {key!r}; it cannot be "
                             "loaded by weight name")
        out[key] = v
    return out


# ---------------------------------------------------------------------------------------- file kinds
def _missing_file_message(path):
    """Message for a weights ``path`` that does not exist: the path and where to obtain a file."""
    name = os.path.basename(path)
    for kind, info in WEIGHT_FILES.items():
        if name == info["filename"]:
            checksum = (f"sha256 {info['sha256']}" if "sha256" in info else f"md5 {info['md5']}")
            return (f"weights file not found: {path}. {name} ({kind} weights) is published as "
                    f"{info['published']}: {info['url']} ({checksum}); download it to that path "
                    f"or to {_REPO_WEIGHTS_DIR / name} (found by --weights={kind}). Nothing is "
                    "downloaded automatically; see weights/README.md.")
    coco = WEIGHT_FILES["coco"]
    return (f"weights file not found: {path}. Pass an existing file: a checkpoint written by "
            "MaskRCNN.train() (model_dir/<name><YYYYmmddTHHMMSS>/mask_rcnn_<name>_<epoch>"
            ".weights.h5; MaskRCNN.find_last() returns the newest) or by save_weights(), or "
            f"Matterport's {coco['filename']} from {coco['url']} (put it in {_REPO_WEIGHTS_DIR}; "
            "see weights/README.md).")


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


# ---------------------------------------------------------------------------------------- loading
def _normalise_exclude(exclude):
    if exclude is None:
        return set()
    if isinstance(exclude, str):
        return {exclude}
    return {str(e) for e in exclude}


def _mismatch_error(path, problems):
    lines = [f"{path}: weight shapes do not match the model (nothing was loaded):"]
    lines += [f"  layer {l!r} weight {w!r}: file {fs}, model {ms}" for l, w, fs, ms in problems]
    heads = sorted({p[0] for p in problems} & set(CLASS_SPECIFIC_LAYERS))
    if heads:
        lines.append(
            "  These head layers depend on NUM_CLASSES (the file was trained with another class "
            f"count). Pass exclude={list(CLASS_SPECIFIC_LAYERS)!r} to load everything else, as "
            "Matterport's nucleus sample does.")
    else:
        lines.append("  Check BACKBONE / TOP_DOWN_PYRAMID_SIZE / anchors per location against the "
                     "file, or pass exclude=[...] with the layer names above.")
    return ValueError("\n".join(lines))


def load_weights(keras_model, path, by_name=False, exclude=None, allow_partial=True):
    """Load ``path`` into ``keras_model`` and return a :class:`LoadReport` (also logged).

    keras_model: a built keras.Model (layers named as Matterport's; may hold a nested
        ``rpn_model``).
    path: Matterport/Keras-1 ``.h5`` or Keras 3 ``.weights.h5``.
    by_name: match layers by name and tolerate layers missing on either side (reported).  With
        False a legacy file must hold every model layer that has weights.
    exclude: layer names to leave untouched (e.g. :data:`CLASS_SPECIFIC_LAYERS`).
    allow_partial: False raises :class:`PartialWeightsError` (nothing assigned) when the load
        would leave any model layer with weights unfilled (``report.unfilled``); True (default
        here; ``MaskRCNN.load_weights`` passes False in inference mode) loads and reports them.
    Raises FileNotFoundError (no file), ValueError (unknown layout, truncated file, shape
    mismatch, missing layers), PartialWeightsError.
    """
    path = os.fspath(path)
    kind = file_kind(path)
    excl = _normalise_exclude(exclude)
    try:
        if kind == "native" and not by_name and not excl:
            report = _load_native_whole(keras_model, path)
            plan = None
        elif kind == "legacy":
            plan, report = _plan_legacy(keras_model, path, by_name, excl)
        else:
            plan, report = _plan_native(keras_model, path, excl)
    except OSError as err:  # h5py read errors on a damaged file
        raise ValueError(_damaged_message(path, err)) from None
    leaves, _ = _model_layers(keras_model)
    loaded = set(report.loaded)
    report.unfilled = [n for n, l in leaves.items() if l.weights and n not in loaded]
    if report.unfilled and not allow_partial:
        raise PartialWeightsError(_partial_message(path, report.unfilled, report), report)
    for variable, array in plan or []:
        variable.assign(array)
    unknown = sorted(excl - set(leaves) - set(report.skipped) - set(report.excluded))
    if unknown:
        logger.warning("exclude names %s match no layer of the model or the file", unknown)
    logger.info("%s", report)
    return report


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


def _compare(layer, arrays):
    """[(key, file_shape, model_shape)] for the weights a layer and a file entry share."""
    model_w = _layer_weights(layer) if isinstance(arrays, dict) else None
    if model_w is None:
        return [(_weight_key(v), tuple(a.shape), tuple(v.shape))
                for v, a in zip(layer.weights, arrays)]
    return [(k, tuple(a.shape), tuple(model_w[k].shape)) for k, a in arrays.items()
            if k in model_w]


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


# ---------------------------------------------------------------------------------------- saving
def _native_path(path):
    path = os.fspath(path)
    return path if path.endswith(".weights.h5") else (
        path[:-3] + ".weights.h5" if path.endswith(".h5") else path + ".weights.h5")


def config_path_beside(path):
    """``dir/name.weights.h5`` (or ``dir/name.h5``) -> ``dir/name.json``."""
    path = os.fspath(path)
    for suffix in (".weights.h5", ".h5"):
        if path.endswith(suffix):
            return path[: -len(suffix)] + ".json"
    return path + ".json"


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


def load_config_beside(path, config_class=None):
    """The Config saved beside weights ``path`` (``name.json``), or None if there is none.

    config_class: class used to rebuild it (default :class:`mrcnn_nuclei.config.Config`).
    """
    json_path = config_path_beside(path)
    if not os.path.exists(json_path):
        return None
    if config_class is None:
        from ..config import Config as config_class
    return config_class.load_json(json_path)


# ---------------------------------------------------------------------------------------- finding
def weights_search_dirs():
    """Folders searched by :func:`find_weights_file`, in order."""
    dirs = []
    env = os.environ.get(ENV_WEIGHTS_DIR)
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(_REPO_WEIGHTS_DIR)
    dirs.append(Path.home() / ".keras" / "models")
    return dirs


def find_weights_file(kind):
    """Path of a known weights file on disk; never downloads.

    kind: "coco" (``mask_rcnn_coco.h5``) or "imagenet"
        (``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``).
    Looks in $MRCNN_NUCLEI_WEIGHTS (a folder, or the file itself), the repository's
    ``weights/`` folder, then ``~/.keras/models``.  Raises FileNotFoundError naming every place
    looked, where to put the file and where it is published.
    """
    if kind not in WEIGHT_FILES:
        raise ValueError(f"kind={kind!r}: known weight files are {sorted(WEIGHT_FILES)}")
    info = WEIGHT_FILES[kind]
    env = os.environ.get(ENV_WEIGHTS_DIR)
    if env and os.path.isfile(env) and os.path.basename(env) == info["filename"]:
        return os.path.abspath(env)
    looked = []
    for folder in weights_search_dirs():
        candidate = folder / info["filename"]
        looked.append(str(candidate))
        if candidate.is_file():
            return str(candidate)
    checksum = (f"sha256 {info['sha256']}" if "sha256" in info else f"md5 {info['md5']}")
    raise FileNotFoundError(
        f"{info['filename']} ({kind} weights) not found. Looked in:\n  " + "\n  ".join(looked) +
        f"\nPut the file at {_REPO_WEIGHTS_DIR / info['filename']} (or in the folder named by "
        f"${ENV_WEIGHTS_DIR}). It is published as {info['published']}: {info['url']} "
        f"({checksum}). Nothing is downloaded automatically; see weights/README.md.")


def verify_weights_file(path, kind):
    """Check ``path`` against the published checksum of ``kind``; returns the hex digest.

    Raises ValueError naming the path and both digests when they differ.
    """
    info = WEIGHT_FILES[kind]
    algo = "sha256" if "sha256" in info else "md5"
    digest = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    if value != info[algo]:
        raise ValueError(f"{path}: {algo} {value} differs from the published {info[algo]} of "
                         f"{info['filename']}; the download is incomplete or another file")
    return value


# ---------------------------------------------------------------------------------------- CLI helper
WEIGHT_CHOICES = ("coco", "imagenet", "last", "none")


def resolve_weights_arg(spec, model=None, model_dir=None, name=None):
    """Path for a ``--weights`` value: coco | imagenet | last | none | PATH (None for "none").

    ``last``: the newest checkpoint (``mrcnn_nuclei.model.find_last_checkpoint``) of ``model``
    (a MaskRCNN: its model_dir and config NAME) or, without a model, under ``model_dir`` of
    config ``name`` (None: runs of any NAME).  The file found is checked cheaply
    (:func:`check_weights_file`), so a missing, truncated or foreign file fails here, before a
    model is built.  Raises FileNotFoundError / ValueError naming the path and the accepted values.
    """
    key = str(spec).lower()
    if key == "none":
        return None
    if key in ("coco", "imagenet"):
        path = find_weights_file(key)
    elif key == "last":
        if model is not None:
            path = model.find_last()
        elif model_dir is not None:
            from ..model import find_last_checkpoint

            path = find_last_checkpoint(model_dir, name)
        else:
            raise ValueError("--weights=last needs the model or model_dir (to search for runs)")
    else:
        path = os.path.expanduser(os.fspath(spec))
        if not os.path.exists(path):
            raise FileNotFoundError(f"--weights={spec}: no such file {path}; pass an existing "
                                    f"weights file or one of {', '.join(WEIGHT_CHOICES)}")
    if os.path.exists(path):  # (test doubles may name files that are not there)
        check_weights_file(path)
    return path


def load_start_weights(model, spec, allow_partial=None):
    """Load the weights a ``--weights`` value names into a MaskRCNN; returns (path, report).

    coco: Matterport's COCO file by name with :data:`CLASS_SPECIFIC_LAYERS` excluded (the heads
    of another class count); imagenet, last and PATH: by name; none: nothing, (None, None).
    allow_partial: see ``MaskRCNN.load_weights`` (default: allowed when training, an error naming
    the unfilled layers in inference mode).
    """
    path = resolve_weights_arg(spec, model)
    if path is None:
        return None, None
    exclude = list(CLASS_SPECIFIC_LAYERS) if str(spec).lower() == "coco" else None
    return path, model.load_weights(path, by_name=True, exclude=exclude,
                                    allow_partial=allow_partial)
