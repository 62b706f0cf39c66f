"""layers/ops.py (NMS, crop-and-resize) and layers/box_ops.py against NumPy references."""

import numpy as np
import pytest

import mrcnn_nuclei  # noqa: F401  (sets the backend)
from keras import ops

from mrcnn_nuclei.layers import box_ops
from mrcnn_nuclei.layers.ops import batched_nms, crop_and_resize


def iou_ref(a, b):
    y1, x1 = max(a[0], b[0]), max(a[1], b[1])
    y2, x2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(y2 - y1, 0) * max(x2 - x1, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def greedy_nms_ref(boxes, scores, k, thr, score_thr=-np.inf):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if scores[i] <= score_thr:
            continue
        if all(iou_ref(boxes[i], boxes[j]) <= thr for j in keep):
            keep.append(i)
        if len(keep) == k:
            break
    return keep


def random_boxes(rng, n, size=1.0):
    c = rng.uniform(0, size, (n, 2))
    hw = rng.uniform(0.02, 0.3, (n, 2)) * size
    return np.concatenate([c - hw / 2, c + hw / 2], 1).astype(np.float32)


def test_batched_nms_matches_greedy_reference():
    rng = np.random.default_rng(0)
    b, n, k = 3, 60, 20
    boxes = np.stack([random_boxes(rng, n) for _ in range(b)])
    scores = rng.permutation(b * n).reshape(b, n).astype(np.float32) / (b * n)  # distinct
    for thr in (0.3, 0.7):
        idx, valid = batched_nms(boxes, scores, k, thr)
        idx, valid = np.asarray(idx), np.asarray(valid)
        assert idx.shape == (b, k) and valid.shape == (b, k)
        for i in range(b):
            ref = greedy_nms_ref(boxes[i], scores[i], k, thr)
            got = idx[i][valid[i]].tolist()
            assert got == ref
            assert (idx[i][~valid[i]] == 0).all()


def test_batched_nms_score_threshold_and_padding():
    boxes = np.array([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [5, 5, 6, 6]]], np.float32)
    scores = np.array([[0.9, 0.8, -1.0, 0.5]], np.float32)
    idx, valid = batched_nms(boxes, scores, 4, 0.5, score_threshold=-0.5)
    assert np.asarray(valid).tolist() == [[True, True, False, False]]
    assert np.asarray(idx)[0, :2].tolist() == [0, 3]


def bilinear_ref(img, y, x):
    h, w = img.shape[:2]
    if y < 0 or y > h - 1 or x < 0 or x > w - 1:
        return np.zeros(img.shape[2:], np.float64)
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    fy, fx = y - y0, x - x0
    return ((1 - fy) * (1 - fx) * img[y0, x0] + (1 - fy) * fx * img[y0, x1]
            + fy * (1 - fx) * img[y1, x0] + fy * fx * img[y1, x1])


def crop_ref(img, box, size):
    """Sample points spread from box corner to corner in (H-1, W-1) pixel units."""
    h, w = img.shape[:2]
    out = np.zeros((size[0], size[1], img.shape[2]))
    for i in range(size[0]):
        for j in range(size[1]):
            y = (box[0] + (box[2] - box[0]) * (i / (size[0] - 1) if size[0] > 1 else 0.5)) * (h - 1)
            x = (box[1] + (box[3] - box[1]) * (j / (size[1] - 1) if size[1] > 1 else 0.5)) * (w - 1)
            out[i, j] = bilinear_ref(img, y, x)
    return out


def test_crop_and_resize_matches_bilinear_reference():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 13, 17, 3)).astype(np.float32)
    boxes = random_boxes(rng, 8)
    boxes[0] = [-0.1, -0.2, 0.5, 0.6]  # partly outside: outside points read 0
    ix = rng.integers(0, 2, 8)
    got = np.asarray(crop_and_resize(images, boxes, ix, (5, 7)))
    assert got.shape == (8, 5, 7, 3)
    for m in range(8):
        np.testing.assert_allclose(got[m], crop_ref(images[ix[m]], boxes[m], (5, 7)), atol=1e-4)


