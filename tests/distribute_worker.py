"""Subprocess worker for tests/test_distribute.py: one SGD step of the tiny model from the
weights of tests/backend_worker.py ``init``, on one device or data-parallel.

    python tests/distribute_worker.py MODE WORKDIR [PROCESS_ID PORT]

MODE: ``single`` (one device, global batch of 2 images), ``two_devices`` (GPU_COUNT = 2 on two
logical TF CPUs / two forced JAX host devices) or ``two_processes`` (JAX, two processes on
127.0.0.1 with one device and one image each).  The TensorFlow replicas average per-replica
losses, so on TensorFlow the global batch is one image twice (equal per-replica counts); on
JAX the step is one global SPMD program and the batch holds two different images.
Writes ``dist_<backend>_<mode>.npz`` (process 0 only): the losses and a sample of weights.
"""

from __future__ import annotations

import os
import sys

MODE, WORK = sys.argv[1], sys.argv[2]
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")

if BACKEND == "tensorflow" and MODE == "two_devices":
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

if BACKEND == "jax" and MODE == "two_processes":
    from mrcnn_nuclei import distribute

    distribute.initialize(f"127.0.0.1:{sys.argv[4]}", 2, int(sys.argv[3]))

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backend_worker import ParityConfig, deterministic_roi_sampling, synthetic  # noqa: E402

import keras  # noqa: E402

from mrcnn_nuclei.data.loader import TrainingLoader  # noqa: E402
from mrcnn_nuclei.model import MaskRCNN  # noqa: E402

SAMPLE = ("res5b_branch2b", "fpn_p2", "mrcnn_class_logits", "mrcnn_mask", "rpn_conv_shared")


def main():
    pid = int(sys.argv[3]) if MODE == "two_processes" else 0

    class Two(ParityConfig):
        IMAGES_PER_GPU = 2

    batch = TrainingLoader(synthetic(2, 0), Two(), seed=1)[0]
    if BACKEND == "tensorflow":
        batch = {k: np.concatenate([v[:1], v[:1]]) for k, v in batch.items()}

    class Cfg(ParityConfig):
        IMAGES_PER_GPU = 2 if MODE == "single" else 1
        GPU_COUNT = 2 if MODE == "two_devices" else 1
        DISTRIBUTE = "none" if MODE == "single" else "data_parallel"
        # Keras clips each replica's gradient share on TensorFlow (before the all-reduce)
        GRADIENT_CLIP_NORM = None

    if MODE == "two_processes":
        batch = {k: v[pid:pid + 1] for k, v in batch.items()}
    deterministic_roi_sampling()
    model = MaskRCNN("training", Cfg(), os.path.join(WORK, "logs"))
    model.keras_model.load_weights(os.path.join(WORK, "w0.weights.h5"))
    model.set_trainable(".*")
    # momentum 0.9: its slots must live on the replicas too (one step from zero velocity is
    # still lr * gradient, so one device and two compare exactly)
    model.compile(0.01, 0.9)
    before = {w.path: np.asarray(keras.ops.convert_to_numpy(w.value))
              for w in model.keras_model.weights}
    logs = model.keras_model.train_on_batch(batch, return_dict=True)
    out = {"loss_names": np.array(sorted(logs)),
           "losses": np.array([float(logs[k]) for k in sorted(logs)]),
           "replicas": np.array(model.distribution.replicas)}
    for name in SAMPLE:
        layer = model.keras_model.get_layer(name) if name != "rpn_conv_shared" else \
            model.keras_model.get_layer("rpn_model").get_layer(name)
        for w in layer.weights:
            now = np.asarray(keras.ops.convert_to_numpy(w.value))
            out[f"{name}/{w.name}"] = now
            out[f"delta:{name}/{w.name}"] = now - before[w.path]
    if pid == 0:
        np.savez(os.path.join(WORK, f"dist_{BACKEND}_{MODE}.npz"), **out)
    print(f"{MODE} done on {BACKEND}: replicas {model.distribution.replicas}")


main()
