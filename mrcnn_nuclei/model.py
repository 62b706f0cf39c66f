"""MaskRCNN: Matterport's model surface (build, train, detect, weights) as a thin facade over
one module per job:

* :mod:`mrcnn_nuclei.network`: the training and inference graphs from a config (named outputs);
* :mod:`mrcnn_nuclei.training`: training model and loss dict, layer presets, optimizer and
  learning-rate schedule, checkpoint/log callbacks, the default batch loader;
* :mod:`mrcnn_nuclei.runs`: run-folder naming, checkpoint epochs, ``find_last_checkpoint``;
* :mod:`mrcnn_nuclei.molding`: images <-> graph inputs and outputs;
* :mod:`mrcnn_nuclei.inference.detect`: input checks, memory bound, batched graph runs;
* :mod:`mrcnn_nuclei.weights`: reading and writing weight files.

    model = MaskRCNN("training", config, model_dir="logs")
    model.train(train_ds, val_ds, learning_rate=config.LEARNING_RATE, epochs=20, layers="heads")
    model = MaskRCNN("inference", config, model_dir="logs")
    results = model.detect([image])   # [{"rois", "class_ids", "scores", "masks"}]

The names of those modules that users and tests start from are re-exported here (``LAYER_REGEX``,
``WarmUp``, ``LearningRateDecay``, ``MaskRCNNTrainingModel``, ``AtomicCheckpoint``,
``find_last_checkpoint`` ...).
"""

from __future__ import annotations

import logging
import os

import keras
import numpy as np

from . import distribute
from . import runs
from .network import INFERENCE_OUTPUTS, build_graph
from .runs import checkpoint_epoch, find_last_checkpoint
from .training import (LAYER_REGEX, AtomicCheckpoint, LearningRateDecay, MaskRCNNTrainingModel,
                       WarmUp, add_lr_decay, compile_training_model, cosine_factor, layer_regex,
                       make_training_loader, progress_logger, set_trainable)

__all__ = ["MaskRCNN", "MaskRCNNTrainingModel", "LAYER_REGEX", "WarmUp", "LearningRateDecay",
           "cosine_factor", "AtomicCheckpoint", "find_last_checkpoint", "checkpoint_epoch",
           "INFERENCE_OUTPUTS", "log"]

logger = logging.getLogger(__name__)


def log(text, array=None):
    """Print ``text`` and, for an array, its shape, min and max (Matterport's helper)."""
    if array is not None:
        array = np.asarray(array)
        text = f"{text:25s} shape: {str(array.shape):20s} "
        if array.size:
            text += f"min: {array.min():10.5f} max: {array.max():10.5f} {array.dtype}"
        else:
            text += f"min: {'':10s} max: {'':10s} {array.dtype}"
    print(text)