def np_overlaps(a, b):
    return np.array([[iou_ref(x, y) for y in b] for x in a])


def test_box_ops_against_reference():
    from mrcnn_nuclei import boxes as B

    rng = np.random.default_rng(2)
    a = random_boxes(rng, 7, 100)
    b = random_boxes(rng, 5, 100)
    np.testing.assert_allclose(np.asarray(box_ops.overlaps(a, b)), np_overlaps(a, b), atol=1e-5)
    # batched form
    got = np.asarray(box_ops.overlaps(np.stack([a, a]), np.stack([b, b])))
    assert got.shape == (2, 7, 5)
    deltas = rng.normal(scale=0.2, size=(7, 4)).astype(np.float32)
    moved = np.asarray(box_ops.apply_box_deltas(a, deltas))
    np.testing.assert_allclose(moved, B.apply_box_deltas(a, deltas), rtol=1e-4, atol=1e-3)
    back = np.asarray(box_ops.box_refinement(a, moved))
    np.testing.assert_allclose(back, deltas, atol=1e-4)
    np.testing.assert_allclose(back, B.box_refinement(a, moved), atol=1e-4)
    clipped = np.asarray(box_ops.clip_boxes(a, np.array([10, 20, 60, 70], np.float32)))
    assert clipped[:, [0, 2]].min() >= 10 and clipped[:, [0, 2]].max() <= 60
    assert clipped[:, [1, 3]].min() >= 20 and clipped[:, [1, 3]].max() <= 70
    pix = np.array([[0, 0, 10, 20], [5, 5, 6, 6]], np.float32)
    n = np.asarray(box_ops.norm_boxes(pix, (11, 21)))
    np.testing.assert_allclose(n, [[0, 0, 0.9, 0.95], [0.5, 0.25, 0.5, 0.25]], atol=1e-6)
    np.testing.assert_allclose(np.asarray(box_ops.denorm_boxes(ops.convert_to_tensor(n), (11, 21))),
                               pix, atol=1e-4)


def test_overlaps_zero_area_is_zero_not_nan():
    z = np.zeros((2, 4), np.float32)
    got = np.asarray(box_ops.overlaps(z, z))
    assert np.isfinite(got).all() and (got == 0).all()


# ------------------------------------------------------------------ JAX twins of the TF ops
# The *_jax functions need jax, not the JAX Keras backend: they are compared here, in the
# TensorFlow-backend process, with the TF kernels and the NumPy references above.
from mrcnn_nuclei.layers import ops as backend_ops  # noqa: E402


def test_jax_nms_equals_tf_nms_including_ties_thresholds_and_padding():
    import jax

    rng = np.random.default_rng(5)
    b, n = 3, 300
    boxes = np.stack([random_boxes(rng, n) for _ in range(b)])
    boxes[1, :20] = boxes[1, :20][:, [2, 3, 0, 1]]           # corners given in reverse order
    boxes[1, 20:25, 2:] = boxes[1, 20:25, :2]                 # zero-area boxes
    scores = rng.uniform(size=(b, n)).astype(np.float32)
    scores[0, :40] = 0.5                                      # ties: lower index first
    scores[2] = np.round(scores[2], 1)                        # many ties
    nms = jax.jit(backend_ops.batched_nms_jax, static_argnums=(2, 3, 4))
    for k, thr, sthr in ((50, 0.5, float("-inf")), (300, 0.3, 0.4), (10, 0.9, 0.0),
                         (64, 0.0, 0.7)):
        want_i, want_v = backend_ops._batched_nms_tf(boxes, scores, k, thr, sthr)
        got_i, got_v = nms(boxes, scores, k, thr, sthr)
        np.testing.assert_array_equal(np.asarray(got_v), np.asarray(want_v))
        np.testing.assert_array_equal(np.asarray(got_i), np.asarray(want_i))
        if k == 300:  # fewer survivors than slots: padding (index 0, invalid) is exercised
            assert 0 < np.asarray(got_v).sum(1).max() < k
    # against the independent greedy reference (distinct scores)
    scores = rng.permutation(b * n).reshape(b, n).astype(np.float32) / (b * n)
    idx, valid = backend_ops.batched_nms_jax(boxes, scores, 40, 0.5)
    for i in range(b):
        got = np.asarray(idx)[i][np.asarray(valid)[i]].tolist()
        assert got == greedy_nms_ref(np.abs(boxes[i]), scores[i], 40, 0.5) or i == 1
    i0 = np.asarray(idx)[0][np.asarray(valid)[0]].tolist()
    assert i0 == greedy_nms_ref(boxes[0], scores[0], 40, 0.5)


