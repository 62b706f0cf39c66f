"""Data-parallel training: one replica of the model per device, each batch split between them.

``Config.DISTRIBUTE = "data_parallel"`` with ``GPU_COUNT = n`` makes :class:`MaskRCNN` build and
compile its model for ``n`` devices of this process (GPUs when there are enough, else CPU
devices), through the engines Keras itself supports:

* TensorFlow: ``tf.distribute.MirroredStrategy`` (model, optimizer and compile inside
  ``strategy.scope()``; ``fit`` splits every batch of ``BATCH_SIZE = IMAGES_PER_GPU * GPU_COUNT``
  images).  Each replica computes the losses of its own images; the gradients are summed over
  replicas after :func:`scale_loss` divided each replica's loss by the replica count.  With
  ``Config.LOSS_REDUCTION = "batch"`` (Matterport's whole-batch means) every loss divides by
  its count summed over all replicas (:func:`sum_over_replicas`), with ``"image"`` (mean of
  per-image means) each replica's mean over its equally many images is a share of the global
  one: either way a step equals the one-device step on the whole batch, with different images
  on every replica (:mod:`mrcnn_nuclei.layers.losses`).
* JAX: ``keras.distribution.DataParallel`` (set as the global Keras distribution): the step is
  one SPMD program over the global batch, sharded on its first axis; XLA inserts the gradient
  all-reduce.  A step equals the one-device step on the whole batch (either reduction).

Several processes (JAX): call :func:`initialize` in every process before building the model;
the mesh then spans ``GPU_COUNT`` devices of every process and the global batch is
``BATCH_SIZE * process_count`` images.  Every process loads the same dataset with the same
``Config.SEED``; the default training loader (:func:`mrcnn_nuclei.training.make_training_loader`)
then gives process ``i`` images ``[i * BATCH_SIZE, (i + 1) * BATCH_SIZE)`` of every global batch
(:func:`process_shard`), so one process with the global batch and ``k`` processes each with
its slice take the same step.  Launch (one command per host, here two processes on one machine)::

    python train.py --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0
    python train.py --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 1

where train.py calls ``distribute.initialize(coordinator, num_processes, process_id)`` first.
"""

from __future__ import annotations

import contextlib
import logging

import keras

__all__ = ["Distribution", "for_config", "initialize", "scale_loss", "sum_over_replicas",
           "process_shard", "local_devices"]

logger = logging.getLogger(__name__)


def initialize(coordinator_address, num_processes, process_id, local_device_ids=None):
    """Start JAX's distributed runtime (``keras.distribution.initialize``) for multi-process
    data-parallel training; on CPU-only hosts the cross-process collectives use gloo.
    Must run before any JAX computation and before the model is built."""
    if keras.backend.backend() != "jax":
        raise RuntimeError("distribute.initialize: multi-process training needs KERAS_BACKEND=jax "
                           f"(active backend: {keras.backend.backend()!r}); on TensorFlow use "
                           "tf.distribute.MultiWorkerMirroredStrategy yourself")
    import jax

    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # noqa: BLE001 - older/newer JAX without the option: its default applies
        logger.info("jax_cpu_collectives_implementation not available; using JAX's default")
    keras.distribution.initialize(f"{coordinator_address}", int(num_processes), int(process_id))
    if local_device_ids is not None:
        logger.info("local_device_ids is not used by keras.distribution.initialize")


