"""mrcnn_nuclei: Mask R-CNN for cell-nuclei instance segmentation on TensorFlow 2 / Keras 3.

The names users start from::

    import mrcnn_nuclei as mn

    config = mn.NucleusConfig()                      # Matterport's Config, nuclei presets
    train = mn.DSBDataset(); train.load_nucleus(root, "train"); train.prepare()
    model = mn.MaskRCNN("training", config, model_dir="logs")
    model.train(train, None, config.LEARNING_RATE, epochs=20, layers="heads")
    model.save_folder("models/dsb")                  # weights + config + post-processing
    model = mn.load_model("models/dsb")              # a ready inference model
    summary = mn.evaluate_dataset(model, val)        # every metric on a dataset

They are imported on first use (a module ``__getattr__``), so ``import mrcnn_nuclei`` stays cheap
and loads TensorFlow only when a model name (``MaskRCNN``) is used.  Subpackages and modules
(``mrcnn_nuclei.metrics``, ``.inference``, ``.slides`` ...) load the same way.
"""

import importlib as _importlib
import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

#: public name -> module that defines it (relative to this package)
_LAZY = {
    "MaskRCNN": ".model",
    "Config": ".config",
    "ConfigError": ".config",
    "NucleusConfig": ".config",
    "NucleusInferenceConfig": ".config",
    "inference_config": ".config",
    "Dataset": ".data.dataset",
    "DSBDataset": ".datasets",
    "LabelImageDataset": ".datasets",
    "MoNuSegDataset": ".datasets",
    "PanNukeDataset": ".datasets",
    "SyntheticNucleiDataset": ".datasets",
    "evaluate_dataset": ".evaluation",
    "detect_images": ".evaluation",
    "load_model": ".modelfolder",
    "save_model": ".modelfolder",
    "PostProcess": ".modelfolder",
    "find_last_checkpoint": ".runs",
    "tiled_detect": ".inference.tiling",
    "segment_slide": ".slides",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(_importlib.import_module(module, __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    try:  # a submodule or subpackage: mrcnn_nuclei.metrics, .inference, ...
        return _importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
