"""Augmentation keeps every mask on its own object; photometric transforms leave masks alone."""

import albumentations as A
import cv2
import numpy as np
import pytest
import scipy.ndimage as ndi

from mrcnn_nuclei.data import augment as G


def _scene(seed=0, h=96, w=128, n=12, channels=3):
    """Image where object k has the unique grey level 20 * (k + 1); masks [H, W, n]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    masks = np.zeros((h, w, n), bool)
    label = np.zeros((h, w), np.int32)
    for k in range(n):  # test set-up: draw non-overlapping discs
        for _ in range(100):
            cy, cx, r = rng.integers(8, h - 8), rng.integers(8, w - 8), rng.integers(4, 8)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            if not (label[disc] > 0).any():
                break
        masks[..., k] = disc
        label[disc] = k + 1
    image = np.zeros((h, w, channels), np.uint8)
    image[label > 0] = (20 * label[label > 0])[:, None]
    return image, masks


def _check_alignment(image, masks, kept):
    for j, k in enumerate(kept):
        vals = image[..., 0][masks[..., j]]
        # nearest masks vs bilinear image: interior pixels carry the object's own level
        assert np.mean(np.abs(vals.astype(int) - 20 * (k + 1)) <= 2) > 0.8, (k, np.unique(vals))


@pytest.mark.parametrize("transform", [
    A.HorizontalFlip(p=1), A.VerticalFlip(p=1), A.RandomRotate90(p=1), A.Transpose(p=1),
    A.Affine(rotate=(20, 25), interpolation=cv2.INTER_NEAREST, mask_interpolation=cv2.INTER_NEAREST,
             border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=1),
    A.RandomCrop(64, 64, p=1),
])
@pytest.mark.parametrize("packed_limit", [True, False])
def test_geometric_transforms_move_each_mask_with_its_object(transform, packed_limit, monkeypatch):
    if not packed_limit:  # force the unpacked (one mask per channel) path
        monkeypatch.setattr(G, "_pack_safe", lambda aug: False)
        G._local.copies = {}
    image, masks = _scene(1)
    aug = A.Compose([transform])
    out, omasks, kept = G.apply_augmentation(image, masks, aug, rng=np.random.default_rng(0))
    assert omasks.dtype == bool and omasks.shape[:2] == out.shape[:2]
    assert omasks.shape[-1] == len(kept) and len(kept) >= 1
    assert omasks.any(axis=(0, 1)).all()
    _check_alignment(out, omasks, kept)
    # the image really changed (a transform that does nothing would pass trivially)
    assert out.shape != image.shape or not np.array_equal(out, image)
    G._local.copies = {}


def test_default_pipeline_many_seeds_alignment_and_determinism():
    n = 12
    image, masks = _scene(2, n=n)
    aug = G.default_augmentation("strong")
    assert G._pack_safe(aug)
    changed, applied = 0, []
    for seed in range(16):
        out, omasks, kept = G.apply_augmentation(image, masks, aug, rng=np.random.default_rng(seed))
        changed += not np.array_equal(omasks, masks[..., kept])
        # brightness/contrast are monotonic and blur only touches edges, so the median level of
        # each mask's interior still orders the objects as their ids do
        med = [np.median(out[..., 0][ndi.binary_erosion(omasks[..., j], iterations=2)
                                     | (omasks[..., j].sum() < 30) & omasks[..., j]])
               for j in range(len(kept))]
        assert np.all(np.diff(med) >= -6), (seed, med)  # levels step by ~20; misalignment shows
        assert len(np.unique(med)) >= len(kept) // 2  # clipping may merge the extreme levels
        again = G.apply_augmentation(image, masks, aug, rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(out, again[0])
        np.testing.assert_array_equal(omasks, again[1])
        applied.append(out)
    assert changed >= 12  # P(no geometric change) is about 8% per draw
    # transforms are drawn independently (not all-or-nothing)
    assert len({a.tobytes() for a in applied}) == len(applied)


def test_photometric_only_leaves_masks_untouched():
    image, masks = _scene(3)
    aug = A.Compose([A.RandomBrightnessContrast(p=1), A.GaussianBlur(blur_limit=(3, 5), p=1),
                     A.HueSaturationValue(hue_shift_limit=20, sat_shift_limit=30, p=1)])
    out, omasks, kept = G.apply_augmentation(image, masks, aug, rng=np.random.default_rng(1))
    assert not np.array_equal(out, image)
    np.testing.assert_array_equal(kept, np.arange(masks.shape[-1]))
    np.testing.assert_array_equal(omasks, masks)


def test_vanishing_masks_are_dropped_with_indices():
    image, masks = _scene(4)
    aug = A.Compose([A.Crop(0, 0, 40, 40, p=1)])
    out, omasks, kept = G.apply_augmentation(image, masks, aug)
    expected = np.flatnonzero(masks[:40, :40].any(axis=(0, 1)))
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_array_equal(omasks, masks[:40, :40][..., expected])
    assert len(expected) < masks.shape[-1]


def test_crop_if_larger_only_crops_larger_sides():
    image, masks = _scene(5, h=96, w=128)
    aug = G.default_augmentation("light", crop_size=(112, 64))
    out, omasks, _ = G.apply_augmentation(image, masks, aug, rng=np.random.default_rng(0))
    assert out.shape[:2] == (96, 64)


def test_hue_saturation_only_for_three_channels_and_grey_images_work():
    names = [type(t).__name__ for t in G.default_augmentation(channels=1).transforms]
    assert "HueSaturationValue" not in names
    assert "HueSaturationValue" in [type(t).__name__ for t in G.default_augmentation().transforms]
    image, masks = _scene(6, channels=1)
    out, omasks, kept = G.apply_augmentation(image, masks, G.default_augmentation(channels=1),
                                             rng=np.random.default_rng(3))
    assert out.shape == image.shape and omasks.shape[:2] == image.shape[:2]


def test_many_instances_and_zero_instances():
    image, masks = _scene(7, h=64, w=64, n=3)
    many = np.repeat(masks, 400, axis=-1)  # 1200 instances: beyond the packed-channel limit
    out, omasks, kept = G.apply_augmentation(image, many, A.Compose([A.HorizontalFlip(p=1)]))
    np.testing.assert_array_equal(omasks, many[:, ::-1])
    out, omasks, kept = G.apply_augmentation(image, masks[..., :0], G.default_augmentation(),
                                             rng=np.random.default_rng(0))
    assert omasks.shape == (64, 64, 0) and kept.shape == (0,)


class _FakeImgaugFlip:
    """Minimal object with imgaug's augmenter protocol (imgaug is not installed in CI): a
    deterministic left-right flip followed by an "Add" brightness step, each gated by hooks."""

    def to_deterministic(self):
        return self

    def augment_image(self, image, hooks=None):
        out = image
        for name, fn in (("Fliplr", lambda x: x[:, ::-1]),
                         ("Add", lambda x: np.clip(x.astype(int) + 30, 0, 255).astype(x.dtype))):
            aug = type(name, (), {})()
            if hooks is None or hooks.is_activated(out, aug, [], True):
                out = fn(out)
        return np.ascontiguousarray(out)


def test_imgaug_style_augmenter_flips_masks_but_not_their_values():
    image, masks = _scene(8, n=8)
    out, omasks, kept = G.apply_augmentation(image, masks, _FakeImgaugFlip())
    np.testing.assert_array_equal(omasks, masks[:, ::-1])  # "Add" did not touch the masks
    np.testing.assert_array_equal(out, image[:, ::-1] + 30)  # but it did act on the image


def test_bad_inputs():
    image, masks = _scene(9)
    with pytest.raises(ValueError, match=r"\[H, W, N\]"):
        G.apply_augmentation(image, masks[:10], G.default_augmentation())
    with pytest.raises(TypeError, match="albumentations"):
        G.apply_augmentation(image, masks, object())
    with pytest.raises(ValueError, match="strength"):
        G.default_augmentation("extreme")


def test_augment_packed_equals_apply_augmentation():
    image, masks = _scene(10, n=11)
    aug = G.default_augmentation("strong")
    for seed in range(4):
        out, omasks, kept = G.apply_augmentation(image, masks, aug, rng=np.random.default_rng(seed))
        img2, packed = G.augment_packed(image, np.packbits(masks, axis=-1), aug,
                                        rng=np.random.default_rng(seed))
        unpacked = np.unpackbits(packed, axis=-1, count=11).view(bool)
        np.testing.assert_array_equal(img2, out)
        np.testing.assert_array_equal(unpacked[..., kept], omasks)
        assert not unpacked[..., np.setdiff1d(np.arange(11), kept)].any()
    # pipelines that are not mask-safe are refused (caller falls back to apply_augmentation)
    unsafe = A.Compose([A.Affine(rotate=10, mask_interpolation=cv2.INTER_LINEAR, p=1)])
    assert G.augment_packed(image, np.packbits(masks, axis=-1), unsafe) is None
    assert G.augment_packed(image, np.packbits(masks, axis=-1), _FakeImgaugFlip()) is None


@pytest.mark.parametrize("affine", [False, True])
def test_alignment_on_synthetic_nuclei_images(affine):
    """SyntheticNucleiDataset images (touching, irregular nuclei): the image's label map rides
    along as channel 1, so after every draw each mask must be the pixels coded with its own
    nucleus.  Flips, 90-degree turns and crops move values without resampling: exact.  A rotation
    resamples image and packed masks separately (OpenCV nearest-neighbour, different channel
    counts), which may move a pixel on a nucleus outline, never inside it."""
    from mrcnn_nuclei.datasets import SyntheticNucleiDataset

    ds = SyntheticNucleiDataset().load(3, seed=11, height=96, width=128, max_nuclei=30)
    ds.prepare()
    transforms = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
    if affine:
        transforms.append(A.Affine(rotate=(-15, 15), interpolation=cv2.INTER_NEAREST,
                                   mask_interpolation=cv2.INTER_NEAREST,
                                   border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=1))
    geometric = A.Compose(transforms + [A.RandomCrop(80, 80, p=1)])
    touching = 0
    for i in ds.image_ids:
        image = ds.load_image(i)
        masks, _ = ds.load_mask(i)
        labels = ds.load_labels(i)
        assert 0 < labels.max() < 256
        touching += int(((labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] > 0)
                         & (labels[:, :-1] > 0)).sum())
        coded = np.dstack([image[..., 0], labels.astype(np.uint8), image[..., 2]])
        for seed in range(4):
            out, omasks, kept = G.apply_augmentation(coded, masks, geometric,
                                                     rng=np.random.default_rng(seed))
            code = out[..., 1]
            assert out.shape == (80, 80, 3) and len(kept) > 0
            covered = np.zeros(code.shape, bool)
            for j, k in enumerate(kept):
                own = code == k + 1
                wrong = omasks[..., j] != own
                where = f"image {i}, seed {seed}, nucleus {k}"
                if not affine:
                    assert not wrong.any(), where
                else:
                    outline = ndi.binary_dilation(own) & ~ndi.binary_erosion(own)
                    assert not (wrong & ~outline).any(), where
                    assert wrong.sum() <= max(1, 0.02 * own.sum()), where
                covered |= own
            # no nucleus code survives outside the kept nuclei (a vanished one left no pixel)
            stray = (code > 0) & ~covered
            assert not stray.any() if not affine else stray.sum() <= 2
    assert touching > 0  # the case that matters: neighbouring nuclei must not swap pixels
