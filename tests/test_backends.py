"""TensorFlow and JAX backends give the same model: same weights file, same molded image ->
same stage outputs (FPN, RPN, proposals, heads), same detections (boxes to 1e-3 px after
matching, same count, scores to 1e-4, mask IoU >= 0.99), same evaluation numbers, and the same
losses for two SGD steps from the same state; weights saved by either backend load in the
other; JAX loads a Matterport-layout .h5; every staged layer set of ``train(layers=)`` (heads,
3+, 4+, 5+, all) updates exactly its layers on both backends; MaskRCNN.train runs on JAX.

The backend is fixed when keras is imported, so each backend runs tests/backend_worker.py in
one subprocess for all its checks (TF: init,run; JAX: run,load); the TensorFlow load of the JAX
weights runs in this (TensorFlow) process.  JAX's compilation cache is shared between the
subprocesses of a session (JAX_COMPILATION_CACHE_DIR).  On JAX every trainable set is its own
XLA compile (~15-20 s each on 2 busy cores).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def run_worker(script, args, backend, env_extra=None, timeout=900):
    """Run tests/<script> with KERAS_BACKEND=backend (the repository first on PYTHONPATH, so an
    uninstalled or stale-installed checkout imports its own package)."""
    path = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               JAX_PLATFORMS="cpu", PYTHONPATH=path, **(env_extra or {}))
    proc = subprocess.run([sys.executable, str(HERE / script)] + [str(a) for a in args],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} {args} on {backend} failed:\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory):
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(tmp_path_factory.mktemp("jaxcache"))
    return {"JAX_COMPILATION_CACHE_DIR": path, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


@pytest.fixture(scope="session")
def parity_dir(tmp_path_factory, jax_cache):
    """init and run on TF -> run on JAX, which loads TF's updated weights -> TF loads JAX's."""
    pytest.importorskip("jax")
    work = tmp_path_factory.mktemp("parity")
    run_worker("backend_worker.py", ["init,run", work], "tensorflow")
    run_worker("backend_worker.py", ["run,load", work], "jax", jax_cache)
    import keras

    if keras.backend.backend() == "tensorflow":  # this process: no third start-up
        import backend_worker

        backend_worker.phase_load(str(work))
    else:
        run_worker("backend_worker.py", ["load", work], "tensorflow")
    return work


def _runs(work):
    return (dict(np.load(work / "run_tensorflow.npz")), dict(np.load(work / "run_jax.npz")))


def match_boxes(a, b):
    """Greedy nearest match of box rows a [N, 4] to b [N, 4] -> permutation of b."""
    d = np.abs(a[:, None, :] - b[None, :, :]).max(-1)
    order = []
    for i in range(len(a)):
        j = int(np.argmin(np.where(np.isin(np.arange(len(b)), order), np.inf, d[i])))
        order.append(j)
    return np.array(order, int)


def compare_runs(tf_run, jx_run):
    """The parity checks (also used on stored runs by hand)."""
    # stage outputs
    for name in ("fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5", "fpn_p6"):
        scale = max(1.0, np.abs(tf_run[name]).max())
        np.testing.assert_allclose(jx_run[name], tf_run[name], atol=2e-5 * scale, err_msg=name)
    np.testing.assert_allclose(jx_run["rpn_class"], tf_run["rpn_class"], atol=1e-4)
    np.testing.assert_allclose(jx_run["rpn_bbox"], tf_run["rpn_bbox"], atol=1e-3)
    # proposals: the same boxes in the same (score) order
    np.testing.assert_allclose(jx_run["rpn_rois"], tf_run["rpn_rois"], atol=1e-5)
    # heads, on proposals off the image border: the last sample row/column of a box clipped to
    # the border lies exactly on the edge, where crop_and_resize (TF's and ours alike) reads 0
    # once rounding puts it 1 ulp outside, so a 1e-6 difference in such a proposal flips it
    rois = tf_run["rpn_rois"][0]
    inner = ((rois > 0) & (rois < 1)).all(-1)
    assert inner.sum() >= 3
    np.testing.assert_allclose(jx_run["mrcnn_class"][0, inner], tf_run["mrcnn_class"][0, inner],
                               atol=1e-4)
    np.testing.assert_allclose(jx_run["mrcnn_bbox"][0, inner], tf_run["mrcnn_bbox"][0, inner],
                               rtol=1e-4, atol=1e-3)  # random-weight deltas reach ~50
    # detections of the graph (normalised) and of detect() (pixels, original size)
    n = int((tf_run["detections"][0, :, 4] > 0).sum())
    assert n > 0 and n == int((jx_run["detections"][0, :, 4] > 0).sum())
    np.testing.assert_allclose(jx_run["detections"][0, :n], tf_run["detections"][0, :n],
                               atol=1e-5)
    np.testing.assert_allclose(jx_run["mrcnn_mask"][0, :n], tf_run["mrcnn_mask"][0, :n],
                               atol=1e-3)
    a, b = tf_run["det_rois"].astype(np.float64), jx_run["det_rois"].astype(np.float64)
    assert len(a) == len(b) == len(tf_run["det_scores"]) > 0
    perm = match_boxes(a, b)
    assert np.abs(a - b[perm]).max() <= 1e-3
    np.testing.assert_allclose(jx_run["det_scores"][perm], tf_run["det_scores"], atol=1e-4)
    ma, mb = tf_run["det_masks"], jx_run["det_masks"][..., perm]
    for k in range(ma.shape[-1]):
        inter = np.logical_and(ma[..., k], mb[..., k]).sum()
        union = np.logical_or(ma[..., k], mb[..., k]).sum()
        assert union == 0 or inter / union >= 0.99
    # evaluation (samples/nucleus/evaluate.py): the same numbers up to a few mask pixels
    np.testing.assert_allclose(jx_run["eval_means"], tf_run["eval_means"], rtol=2e-3, atol=1e-5)
    # training: same losses at step 1 (from w0) and step 2 (after one SGD update)
    assert list(jx_run["loss_names"]) == list(tf_run["loss_names"])
    np.testing.assert_allclose(jx_run["losses"], tf_run["losses"], rtol=2e-4, atol=2e-4)


@pytest.mark.slow
def test_tf_and_jax_backends_agree(parity_dir):
    """One TF and one JAX subprocess (~3-4 min on 2 cores, most of it XLA compiling the JAX
    training step): stages, detections, evaluation and two training steps agree."""
    tf_run, jx_run = _runs(parity_dir)
    compare_runs(tf_run, jx_run)
    # the updated weights after two steps agree too
    for k in tf_run:
        if k.startswith("w1/"):
            np.testing.assert_allclose(jx_run[k], tf_run[k], atol=1e-4, err_msg=k)


@pytest.mark.slow
def test_jax_loads_legacy_h5_and_weights_cross_backends(parity_dir):
    tf_run, jx_run = _runs(parity_dir)
    assert bool(jx_run["legacy_equals_native"])          # Matterport .h5 == native, on JAX
    for backend, other in (("tensorflow", "jax"), ("jax", "tensorflow")):
        loaded = np.load(parity_dir / f"load_{backend}.npz")
        saved = _runs(parity_dir)[0 if other == "tensorflow" else 1]
        keys = [k for k in loaded.files if k.startswith("w1/")]
        assert keys
        for k in keys:
            np.testing.assert_array_equal(loaded[k], saved[k], err_msg=f"{other}->{backend} {k}")


@pytest.mark.slow
def test_jax_train_through_loader_writes_checkpoint(parity_dir):
    _, jx_run = _runs(parity_dir)
    assert np.isfinite(jx_run["heads_loss"]).all()
    assert "mask_rcnn_parity_0001.weights.h5" in list(jx_run["checkpoint"])


def expected_layers(weighted, preset):
    """Layers one step of ``train(layers=preset)`` must change, from the names alone: the heads
    (mrcnn_*, rpn_*, fpn_*, PREPROC) always; ResNet stage k (res<k>*, its conv1 = stage 1) from
    the preset's stage on ("all": every stage); batch-norm layers (bn*, mrcnn_*_bn*) never, as
    Matterport's TRAIN_BN = False freezes them (FrozenBatchNorm) in every preset."""
    first = {"heads": 9, "5+": 5, "4+": 4, "3+": 3, "all": 0}[preset]
    out = set()
    for name in weighted:
        if re.search(r"(^|_)bn", name):
            continue
        m = re.match(r"res(\d)", name)
        stage = int(m.group(1)) if m else (1 if name == "conv1" else None)
        if stage is None:
            assert re.match(r"(mrcnn_|rpn_|fpn_|PREPROC)", name), name
        if stage is None or stage >= first:
            out.add(name)
    return out


