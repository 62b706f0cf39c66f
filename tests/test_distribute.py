"""Data-parallel training (mrcnn_nuclei.distribute): one SGD step with a different share of the
images on every replica / process gives the same losses and the same updated weights as one
device with the whole global batch, on two logical TensorFlow CPUs (both LOSS_REDUCTIONs) and
on JAX in two processes on 127.0.0.1 with two host devices each; the training loader gives
every process its own slice of each global batch.

The devices must be configured before a backend starts, so the model checks run
tests/distribute_worker.py in subprocesses: the TensorFlow one and the two JAX processes are
started together (tracing and XLA compilation are mostly single-threaded, so they share the two
CPU cores well) by one module fixture, and JAX's persistent compilation cache goes to a
temporary folder (or $JAX_COMPILATION_CACHE_DIR) so that reruns compile less.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
BOX_AND_MASK = ("rpn_bbox_loss", "mrcnn_bbox_loss", "mrcnn_mask_loss")


# ------------------------------------------------------------------ loader sharding (no model)
def _synthetic(count):
    from mrcnn_nuclei.datasets import SyntheticNucleiDataset

    ds = SyntheticNucleiDataset()
    ds.load(count, seed=11, height=64, width=64, min_nuclei=1, max_nuclei=5, radius=(4, 8))
    ds.prepare()
    return ds


def _loader_config(images, seed=5):
    from mrcnn_nuclei.config import Config

    return type("ShardCfg", (Config,), dict(
        NAME="shard", NUM_CLASSES=2, IMAGES_PER_GPU=images, IMAGE_RESIZE_MODE="crop",
        IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, MEAN_PIXEL=np.zeros(3), MAX_GT_INSTANCES=8,
        RPN_ANCHOR_SCALES=(8, 16, 32, 64, 128), RPN_TRAIN_ANCHORS_PER_IMAGE=32,
        MINI_MASK_SHAPE=(14, 14), SEED=seed))()


def test_process_shards_of_the_loader_make_the_global_batch():
    """One loader of 4 images per batch == two loaders (shard 0 and 1 of 2) of 2 each, concatenated:
    same images, same crops and anchor sampling, over a reshuffled second pass too (6 images:
    one global batch per pass)."""
    from mrcnn_nuclei.data.loader import TrainingLoader

    ds = _synthetic(6)
    whole = TrainingLoader(ds, _loader_config(4), steps_per_epoch=3)
    shards = [TrainingLoader(ds, _loader_config(2), steps_per_epoch=3, shard=(i, 2))
              for i in range(2)]
    assert len(whole) == len(shards[0]) == 3
    ids = []
    for index in range(3):
        full = whole[index]
        parts = [s[index] for s in shards]
        for key, value in full.items():
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), value,
                                          err_msg=f"batch {index} {key}")
        ids.append(full["input_image_meta"][:, 0])
    # the shards hold different images, and the passes are reshuffled
    assert len(set(ids[0])) == 4 and list(ids[0]) != list(ids[1])
    with pytest.raises(ValueError, match="shard"):
        TrainingLoader(ds, _loader_config(2), shard=(2, 2))


def test_make_training_loader_shards_by_process(monkeypatch):
    """make_training_loader takes distribute.process_shard; several processes need a SEED."""
    from mrcnn_nuclei import distribute, training

    ds = _synthetic(4)
    monkeypatch.setattr(distribute, "process_shard", lambda config: (1, 2))
    loader = training.make_training_loader(ds, _loader_config(2))
    assert (loader.shard_index, loader.shard_count) == (1, 2)
    with pytest.raises(ValueError, match="SEED"):
        training.make_training_loader(ds, _loader_config(2, seed=None))
    monkeypatch.undo()
    assert distribute.process_shard(_loader_config(2)) == (0, 1)   # DISTRIBUTE = "none"


# ------------------------------------------------------------------ model steps (subprocesses)
def _env(backend, **extra):
    return dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
                JAX_PLATFORMS="cpu", **extra)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run the TensorFlow worker and the two JAX worker processes at once; returns the folder
    of their .npz files and {name: (returncode, log tail)}."""
    work = tmp_path_factory.mktemp("dist")
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(work / "jaxcache")
    jax_env = {"JAX_COMPILATION_CACHE_DIR": cache,
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
               "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
               # two host devices per process; compile faster (a quarter less CPU; the
               # programs run for milliseconds here)
               "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
                            "--xla_backend_optimization_level=0 "
                            "--xla_llvm_disable_expensive_passes=true"}
    worker = str(HERE / "distribute_worker.py")
    commands = {"tf": ([worker, "tf", work], _env("tensorflow"))}
    try:
        import jax  # noqa: F401
    except ImportError:
        pass
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        for pid in (0, 1):
            commands[f"jax{pid}"] = ([worker, "jax_process", work, pid, port],
                                     _env("jax", **jax_env))
    procs = {}
    for name, (args, env) in commands.items():
        log = open(work / f"{name}.log", "w")
        procs[name] = (subprocess.Popen([sys.executable] + [str(a) for a in args], env=env,
                                        stdout=log, stderr=subprocess.STDOUT), log)
    status = {}
    for name, (proc, log) in procs.items():
        try:
            proc.wait(timeout=900)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        status[name] = (proc.returncode, (work / f"{name}.log").read_text()[-4000:])
    return work, status


