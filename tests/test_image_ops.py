"""Tests for mrcnn_nuclei.data.image_ops (resize modes, masks, mini-masks, meta, molding)."""

from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import skimage.transform
from PIL import Image

from mrcnn_nuclei.config import NucleusConfig
from mrcnn_nuclei.data import image_ops as IO


def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _disk_masks(h, w, centres, radius):
    yy, xx = np.mgrid[:h, :w]
    return np.stack([(yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
                     for (cy, cx), r in zip(centres, radius)], axis=-1)


# ------------------------------------------------------------------------------------ resize_image
@pytest.mark.parametrize("mode,hw,kw,expected", [
    ("none", (100, 130), {}, (100, 130)),
    ("square", (100, 130), dict(min_dim=128, max_dim=256), (256, 256)),
    ("square", (300, 130), dict(min_dim=128, max_dim=256), (256, 256)),
    ("pad64", (100, 130), dict(min_dim=None, max_dim=None), (128, 192)),
    ("pad64", (100, 130), dict(min_scale=2.0), (256, 320)),
    ("crop", (100, 130), dict(min_dim=64), (64, 64)),
    ("crop", (256, 320), dict(min_dim=512, min_scale=2.0), (512, 512)),
])
@pytest.mark.parametrize("semantics", ["matterport", "project"])
def test_resize_image_modes_shapes_and_window(mode, hw, kw, expected, semantics):
    image = _image(*hw)
    out, window, scale, padding, crop = IO.resize_image(image, mode=mode, semantics=semantics,
                                                        rng=np.random.default_rng(3), **kw)
    if semantics == "project":
        resized = IO.resize
    else:  # Matterport: utils.resize (cval-0 borders), then astype(uint8) truncates
        def resized(img, shape):
            return skimage.transform.resize(img, shape, order=1, mode="constant", cval=0,
                                            clip=True, preserve_range=True,
                                            anti_aliasing=False).astype(img.dtype)
    assert out.shape == expected + (3,) and out.dtype == np.uint8
    y1, x1, y2, x2 = window
    sh, sw = round(hw[0] * scale), round(hw[1] * scale)
    if mode == "crop":
        assert window == (0, 0) + expected and crop is not None
        cy, cx, ch, cw = crop
        assert (ch, cw) == expected and 0 <= cy <= sh - ch and 0 <= cx <= sw - cw
        full = resized(image, (sh, sw))
        np.testing.assert_array_equal(out, full[cy:cy + ch, cx:cx + cw])
    else:
        assert crop is None
        assert (y2 - y1, x2 - x1) == (sh, sw)
        assert padding[0] == (y1, expected[0] - y2) and padding[1] == (x1, expected[1] - x2)
        # outside the window is zero padding, inside is the resized image
        assert out[:y1].sum() == 0 and out[y2:].sum() == 0 and out[:, :x1].sum() == 0
        np.testing.assert_array_equal(out[y1:y2, x1:x2], resized(image, (sh, sw)))
    if mode == "pad64":
        assert out.shape[0] % 64 == 0 and out.shape[1] % 64 == 0
    if mode == "square":
        assert max(sh, sw) <= kw["max_dim"]


def test_resize_image_crop_is_seeded():
    image = _image(300, 400)
    a = IO.resize_image(image, min_dim=128, mode="crop", rng=np.random.default_rng(7))
    b = IO.resize_image(image, min_dim=128, mode="crop", rng=np.random.default_rng(7))
    assert a[4] == b[4]
    np.testing.assert_array_equal(a[0], b[0])


def test_resize_image_bad_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        IO.resize_image(_image(10, 10), mode="bogus")


@pytest.mark.parametrize("mode,kw", [("square", dict(min_dim=100, max_dim=256)),
                                     ("pad64", dict(min_scale=1.5)),
                                     ("crop", dict(min_dim=128, min_scale=2.0))])
def test_resize_mask_follows_image(mode, kw):
    h, w = 90, 120
    masks = _disk_masks(h, w, [(20, 30), (60, 90), (45, 10)], [10, 15, 6])
    # encode each mask in the image so we can check the alignment after resizing
    image = np.zeros((h, w, 3), np.uint8)
    for k in range(masks.shape[-1]):
        image[masks[..., k]] = 60 * (k + 1)
    out, window, scale, padding, crop = IO.resize_image(image, mode=mode,
                                                        rng=np.random.default_rng(0), **kw)
    rmask = IO.resize_mask(masks, scale, padding, crop)
    assert rmask.dtype == bool and rmask.shape == out.shape[:2] + (3,)
    ref_masks = IO.resize_image(masks.astype(np.uint8) * 255, mode=mode,
                                rng=np.random.default_rng(0), **kw)[0] >= 128
    agree = (rmask == ref_masks).mean()
    assert agree > 0.995  # nearest vs bilinear differ only on boundaries
    for k in range(3):
        if rmask[..., k].any():
            inner = ndi.binary_erosion(rmask[..., k], iterations=2)
            vals = out[..., 0][inner]
            assert len(vals) > 20 and np.all(np.abs(vals.astype(int) - 60 * (k + 1)) < 3)
    # round trip back to the original size keeps the shapes
    if mode != "crop":
        y1, x1, y2, x2 = window
        back = IO.resize_mask(rmask[y1:y2, x1:x2], 1 / scale, [(0, 0), (0, 0), (0, 0)])
        assert back.shape[:2] == (h, w)
        inter = (back & masks).sum(axis=(0, 1))
        union = (back | masks).sum(axis=(0, 1))
        assert np.all(inter / union > 0.85)


# ------------------------------------------------------------------------------------ bboxes
def test_extract_bboxes_matches_loop_and_empty():
    rng = np.random.default_rng(4)
    masks = rng.random((30, 40, 6)) > 0.97
    masks[..., 2] = False
    got = IO.extract_bboxes(masks)
    assert got.dtype == np.int32 and got.shape == (6, 4)
    for k in range(6):
        ys, xs = np.nonzero(masks[..., k])
        if len(ys) == 0:
            assert got[k].tolist() == [0, 0, 0, 0]
        else:
            assert got[k].tolist() == [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
    assert IO.extract_bboxes(np.zeros((5, 5, 0), bool)).shape == (0, 4)


# ------------------------------------------------------------------------------------ mini masks
def test_bilinear_sampler_equals_skimage_edge_resize():
    rng = np.random.default_rng(5)
    masks = _disk_masks(64, 64, [(20, 20), (40, 45)], [9, 14])
    masks[rng.random(masks.shape) > 0.97] = True  # some noise to make it harder
    boxes = IO.extract_bboxes(masks)
    soft = IO._bilinear_crops(masks, boxes, (56, 40))
    for k, (y1, x1, y2, x2) in enumerate(boxes):
        ref = skimage.transform.resize(masks[y1:y2, x1:x2, k].astype(float), (56, 40), order=1,
                                       mode="edge", anti_aliasing=False)
        np.testing.assert_allclose(soft[k], ref, atol=1e-5)


def _real_masks(dsb_root, per_image=5):
    """~20 real DSB nucleus masks, read directly with Pillow: the largest few of two images of
    the 1024x1024 group (big nuclei) and of two 256x320 colour images; [H, W, n] per image."""
    import csv
    root = Path(dsb_root)
    with open(root / "image_groups.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    ids = [r["image_id"] for r in rows if r["group"] == "1024x1024_gray"][:2] + \
        [r["image_id"] for r in rows if r["group"] == "256x320_color"][:2]
    out = []
    for image_id in ids:
        files = sorted((root / "stage1_train" / image_id / "masks").glob("*.png"))
        files = sorted(files, key=lambda f: -f.stat().st_size)[:per_image]
        out.append(np.stack([np.array(Image.open(f)) > 0 for f in files], axis=-1))
    return out


def _round_trip_ious(stack, mini_shape):
    boxes = IO.extract_bboxes(stack)
    mini = IO.minimize_mask(boxes, stack, mini_shape)
    assert mini.shape == tuple(mini_shape) + (stack.shape[-1],) and mini.dtype == bool
    back = IO.expand_mask(boxes, mini, stack.shape)
    assert back.shape == stack.shape and back.dtype == bool
    for k, (y1, x1, y2, x2) in enumerate(boxes):  # nothing is painted outside the boxes
        outside = back[..., k].copy()
        outside[y1:y2, x1:x2] = False
        assert not outside.any()
    return (back & stack).sum(axis=(0, 1)) / (back | stack).sum(axis=(0, 1))


def test_mini_mask_round_trip_on_real_dsb_masks(dsb_root):
    stacks = _real_masks(dsb_root)
    assert sum(s.shape[-1] for s in stacks) >= 20
    # as in training with IMAGE_MIN_SCALE 2: masks are upscaled x2 before minimizing, so the
    # largest nuclei (about 60 px) are bigger than the 56x56 mini-mask
    scaled = [IO.resize_mask(s, 2.0, [(0, 0), (0, 0), (0, 0)]) for s in stacks]
    assert max(int((b[:, 2:] - b[:, :2]).max()) for b in map(IO.extract_bboxes, scaled)) > 56
    ious56 = np.concatenate([_round_trip_ious(s, (56, 56)) for s in scaled])
    ious14 = np.concatenate([_round_trip_ious(s, (14, 14)) for s in scaled])
    assert np.mean(ious56) >= 0.9, np.mean(ious56)
    assert np.mean(ious14) < np.mean(ious56)  # a coarser mini-mask loses detail: the check bites


def test_expand_mask_matches_per_instance_skimage():
    masks = _disk_masks(50, 60, [(10, 10), (30, 40)], [6, 12])
    boxes = IO.extract_bboxes(masks)
    mini = IO.minimize_mask(boxes, masks, (28, 28))
    back = IO.expand_mask(boxes, mini, (50, 60, 3))
    for k, (y1, x1, y2, x2) in enumerate(boxes):
        ref = skimage.transform.resize(mini[..., k].astype(float), (y2 - y1, x2 - x1), order=1,
                                       mode="edge", anti_aliasing=False)
        agree = (back[y1:y2, x1:x2, k] == (ref >= 0.5)).mean()
        assert agree > 0.99  # identical except exact-0.5 ties


def test_minimize_mask_empty_box_raises_and_zero_instances():
    masks = np.zeros((10, 10, 1), bool)
    with pytest.raises(ValueError, match="empty"):
        IO.minimize_mask(np.zeros((1, 4), int), masks, (8, 8))
    assert IO.minimize_mask(np.zeros((0, 4)), np.zeros((10, 10, 0), bool), (8, 8)).shape == (8, 8, 0)
    assert IO.expand_mask(np.zeros((0, 4)), np.zeros((8, 8, 0), bool), (10, 10)).shape == (10, 10, 0)


def test_unmold_mask_pastes_in_box():
    soft = np.zeros((28, 28), np.float32)
    soft[7:21, 7:21] = 0.9
    full = IO.unmold_mask(soft, (10, 20, 38, 48), (64, 64, 3))
    assert full.shape == (64, 64) and full.dtype == bool
    ys, xs = np.nonzero(full)
    assert 16 <= ys.min() <= 18 and 29 <= ys.max() <= 31
    assert 26 <= xs.min() <= 28 and 39 <= xs.max() <= 41
    assert not IO.unmold_mask(soft, (10, 20, 38, 48), (64, 64), threshold=0.95).any()


# ------------------------------------------------------------------------------------ meta/mold
def test_image_meta_round_trip_single_and_batch():
    meta = IO.compose_image_meta(7, (256, 320, 3), (512, 512, 3), (0, 0, 512, 512), 2.0, [1, 1])
    assert meta.dtype == np.float32 and meta.shape == (12 + 2,)
    p = IO.parse_image_meta(meta)
    assert int(p["image_id"]) == 7 and p["original_image_shape"].tolist() == [256, 320, 3]
    assert p["window"].tolist() == [0, 0, 512, 512] and float(p["scale"]) == 2.0
    assert p["active_class_ids"].tolist() == [1, 1]
    pb = IO.parse_image_meta(np.stack([meta, meta]))
    assert pb["image_id"].shape == (2,) and pb["window"].shape == (2, 4)
    assert NucleusConfig().IMAGE_META_SIZE == meta.shape[0]


def test_image_meta_layout_is_named_once():
    """The META_* names give each field's place (Matterport's layout written out by hand) and
    the graph's window reader and loss use them."""
    import inspect

    from mrcnn_nuclei import training
    from mrcnn_nuclei.layers import detection

    meta = IO.compose_image_meta(3, (10, 20, 3), (64, 64, 3), (1, 2, 11, 22), 1.5, [1, 0, 1])
    assert meta.tolist() == [3, 10, 20, 3, 64, 64, 3, 1, 2, 11, 22, 1.5, 1, 0, 1]
    assert meta[IO.META_WINDOW].tolist() == [1, 2, 11, 22] and meta[IO.META_SCALE] == 1.5
    assert meta[IO.META_ACTIVE_CLASS_IDS].tolist() == [1, 0, 1]
    assert IO.META_FIXED_SIZE + 3 == meta.size
    assert list(IO.META_FIELDS) == list(IO.parse_image_meta(meta))
    with pytest.raises(ValueError, match="12 \\+ NUM_CLASSES"):
        IO.parse_image_meta(meta[:12])
    for fn in (detection.meta_window, training.mask_rcnn_losses):   # no literal offsets left
        src = inspect.getsource(fn)
        assert "META_" in src and "7:11" not in src and "12:" not in src


def test_mold_unmold_and_channel_check():
    cfg = NucleusConfig()
    img = _image(8, 8)
    molded = IO.mold_image(img, cfg)
    assert molded.dtype == np.float32
    np.testing.assert_allclose(molded[0, 0], img[0, 0] - cfg.MEAN_PIXEL, rtol=1e-5)
    np.testing.assert_array_equal(IO.unmold_image(molded, cfg), img)
    with pytest.raises(ValueError, match="MEAN_PIXEL"):
        IO.mold_image(img[..., :2], cfg)


def test_norm_denorm_boxes_convention():
    boxes = np.array([[0, 0, 512, 512], [10, 20, 30, 41]])
    n = IO.norm_boxes(boxes, (512, 512))
    np.testing.assert_allclose(n[0], [0, 0, 1, 1])
    np.testing.assert_allclose(n[1], [10 / 511, 20 / 511, 29 / 511, 40 / 511], rtol=1e-6)
    np.testing.assert_array_equal(IO.denorm_boxes(n, (512, 512)), boxes)


def test_packed_helpers_equal_unpacked_versions():
    rng = np.random.default_rng(11)
    h, w, n = 40, 50, 13  # not a multiple of 8
    centres = [(rng.integers(0, h), rng.integers(0, w)) for _ in range(n)]
    masks = _disk_masks(h, w, centres, rng.integers(2, 9, n))
    masks[..., 4] = False  # an empty instance
    packed = np.packbits(masks, axis=-1)
    assert packed.shape == (h, w, 2)
    np.testing.assert_array_equal(IO.packed_nonempty(packed, n), masks.any(axis=(0, 1)))
    channels = np.array([0, 3, 5, 8, 12])
    sub = masks[..., channels]
    np.testing.assert_array_equal(IO.packed_unpack(packed, channels, n), sub)
    boxes = IO.packed_bboxes(packed, channels)
    np.testing.assert_array_equal(boxes, IO.extract_bboxes(sub))
    np.testing.assert_array_equal(IO.packed_minimize_mask(boxes, packed, channels, (20, 16)),
                                  IO.minimize_mask(boxes, sub, (20, 16)))
    assert IO.packed_nonempty(packed[..., :0], 0).shape == (0,)
    assert IO.packed_bboxes(packed, []).shape == (0, 4)


def test_minimize_mask_on_non_contiguous_stack_equals_contiguous():
    rng = np.random.default_rng(12)
    masks = _disk_masks(40, 50, [(rng.integers(5, 35), rng.integers(5, 45)) for _ in range(8)],
                        rng.integers(3, 9, 8))
    view = masks[:, :, ::2]
    assert not view.flags.c_contiguous
    boxes = IO.extract_bboxes(view)
    np.testing.assert_array_equal(IO.minimize_mask(boxes, view, (14, 14)),
                                  IO.minimize_mask(boxes, np.ascontiguousarray(view), (14, 14)))


# ------------------------------------------------------------------------ Matterport semantics
def _sk_resize(img, shape):
    """Matterport's utils.resize: skimage order 1, cval-0 borders, clipped, no anti-aliasing."""
    return skimage.transform.resize(img, shape, order=1, mode="constant", cval=0, clip=True,
                                    preserve_range=True, anti_aliasing=False)


def test_resize_linear_is_skimage_bit_for_bit():
    rng = np.random.default_rng(21)
    for it in range(60):
        h, w = rng.integers(1, 30, 2)
        oh, ow = rng.integers(1, 70, 2)
        img = [rng.integers(0, 256, (h, w, 3)).astype(np.uint8),
               np.full((h, w), 9, np.uint8),  # min > 0: the clip lifts the dark border
               rng.random((h, w)).astype(np.float32),
               (rng.random((h, w)) > 0.3).astype(np.float64)][it % 4]
        ref = _sk_resize(img, (oh, ow))
        got = IO.resize_linear(img, (oh, ow))
        assert got.dtype == ref.dtype
        np.testing.assert_array_equal(got, ref)
        y, x = int(rng.integers(0, oh)), int(rng.integers(0, ow))
        part = IO.resize_linear(img, (oh, ow), rows=(y, oh - y), cols=(x, ow - x))
        np.testing.assert_array_equal(part, ref[y:, x:])


def test_matterport_mask_functions_equal_per_instance_reference():
    rng = np.random.default_rng(22)
    h, w, n = 70, 90, 12
    centres = [(rng.integers(0, h), rng.integers(0, w)) for _ in range(n)]
    masks = _disk_masks(h, w, centres, rng.integers(2, 30, n))
    masks[5:9, 5:80, 0] = True          # elongated: one axis shrunk, the other grown
    masks[..., 1] = False
    masks[40:44, 60:66, 1] = True       # a full rectangle: the clip makes its mini-mask all ones
    boxes = IO.extract_bboxes(masks)
    for shape in [(28, 28), (8, 12)]:
        mini = IO.minimize_mask(boxes, masks, shape)
        ref = np.stack([np.around(_sk_resize(masks[y1:y2, x1:x2, k].astype(float), shape))
                        .astype(bool) for k, (y1, x1, y2, x2) in enumerate(boxes)], -1)
        np.testing.assert_array_equal(mini, ref)
        np.testing.assert_array_equal(
            IO.packed_minimize_mask(boxes, np.packbits(masks, axis=-1), np.arange(n), shape), ref)
        back = IO.expand_mask(boxes, mini, (h, w))
        ref_back = np.zeros_like(masks)
        for k, (y1, x1, y2, x2) in enumerate(boxes):
            ref_back[y1:y2, x1:x2, k] = np.around(_sk_resize(mini[..., k].astype(float),
                                                             (y2 - y1, x2 - x1))).astype(bool)
        np.testing.assert_array_equal(back, ref_back)
    assert IO.minimize_mask(boxes, masks, (28, 28))[..., 1].all()
    soft = rng.random((n, 28, 28)).astype(np.float32)
    soft[3] = 0.6 + 0.3 * soft[3]  # min > 0.5: the clip keeps the border inside the mask
    hard, values = IO.paste_masks(soft, boxes, (h, w), soft=True)
    for k, (y1, x1, y2, x2) in enumerate(boxes):
        ref = np.zeros((h, w), bool)
        ref[y1:y2, x1:x2] = _sk_resize(soft[k], (y2 - y1, x2 - x1)) >= 0.5
        np.testing.assert_array_equal(hard[..., k], ref)
        np.testing.assert_array_equal(IO.unmold_mask(soft[k], boxes[k], (h, w)), ref)
    np.testing.assert_array_equal(hard, values >= 0.5)
    assert hard[..., 3].sum() == np.prod(boxes[3, 2:] - boxes[3, :2])


def test_resize_mask_matterport_is_ndimage_zoom_and_project_differs():
    masks = _disk_masks(37, 53, [(10, 12), (25, 40)], [7, 11])
    for scale in (0.55, 1.6, 2.0, 2.37):
        ref = ndi.zoom(masks, [scale, scale, 1], order=0)
        np.testing.assert_array_equal(IO.resize_mask(masks, scale, [(0, 0)] * 3), ref)
        packed = IO.resize_mask(np.packbits(masks, axis=-1), scale, [(0, 0)] * 3)
        np.testing.assert_array_equal(np.unpackbits(packed, axis=-1, count=2).astype(bool), ref)
    proj = IO.resize_mask(masks, 1.6, [(0, 0)] * 3, semantics="project")
    assert (proj != ndi.zoom(masks, [1.6, 1.6, 1], order=0)).any()


def test_semantics_are_validated():
    with pytest.raises(ValueError, match="RESIZE_SEMANTICS"):
        IO.resize_image(_image(10, 10), mode="none", semantics="skimage")
    with pytest.raises(ValueError, match="semantics"):
        IO.minimize_mask(np.zeros((0, 4)), np.zeros((4, 4, 0), bool), (4, 4), semantics="x")