@pytest.mark.parametrize("crop", [(5, 7), (1, 1), (1, 4), (14, 14)])
@pytest.mark.parametrize("method", ["bilinear", "nearest"])
def test_jax_crop_and_resize_equals_tf(crop, method):
    import jax

    rng = np.random.default_rng(6)
    images = rng.normal(size=(3, 13, 17, 2)).astype(np.float32)
    boxes = rng.uniform(-0.3, 1.3, (30, 4)).astype(np.float32)   # many partly/fully outside
    boxes[:3] = [[0, 0, 1, 1], [1, 1, 0, 0], [0.5, 0.5, 0.5, 0.5]]  # whole, flipped, a point
    ix = rng.integers(0, 3, 30)
    want = np.asarray(backend_ops.crop_and_resize(images, boxes, ix, crop, method))
    # jitted, as in the model: no sample at the image edge may flip to "outside" (XLA rewrites);
    # the op-by-op (unjitted) path is compared in the next test
    jitted = jax.jit(backend_ops.crop_and_resize_jax, static_argnums=(3, 4))
    got = np.asarray(jitted(images, boxes, ix, crop, method))
    assert got.shape == want.shape == (30,) + crop + (2,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert (got == 0).any()  # outside points read 0


def test_jax_crop_and_resize_matches_reference_and_has_image_gradient():
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(7)
    images = rng.normal(size=(2, 9, 11, 3)).astype(np.float32)
    boxes = random_boxes(rng, 6)
    ix = rng.integers(0, 2, 6)
    got = np.asarray(backend_ops.crop_and_resize_jax(jnp.asarray(images), boxes, ix, (4, 3)))
    for m in range(6):
        np.testing.assert_allclose(got[m], crop_ref(images[ix[m]], boxes[m], (4, 3)), atol=1e-5)
    # d(sum of crops)/d(image) = the summed bilinear weights of each pixel (finite differences)
    grad = jax.jit(jax.grad(lambda im: backend_ops.crop_and_resize_jax(im, boxes, ix,
                                                                       (4, 3)).sum()))(
        jnp.asarray(images))
    eps, (b, y, x, c) = 1e-2, (int(ix[0]), 4, 5, 1)
    bumped = images.copy()
    bumped[b, y, x, c] += eps
    fd = (np.asarray(backend_ops.crop_and_resize_jax(bumped, boxes, ix, (4, 3))).sum()
          - got.sum()) / eps
    np.testing.assert_allclose(np.asarray(grad)[b, y, x, c], fd, rtol=1e-2, atol=1e-3)


def test_pyramid_crop_and_resize_jax_equals_per_level_tf():
    import jax

    rng = np.random.default_rng(8)
    maps = [rng.normal(size=(2, s, s + 3, 4)).astype(np.float32) for s in (32, 16, 8, 4)]
    boxes = rng.uniform(-0.1, 1.1, (40, 4)).astype(np.float32)
    ix = rng.integers(0, 2, 40)
    levels = rng.integers(0, 4, 40)
    want = np.stack([np.asarray(backend_ops.crop_and_resize(
        maps[levels[m]], boxes[m:m + 1], ix[m:m + 1], (7, 7)))[0] for m in range(40)])
    tf_path = np.asarray(backend_ops.pyramid_crop_and_resize(maps, boxes, ix, levels, (7, 7)))
    jax_path = np.asarray(jax.jit(backend_ops.pyramid_crop_and_resize_jax, static_argnums=(4,))(
        maps, boxes, ix, levels, (7, 7)))
    np.testing.assert_array_equal(tf_path, want)
    np.testing.assert_allclose(jax_path, want, atol=2e-5)
