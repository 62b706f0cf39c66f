"""What a load did and why it failed: the model's layer index (leaf layers by name, nested
sub-models entered), the :class:`LoadReport`, and the errors for partial loads and shape
mismatches (naming the layers and the likely cause)."""

from __future__ import annotations

import dataclasses
import re

__all__ = ["CLASS_SPECIFIC_LAYERS", "LoadReport", "PartialWeightsError"]


#: Head layers whose shapes depend on NUM_CLASSES (Matterport's nucleus exclude list).
CLASS_SPECIFIC_LAYERS = ("mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask")


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


def _compare(layer, arrays):
    """[(key, file_shape, model_shape)] for the weights a layer and a file entry share."""
    model_w = _layer_weights(layer) if isinstance(arrays, dict) else None
    if model_w is None:
        return [(_weight_key(v), tuple(a.shape), tuple(v.shape))
                for v, a in zip(layer.weights, arrays)]
    return [(k, tuple(a.shape), tuple(model_w[k].shape)) for k, a in arrays.items()
            if k in model_w]


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
