"""Subprocess worker for tests/test_distribute.py: one SGD step (momentum 0.9) of a small Mask
R-CNN from the same weights, on one device with a global batch of different images and
data-parallel with a share of the images on every replica / process; writes the losses, the
batch's image_meta and a sample of the weights before and after the step to
``WORKDIR/<name>.npz`` (keys ``<run>|<item>``).

    python tests/distribute_worker.py tf WORKDIR                           # -> tf.npz
    python tests/distribute_worker.py jax_process WORKDIR PROCESS_ID PORT  # -> jax_process<i>.npz

``tf``: for each ``LOSS_REDUCTION`` ("batch", "image"), one device (``DISTRIBUTE = "none"``,
2 images) and ``tf.distribute.MirroredStrategy`` over two logical CPUs (one image each), in one
process (the CPU is split before TensorFlow starts).  ``jax_process`` (two processes, started
with ``XLA_FLAGS=--xla_force_host_platform_device_count=2``): ``distribute.initialize`` on
127.0.0.1, ``keras.distribution.DataParallel`` over the 2 x 2 host devices (GPU_COUNT = 2, one
image per device); each process takes its 2 images of the global batch of 4 from the default
training loader (``make_training_loader`` shards by process); then process 0 alone runs the
one-device step on the whole global batch from the same weights.  Every model is built after
``keras.utils.set_random_seed(0)``; the ROI sampler's random keys are replaced by fixed ones
(per proposal index, the same for every image), so replicas and the single device sample the
same ROIs for the same image.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import tempfile
import time

T0 = time.time()

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo
MODE, WORK = sys.argv[1], sys.argv[2]
if MODE == "tf":
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()   # same sums whatever the thread timing
    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(_cpu,
                                               [tf.config.LogicalDeviceConfiguration()] * 2)
if MODE == "jax_process":
    from mrcnn_nuclei import distribute as _distribute

    _distribute.initialize(f"127.0.0.1:{sys.argv[4]}", 2, int(sys.argv[3]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from mrcnn_nuclei.config import Config  # noqa: E402
from mrcnn_nuclei.datasets import SyntheticNucleiDataset  # noqa: E402
from mrcnn_nuclei.model import MaskRCNN  # noqa: E402
from mrcnn_nuclei.training import LAYER_REGEX, make_training_loader  # noqa: E402

#: layers whose weights are compared (FPN, RPN, both heads: the layers that train)
SAMPLE = ("fpn_c5p5", "fpn_p2", "rpn_conv_shared", "rpn_bbox_pred", "mrcnn_class_conv1",
          "mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask_conv1", "mrcnn_mask")


class DistConfig(Config):
    """ResNet-18 with frozen BN, 64 px images, few anchors and ROIs: every loss, little graph."""
    NAME = "dist"
    NUM_CLASSES = 2
    BACKBONE = "resnet18"
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    MEAN_PIXEL = np.array([40.0, 40.0, 40.0])
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    PRE_NMS_LIMIT = 1024        # every anchor of a 64 px image: some proposals hit nuclei
    POST_NMS_ROIS_TRAINING = 128
    POST_NMS_ROIS_INFERENCE = 64
    TRAIN_ROIS_PER_IMAGE = 16
    ROI_POSITIVE_RATIO = 0.5
    MAX_GT_INSTANCES = 16
    MINI_MASK_SHAPE = (14, 14)
    MASK_POOL_SIZE = 7
    MASK_SHAPE = [14, 14]
    TOP_DOWN_PYRAMID_SIZE = 32
    FPN_CLASSIF_FC_LAYERS_SIZE = 64
    WEIGHT_DECAY = 0.0
    GRADIENT_CLIP_NORM = None   # Keras clips each replica's share on TensorFlow
    LEARNING_MOMENTUM = 0.9
    SEED = 3


def config(images_per_gpu, gpu_count, reduction="batch", parallel=None):
    """DistConfig with this batch split; data-parallel by default when GPU_COUNT > 1."""
    parallel = gpu_count > 1 if parallel is None else parallel
    attrs = dict(IMAGES_PER_GPU=images_per_gpu, GPU_COUNT=gpu_count, LOSS_REDUCTION=reduction,
                 DISTRIBUTE="data_parallel" if parallel else "none")
    return type("Cfg", (DistConfig,), attrs)()


def fixed_roi_keys():
    """Replace keras.random.uniform (the ROI sampler's keys) by a fixed function of the
    proposal index, broadcast over the images: no random state shared between replicas."""
    def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
        i = ops.cast(ops.arange(int(shape[-1])), "float32")
        v = ops.sin(i * 12.9898 + 0.5) * 43758.5453
        return ops.broadcast_to(v - ops.floor(v), tuple(shape))

    keras.random.uniform = uniform


def to_numpy(x):
    """A (possibly multi-process, replicated) array -> numpy."""
    if getattr(x, "is_fully_addressable", True) is False:
        x = x.addressable_data(0)
    return np.asarray(keras.ops.convert_to_numpy(x))


def sample_weights(model):
    out = {}
    for name in SAMPLE:
        try:
            layer = model.get_layer(name)
        except ValueError:
            layer = model.get_layer("rpn_model").get_layer(name)
        for w in layer.weights:
            out[f"{name}/{w.name}"] = to_numpy(w.value)
    return out


def loader(cfg):
    """The default training loader (:func:`make_training_loader`: this process's slice of
    every global batch under several processes) over 4 synthetic 64 px
    images with 2-10 nuclei each.  Batch 0 holds images with 4 and 9 nuclei: positive anchors
    4 and 9, positive ROIs 1 and 5 (so each replica's own means differ from the whole-batch
    ones)."""
    ds = SyntheticNucleiDataset()
    ds.load(4, seed=3, height=64, width=64, min_nuclei=2, max_nuclei=10, radius=(4, 9))
    ds.prepare()
    return make_training_loader(ds, cfg, shuffle=True)


@contextlib.contextmanager
def numpy_initializers():
    """On JAX, let the weight initializers draw from NumPy (seeded) while the model is built:
    jax.random compiles one program per weight shape (~40 of them, about half a minute of a
    2-core CPU per process); the values only need to be the same in every process."""
    if keras.backend.backend() != "jax":
        yield
        return
    from keras.src.backend.jax import random as jax_random

    rng = np.random.default_rng(0)

    def truncated(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        x = rng.normal(size=shape)
        while np.any(np.abs(x) > 2):
            bad = np.abs(x) > 2
            x[bad] = rng.normal(size=int(bad.sum()))
        return (x * stddev + mean).astype(dtype or "float32")

    saved = {k: getattr(jax_random, k) for k in ("uniform", "normal", "truncated_normal")}
    jax_random.uniform = lambda shape, minval=0.0, maxval=1.0, dtype=None, seed=None: \
        rng.uniform(minval, maxval, size=shape).astype(dtype or "float32")
    jax_random.normal = lambda shape, mean=0.0, stddev=1.0, dtype=None, seed=None: \
        (rng.normal(size=shape) * stddev + mean).astype(dtype or "float32")
    jax_random.truncated_normal = truncated
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(jax_random, k, v)


def build(cfg):
    """The model of cfg from seed 0, RPN outputs scaled by 0.01 (proposals near their anchors,
    so some ROIs are positive and the box and mask losses are not 0); the heads, FPN and RPN
    train (every loss, a third of the XLA compile time of training the backbone too)."""
    keras.utils.set_random_seed(0)
    with numpy_initializers():
        model = MaskRCNN("training", cfg, os.path.join(WORK, "logs"))
    for v in model.keras_model.weights:
        if "rpn_bbox_pred" in v.path or "rpn_class_raw" in v.path:
            v.assign(to_numpy(v.value) * 0.01)
    model.set_trainable(LAYER_REGEX["heads"])
    _log(f"built {cfg.GPU_COUNT} x {cfg.IMAGES_PER_GPU}")
    return model


def _log(msg):
    use = resource.getrusage(resource.RUSAGE_SELF)
    print(f"[{time.time() - T0:6.1f} s, cpu {use.ru_utime + use.ru_stime:6.1f} s] {msg}",
          file=sys.stderr, flush=True)


def step(model, cfg, initial):
    """Load ``initial``, compile for cfg.LOSS_REDUCTION, one step of ``fit`` on batch 0 of
    :func:`loader` (fit splits it over the replicas; train_on_batch would give every
    TensorFlow replica the whole batch) -> dict of results."""
    model.keras_model.set_weights(initial)
    model.config = cfg
    model.compile(0.02, cfg.LEARNING_MOMENTUM)
    before = sample_weights(model.keras_model)
    batch = loader(cfg)[0]
    history = model.keras_model.fit(batch, batch_size=cfg.BATCH_SIZE, epochs=1, shuffle=False,
                                    verbose=0)
    logs = {k: v[-1] for k, v in history.history.items()}
    _log(f"stepped {cfg.GPU_COUNT} x {cfg.IMAGES_PER_GPU} {cfg.LOSS_REDUCTION}")
    after = sample_weights(model.keras_model)
    out = {"loss_names": np.array(sorted(logs)),
           "losses": np.array([float(logs[k]) for k in sorted(logs)]),
           "replicas": np.array(model.distribution.replicas),
           "image_meta": np.asarray(batch["input_image_meta"])}
    for k, v in after.items():
        out["w:" + k] = v
        out["delta:" + k] = v - before[k]
        out["w0:" + k] = before[k]
    return out


def save(name, results):
    """results: {label: dict} -> WORK/name.npz with keys 'label|key'."""
    flat = {f"{label}|{k}": v for label, res in results.items() for k, v in res.items()}
    path = os.path.join(WORK, name + ".npz")
    fd, tmp = tempfile.mkstemp(dir=WORK, suffix=".npz")
    os.close(fd)
    np.savez(tmp, **flat)
    os.replace(tmp, path)


def main():
    fixed_roi_keys()
    results = {}
    if MODE == "tf":
        one = build(config(2, 1))
        initial = one.keras_model.get_weights()
        for r in ("batch", "image"):
            results[f"one_{r}"] = step(one, config(2, 1, r), initial)
        two = build(config(1, 2))
        for r in ("batch", "image"):
            results[f"two_{r}"] = step(two, config(1, 2, r), initial)
        save(MODE, results)
    else:
        pid = int(sys.argv[3])
        cfg = config(1, 2, parallel=True)   # 2 devices here, 2 in the other process
        model = build(cfg)
        initial = model.keras_model.get_weights()
        results["procs"] = step(model, cfg, initial)
        if pid == 0:   # the reference: one device, the whole global batch, same weights
            keras.distribution.set_distribution(None)
            single = config(4, 1, parallel=False)
            results["one"] = step(build(single), single, initial)
        save(f"jax_process{pid}", results)
    print(MODE, "done:", {k: int(v["replicas"]) for k, v in results.items()})


main()