@pytest.mark.slow
def test_staged_layer_sets_train_the_same_layers_on_both_backends(parity_dir):
    """One SGD step per ``train(layers=)`` preset on each backend (in the parity subprocesses)
    changes exactly the layers the preset names that this batch gives a gradient, and the
    same ones on TF and JAX.  Random weights propose no positive ROI, so the box and mask head
    losses are 0 and those layers (and fpn_p5, whose RPN anchors are not sampled) get none:
    the "all" step shows which layers the batch reaches."""
    tf_run, jx_run = _runs(parity_dir)
    weighted = list(tf_run["weighted_layers"])
    assert list(jx_run["weighted_layers"]) == weighted
    reached = set(tf_run["changed/all"])
    assert set(jx_run["changed/all"]) == reached
    unreached = expected_layers(weighted, "all") - reached
    assert all(n.startswith(("mrcnn_mask", "mrcnn_bbox")) or n == "fpn_p5" for n in unreached), \
        unreached
    sizes = []
    for preset in ("heads", "5+", "4+", "3+", "all"):
        want = expected_layers(weighted, preset) & reached
        for run in (tf_run, jx_run):
            assert set(run["changed/" + preset]) == want, preset
        sizes.append(len(want))
    assert sizes == sorted(sizes) and len(set(sizes)) == 5  # the presets nest, each one larger
