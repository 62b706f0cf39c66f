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

One job per module:

    report.py     the model's layer index, LoadReport, PartialWeightsError, mismatch messages
    files.py      file_kind / check_weights_file (cheap checks, no model)
    legacy.py     the Matterport / Keras-1 HDF5 reader
    native.py     the Keras 3 reader and save_weights
    load.py       load_weights (validate everything, then assign)
    beside.py     where a weights file's config JSON is (<stem>.json, then config.json)
    registry.py   the known files (COCO, ImageNet), their checksums and search folders
    cli.py        the --weights argument: resolve_weights_arg, load_start_weights
"""

from __future__ import annotations

from .beside import CONFIG_NAME, config_path_beside, find_config_beside, load_config_beside
from .cli import WEIGHT_CHOICES, load_start_weights, resolve_weights_arg
from .files import check_weights_file, file_kind
from .load import load_weights, logger
from .native import save_weights
from .registry import (ENV_WEIGHTS_DIR, WEIGHT_FILES, _REPO_WEIGHTS_DIR, find_weights_file,
                       verify_weights_file, weights_search_dirs)
from .report import (CLASS_SPECIFIC_LAYERS, LoadReport, PartialWeightsError, _layer_weights,
                     _model_layers, _weight_key)

__all__ = [
    "LoadReport", "load_weights", "save_weights", "config_path_beside", "load_config_beside",
    "find_config_beside", "CONFIG_NAME",
    "find_weights_file", "weights_search_dirs", "verify_weights_file", "file_kind",
    "CLASS_SPECIFIC_LAYERS", "WEIGHT_FILES", "resolve_weights_arg", "load_start_weights",
    "PartialWeightsError", "check_weights_file", "WEIGHT_CHOICES", "ENV_WEIGHTS_DIR",
]