def _load(work, status, name, npz):
    rc, log = status[name]
    assert rc == 0, f"distribute_worker.py ({name}) failed:\n{log}"
    data = np.load(work / npz)
    runs = {}
    for key in data.files:
        run, item = key.split("|", 1)
        runs.setdefault(run, {})[item] = data[key]
    return runs


def _losses(run):
    return dict(zip(run["loss_names"], run["losses"]))


def _assert_same_step(one, many, replicas):
    """many (data-parallel over `replicas`) took the step of one (one device): losses, the
    weights before and after, and the updates, to float tolerance."""
    assert int(one["replicas"]) == 1 and int(many["replicas"]) == replicas
    a, b = _losses(one), _losses(many)
    assert sorted(a) == sorted(b)
    assert all(a[k] > 0 for k in a), a     # every loss has something to learn from
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=2e-5, atol=1e-6, err_msg=k)
    weights = [k[2:] for k in one if k.startswith("w:")]
    for k in weights:
        np.testing.assert_array_equal(many["w0:" + k], one["w0:" + k], err_msg="start " + k)
        # float32 sums in another order (batch of 1 vs 2 convolutions, the replicas' gradient
        # sum) reach ~1e-5 of the largest update of a tensor, and where they move an ROI
        # across a bilinear cell the FPN's updates up to ~1e-3 of it; a wrong reduction moves
        # them by 10 % and more
        atol = 2e-3 * float(np.abs(one["delta:" + k]).max()) + 1e-9
        np.testing.assert_allclose(many["w:" + k], one["w:" + k], rtol=1e-6, atol=atol,
                                   err_msg=k)
        np.testing.assert_allclose(many["delta:" + k], one["delta:" + k], rtol=1e-3,
                                   atol=atol, err_msg="update of " + k)
    moved = [k for k in weights if np.abs(one["delta:" + k]).max() > 1e-6]
    assert len(moved) >= len(weights) - 2, moved   # the step reached every part of the model


@pytest.mark.slow
def test_mirrored_strategy_two_logical_cpus_equals_one_device(runs):
    """TensorFlow: MirroredStrategy over 2 logical CPUs, one image per replica, equals one
    device with both images, for LOSS_REDUCTION "batch" (whole-batch counts summed over the
    replicas) and "image".  The images hold different numbers of positive anchors and ROIs:
    each replica's own "batch" means (the old per-replica reduction, which equals "image"
    here) differ from the whole-batch ones, so without the cross-replica count this fails."""
    res = _load(*runs, "tf", "tf.npz")
    for reduction in ("batch", "image"):
        _assert_same_step(res[f"one_{reduction}"], res[f"two_{reduction}"], 2)
    ids = res["one_batch"]["image_meta"][:, 0]
    assert len(set(ids)) == 2, ids     # different images on the two replicas
    batch, image = _losses(res["one_batch"]), _losses(res["one_image"])
    for k in BOX_AND_MASK:
        assert abs(batch[k] - image[k]) > 1e-3 * batch[k], (k, batch[k], image[k])


@pytest.mark.slow
def test_jax_two_processes_two_devices_each_equal_one_device(runs):
    """JAX: keras.distribution.DataParallel over 2 processes x 2 host devices (one image each),
    each process loading its own slice of the global batch through make_training_loader,
    equals one device with the 4 images; both processes report the same step."""
    pytest.importorskip("jax")
    first = _load(*runs, "jax0", "jax_process0.npz")
    second = _load(*runs, "jax1", "jax_process1.npz")
    one = first["one"]
    for procs in (first["procs"], second["procs"]):
        _assert_same_step(one, procs, 4)
    # process i loaded images [2i, 2i + 2) of the global batch: different images, all of them
    ids = [r["procs"]["image_meta"][:, 0] for r in (first, second)]
    np.testing.assert_array_equal(np.concatenate(ids), one["image_meta"][:, 0])
    assert len(set(np.concatenate(ids))) == 4