class _dtype_policy:
    """Context: Keras global dtype policy ``name`` (None: unchanged) while building."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.previous = keras.config.dtype_policy()
        if self.name:
            keras.config.set_dtype_policy(self.name)

    def __exit__(self, *exc):
        keras.config.set_dtype_policy(self.previous)


# ------------------------------------------------------------------------------------ facade
class MaskRCNN:
    """Mask R-CNN with Matterport's API: ``MaskRCNN(mode, config, model_dir)``.

    mode: "training" (a :class:`MaskRCNNTrainingModel` whose inputs are the training-batch
    dict of docs/INTERFACES.md) or "inference" (inputs input_image [B, H, W, C] and
    input_image_meta; outputs a dict by name, in the positional order
    :data:`~mrcnn_nuclei.network.INFERENCE_OUTPUTS`: detections, mrcnn_class, mrcnn_bbox,
    mrcnn_mask, rpn_rois, rpn_class, rpn_bbox).  The graphs: :mod:`mrcnn_nuclei.network`.
    """

    def __init__(self, mode, config, model_dir):
        if mode not in ("training", "inference"):
            raise ValueError(f"MaskRCNN: mode must be 'training' or 'inference', got {mode!r}")
        if not getattr(config, "NAME", None):
            raise ValueError("MaskRCNN: config.NAME must be set (it names the log folders and "
                             "checkpoints); override NAME in your Config subclass")
        self.mode = mode
        self.config = config
        self.model_dir = os.fspath(model_dir)
        self.epoch = 0
        self.log_dir = None
        self.checkpoint_path = None
        self.distribution = distribute.for_config(config)
        with self.distribution.scope(), _dtype_policy(getattr(config, "MIXED_PRECISION", None)):
            self.keras_model = self.build(mode, config)
        self.set_log_dir()

    # -------------------------------------------------------------------------------- build
    def build(self, mode, config):
        """Build and return the Keras model for ``mode``: :func:`mrcnn_nuclei.network.build_graph`
        (see the class docstring)."""
        return build_graph(mode, config)

    # -------------------------------------------------------------------------------- logs
    def set_log_dir(self, model_path=None):
        """Choose the run folder and epoch counter (names: :mod:`mrcnn_nuclei.runs`).

        With ``model_path`` (a checkpoint written by :meth:`train`, in a run folder) training
        continues in that checkpoint's own folder after its epoch.  Otherwise the run folder is
        ``model_dir/<name><YYYYmmddTHHMMSS>`` (Matterport's name plus seconds); it is created
        by :meth:`train` with ``os.mkdir``, and when another run took that name (two runs
        started in the same second) ``_2``, ``_3`` ... is appended, so no run overwrites
        another's checkpoints or config.json.  ``log_dir`` and ``checkpoint_path`` follow.
        """
        folder, self.epoch = runs.resume_run(model_path) if model_path else (None, 0)
        self._log_dir_claimed = folder is not None  # resume: continue in the checkpoint's folder
        self.log_dir = folder or runs.new_run_dir(self.model_dir, self.config.NAME)
        self.checkpoint_path = runs.checkpoint_pattern(self.log_dir, self.config.NAME)

    def _claim_log_dir(self):
        """Create this run's folder (see :meth:`set_log_dir`); raises OSError naming model_dir
        when it cannot be created."""
        from .fileio import check_writable_dir

        if getattr(self, "_log_dir_claimed", False):
            check_writable_dir(self.log_dir, "run folder")
            return self.log_dir
        self.log_dir = runs.claim_run_dir(self.log_dir)
        self.checkpoint_path = runs.checkpoint_pattern(self.log_dir, self.config.NAME)
        self._log_dir_claimed = True
        return self.log_dir

    def find_last(self, any_name=False):
        """Path of the newest checkpoint in the newest run folder of this config's NAME that
        holds one (Matterport's ``find_last``); with ``any_name`` of any NAME.  See
        :func:`find_last_checkpoint`. Raises FileNotFoundError when there is none."""
        return find_last_checkpoint(self.model_dir, None if any_name else self.config.NAME)

    # -------------------------------------------------------------------------------- weights
    def load_weights(self, filepath, by_name=False, exclude=None, allow_partial=None):
        """Load Matterport ``.h5`` or native ``.weights.h5`` weights (see mrcnn_nuclei.weights);
        returns its report and, for a checkpoint of ours, continues its epoch numbering.

        allow_partial: whether layers of the model that the file leaves unfilled (random) are
            accepted.  Default None: True in training mode (the report lists them, e.g. COCO
            without the class heads), False in inference mode, where such a load raises
            :class:`mrcnn_nuclei.weights.PartialWeightsError` naming the layers and the likely
            cause before anything is assigned.  Pass True to detect with a partial file anyway.
        """
        from . import weights as W

        if allow_partial is None:
            allow_partial = self.mode == "training"
        report = W.load_weights(self.keras_model, filepath, by_name=by_name, exclude=exclude,
                                allow_partial=allow_partial)
        self.set_log_dir(filepath)
        return report

    def save_weights(self, filepath):
        """Save native weights (+ the config JSON beside them) via mrcnn_nuclei.weights, written
        atomically with the user's umask; OSError (full disk ...) names the file."""
        from . import weights as W

        return W.save_weights(self.keras_model, filepath, config=self.config)

    def get_imagenet_weights(self):
        """Path of the ImageNet ResNet-50 file on disk (never downloads)."""
        from . import weights as W

        return W.find_weights_file("imagenet")

    # -------------------------------------------------------------------------------- training
    def set_trainable(self, layer_regex, keras_model=None, verbose=0):
        """Make layers whose name fully matches ``layer_regex`` trainable, freeze the rest
        (:func:`mrcnn_nuclei.training.set_trainable`)."""
        set_trainable(keras_model or self.keras_model, layer_regex, verbose)

    def compile(self, learning_rate, momentum):
        """Compile the training model with SGD(momentum, weight decay, clipnorm) and warm-up
        (:func:`mrcnn_nuclei.training.compile_training_model`); ``lr_schedule`` holds the
        schedule (or None)."""
        self.lr_schedule = compile_training_model(self.keras_model, self.config, learning_rate,
                                                  momentum, self.distribution)

    def train(self, train_dataset, val_dataset, learning_rate, epochs, layers, augmentation=None,
              custom_callbacks=None, workers=1, use_multiprocessing=False, verbose=1,
              loader=None):
        """Train until epoch ``epochs`` (a total: a staged schedule continues numbering).

        layers: "heads", "3+", "4+", "5+", "all" or a regex over layer names.
        loader: factory of the batch loaders, called as ``loader(dataset, config, shuffle=,
            augmentation=, workers=, use_multiprocessing=, steps_per_epoch=)``; default
            :func:`mrcnn_nuclei.training.make_training_loader` (e.g. pass
            ``functools.partial(make_training_loader, cache=True)`` to keep decoded images).
        Writes TensorBoard logs and a checkpoint per epoch to ``self.log_dir`` (created here;
        see :meth:`set_log_dir`).
        Returns the keras History.  When ``epochs`` is not above ``self.epoch`` (e.g. resuming
        from a checkpoint of epoch 4 with epochs=4) nothing is trained, no folder is created, a
        warning says which ``epochs`` to pass, and None is returned.
        """
        if self.mode != "training":
            raise ValueError("train() needs a model built with mode='training'")
        regex = layer_regex(layers)
        if epochs <= self.epoch:
            logger.warning(
                "train(): nothing to train: epochs=%d is a total (Matterport) and the model is "
                "already at epoch %d (loaded from a checkpoint of that epoch); pass epochs=%d or "
                "more to train on", epochs, self.epoch, self.epoch + 1)
            return None
        from .data.checks import check_training_datasets  # every image, before any step
        train_dataset, val_dataset = check_training_datasets(self.config, train_dataset, val_dataset)
        c = self.config
        make_loader = loader or make_training_loader
        opts = dict(shuffle=True, workers=workers, use_multiprocessing=use_multiprocessing)
        train_gen = make_loader(train_dataset, c, augmentation=augmentation,
                                steps_per_epoch=c.STEPS_PER_EPOCH, **opts)
        val_gen = None
        if val_dataset is not None:
            val_gen = make_loader(val_dataset, c, augmentation=None,
                                  steps_per_epoch=c.VALIDATION_STEPS, **opts)
        self._claim_log_dir()
        c.save_json(os.path.join(self.log_dir, "config.json"))
        callbacks = [progress_logger(self.log_dir), AtomicCheckpoint(self.checkpoint_path)]
        callbacks += list(custom_callbacks or [])
        if verbose:
            print(f"\nStarting at epoch {self.epoch}. LR={learning_rate}\n"
                  f"Checkpoint Path: {self.checkpoint_path}")
        self.set_trainable(regex)
        self.compile(learning_rate, c.LEARNING_MOMENTUM)
        callbacks = add_lr_decay(callbacks, c, (epochs - self.epoch) * c.STEPS_PER_EPOCH,
                                 self.lr_schedule)
        history = self.keras_model.fit(
            train_gen, initial_epoch=self.epoch, epochs=epochs,
            steps_per_epoch=c.STEPS_PER_EPOCH, callbacks=callbacks, validation_data=val_gen,
            validation_steps=c.VALIDATION_STEPS if val_gen is not None else None,
            verbose=verbose)
        self.epoch = max(self.epoch, epochs)
        return history

    # -------------------------------------------------------------------------------- inference
    def mold_inputs(self, images):
        """List of images -> (molded [N, H, W, C] float32 list, image_metas [N, META], windows).
        See :func:`mrcnn_nuclei.molding.mold_inputs` (config.RESIZE_SEMANTICS applies)."""
        from .molding import mold_inputs

        return mold_inputs(images, self.config)

    def unmold_detections(self, detections, mrcnn_mask, original_image_shape, image_shape,
                          window, soft=False):
        """One image's graph outputs -> (rois [N,4] int32, class_ids [N] int32, scores [N]
        float32, masks [H,W,N] bool, soft masks [H,W,N] float32 or None) at the original size.
        See :func:`mrcnn_nuclei.molding.unmold_detections`."""
        from .molding import unmold_detections

        return unmold_detections(detections, mrcnn_mask, original_image_shape, image_shape,
                                 window, self.config, soft=soft)

    def detect(self, images, verbose=0):
        """Detect nuclei. images: a LIST of [H, W] or [H, W, C] arrays, channels last, any
        dtype/channel count (or one [N, H, W, C] batch array).
        Returns one dict per image: rois [N, 4] int32 (y1, x1, y2, x2), class_ids [N] int32,
        scores [N] float32, masks [H, W, N] bool at the original image size.

        Raises ValueError for one bare image (``detect(image)``: pass ``[image]``) and for a
        channels-first [C, H, W] image (pass ``np.moveaxis(image, 0, -1)``).
        Before running, the memory an image needs is estimated
        (:func:`mrcnn_nuclei.inference.memory.estimate_detect_memory`, full-size mask stack
        H * W * DETECTION_MAX_INSTANCES bytes included). Past ``Config.DETECT_MEMORY_LIMIT_GB``
        (default "auto": half the machine's memory) it raises ``DetectMemoryError`` naming
        :func:`mrcnn_nuclei.inference.tiling.tiled_detect`; with ``Config.AUTO_TILE = True`` it
        runs :func:`~mrcnn_nuclei.inference.tiling.detect_tiled` instead (logged; that result
        also has ``labels`` [H, W] and non-overlapping masks; one-class configs only).
        When an image's detections fill all DETECTION_MAX_INSTANCES slots it warns with
        :class:`mrcnn_nuclei.inference.memory.DetectionLimitWarning`.
        """
        from .inference.detect import detect

        return detect(self, images, soft=False, verbose=verbose)

    def detect_soft(self, images, verbose=0):
        """Like :meth:`detect` (same input checks, memory bound and warnings; no AUTO_TILE),
        plus "soft_masks" [H, W, N] float32 in [0, 1] (mask probabilities pasted at full size,
        before thresholding) for TTA and ensembles."""
        from .inference.detect import detect

        return detect(self, images, soft=True, verbose=verbose)

    def detect_molded(self, molded_images, image_metas, verbose=0):
        """Detect on already molded images [N, H, W, C] (one array or a list of [H, W, C],
        channels last) with their image_metas [N, META] (original size and window read from
        the metas). Same memory bound (always raises past it) and DETECTION_MAX_INSTANCES
        warning as :meth:`detect`."""
        from .inference.detect import detect_molded

        return detect_molded(self, molded_images, image_metas, verbose=verbose)

    # -------------------------------------------------------------------------- model folders
    @classmethod
    def from_folder(cls, folder, allow_partial=False, **options):
        """A ready inference model from a model folder (or a weights file with its config):
        :func:`mrcnn_nuclei.modelfolder.load_model`; ``.postprocess`` holds its settings."""
        from .modelfolder import load_model

        return load_model(folder, allow_partial=allow_partial, **options)

    def save_folder(self, folder, postprocess=None):
        """Weights, config and post-processing settings in one folder:
        :func:`mrcnn_nuclei.modelfolder.save_model`. Returns the folder."""
        from .modelfolder import save_model

        return save_model(self, folder, postprocess)