def local_devices(count, backend=None):
    """The first ``count`` devices of this process (GPUs if there are that many, else CPUs):
    TensorFlow logical device names or JAX device objects."""
    backend = backend or keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        for kind in ("GPU", "CPU"):
            devs = [d.name for d in tf.config.list_logical_devices(kind)]
            if len(devs) >= count:
                return devs[:count]
        found = len(tf.config.list_logical_devices("CPU"))
        hint = ("split the CPU with tf.config.set_logical_device_configuration(cpu, "
                "[tf.config.LogicalDeviceConfiguration()] * n) before anything runs")
    elif backend == "jax":
        import jax

        for kind in ("gpu", "cpu"):
            try:
                devs = [d for d in jax.local_devices(backend=kind)]
            except RuntimeError:
                continue
            if len(devs) >= count:
                return devs[:count]
        found = len(jax.local_devices())
        hint = "set XLA_FLAGS=--xla_force_host_platform_device_count=n for CPU devices"
    else:
        raise RuntimeError(f"data-parallel training supports TensorFlow and JAX, not {backend!r}")
    raise ValueError(f"Config.GPU_COUNT = {count} with DISTRIBUTE = 'data_parallel' but this "
                     f"process sees {found} devices; lower GPU_COUNT or {hint}")


class Distribution:
    """What :class:`MaskRCNN` needs: ``scope()`` around build and compile, ``replicas``."""

    def __init__(self, config):
        self.kind = getattr(config, "DISTRIBUTE", "none")
        self.replicas = 1
        self.strategy = None
        self.distribution = None
        if self.kind == "none":
            return
        count = int(config.GPU_COUNT)
        backend = keras.backend.backend()
        devices = local_devices(count, backend)
        if backend == "tensorflow":
            import tensorflow as tf

            self.strategy = tf.distribute.MirroredStrategy(devices=devices)
            self.replicas = self.strategy.num_replicas_in_sync
        else:
            import jax

            if jax.process_count() > 1:  # the mesh spans the same share of every process
                per = {d.id for d in devices}
                index = [i for i, d in enumerate(jax.local_devices()) if d.id in per]
                devices = [d for p in range(jax.process_count())
                           for i, d in enumerate(sorted((x for x in jax.devices()
                                                         if x.process_index == p),
                                                        key=lambda x: x.id)) if i in index]
            self.distribution = keras.distribution.DataParallel(devices=devices)
            if jax.process_count() > 1:
                # each process's loader yields its own slice (process_shard); Keras would
                # otherwise refuse anything but a tf.data.Dataset, which it shards itself
                self.distribution.auto_shard_dataset = False
            self.replicas = len(devices)
            keras.distribution.set_distribution(self.distribution)

    def scope(self):
        if self.strategy is not None:
            return self.strategy.scope()
        if self.distribution is not None:
            return self.distribution.scope()
        return contextlib.nullcontext()


def for_config(config):
    """The :class:`Distribution` of ``config.DISTRIBUTE`` ("none": a no-op scope)."""
    return Distribution(config)


def scale_loss(loss):
    """Divide a per-replica loss by the number of TensorFlow replicas in sync (their gradients
    are summed); unchanged outside a tf.distribute replica context and on JAX."""
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    n = ctx.num_replicas_in_sync if ctx is not None else 1
    return loss / n if n > 1 else loss


def sum_over_replicas(value):
    """``(sum of value over the replicas, replica count)``: inside a TensorFlow replica
    context with several replicas in sync, ``value`` (a scalar, treated as a constant: no
    gradient flows through it) is all-reduced; otherwise, and always on JAX (whose data-parallel
    step is one program over the global batch), ``(value, 1)``."""
    if keras.backend.backend() != "tensorflow":
        return value, 1
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    n = ctx.num_replicas_in_sync if ctx is not None else 1
    if n == 1:
        return value, 1
    total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(value))
    return tf.stop_gradient(total), n


def process_shard(config):
    """``(process_index, process_count)`` whose slice of every global batch this process
    loads: ``(jax.process_index(), jax.process_count())`` for ``DISTRIBUTE = "data_parallel"``
    on JAX after :func:`initialize`, else ``(0, 1)`` (the whole batch)."""
    if getattr(config, "DISTRIBUTE", "none") != "data_parallel" or \
            keras.backend.backend() != "jax":
        return 0, 1
    import jax

    return int(jax.process_index()), int(jax.process_count())
