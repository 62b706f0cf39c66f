"""Training loader: batch contract, determinism, empty images, overflow, errors, fast paths."""

import logging

import numpy as np
import pytest

from mrcnn_nuclei.boxes import get_anchors
from mrcnn_nuclei.config import Config
from mrcnn_nuclei.data import image_ops as IO
from mrcnn_nuclei.data import loader as L
from mrcnn_nuclei.data.augment import default_augmentation
from mrcnn_nuclei.data.dataset import Dataset
from mrcnn_nuclei.datasets import SyntheticNucleiDataset


class TinyConfig(Config):
    NAME = "tiny"
    NUM_CLASSES = 2
    IMAGES_PER_GPU = 2
    BACKBONE = "resnet50"
    IMAGE_RESIZE_MODE = "crop"
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    IMAGE_MIN_SCALE = 1.5
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    MAX_GT_INSTANCES = 40
    MINI_MASK_SHAPE = (28, 28)


class DiscDataset(Dataset):
    """Tiny in-test dataset: image i has counts[i] discs (0 allowed); a bad id fails to load."""

    def load(self, counts, size=(100, 120), bad=()):
        self.add_class("disc", 1, "nucleus")
        for i, n in enumerate(counts):
            self.add_image("disc", image_id=i, path=f"disc://{i}", n=n, size=size, bad=i in bad)
        return self

    def load_image(self, image_id):
        info = self.image_info[image_id]
        if info["bad"]:
            raise OSError("truncated file")
        masks, _ = self.load_mask(image_id)
        image = np.full(info["size"] + (3,), 30, np.uint8)
        for k in range(masks.shape[-1]):  # test helper: paint each disc
            image[masks[..., k]] = 100 + (k % 100)
        return image

    def load_mask(self, image_id):
        info = self.image_info[image_id]
        h, w = info["size"]
        rng = np.random.default_rng(image_id)
        yy, xx = np.mgrid[:h, :w]
        n = info["n"]
        radius = rng.uniform(2, 9, n)
        cy, cx = rng.uniform(0, h, n), rng.uniform(0, w, n)
        masks = (yy[..., None] - cy) ** 2 + (xx[..., None] - cx) ** 2 <= radius ** 2
        masks[..., masks.sum(axis=(0, 1)) == 0] = False
        return masks, np.ones(n, np.int32)


def _disc(counts, **kw):
    ds = DiscDataset().load(counts, **kw)
    ds.prepare()
    return ds


@pytest.fixture(scope="module")
def synthetic():
    ds = SyntheticNucleiDataset()
    ds.load(5, seed=3, height=160, width=200)
    ds.prepare()
    return ds


def test_batch_keys_shapes_dtypes(synthetic):
    cfg = TinyConfig()
    loader = L.TrainingLoader(synthetic, cfg, augmentation=default_augmentation(), seed=1)
    assert len(loader) == 2
    batch = loader[0]
    a = len(get_anchors(cfg, (128, 128)))
    expected = {
        "input_image": ((2, 128, 128, 3), np.float32),
        "input_image_meta": ((2, cfg.IMAGE_META_SIZE), np.float32),
        "input_rpn_match": ((2, a, 1), np.int32),
        "input_rpn_bbox": ((2, 64, 4), np.float32),
        "input_gt_class_ids": ((2, 40), np.int32),
        "input_gt_boxes": ((2, 40, 4), np.float32),
        "input_gt_masks": ((2, 28, 28, 40), bool),
    }
    assert set(batch) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
    for k in range(2):
        ids = batch["input_gt_class_ids"][k]
        g = int((ids > 0).sum())
        assert g > 0 and np.all(ids[:g] == 1) and np.all(ids[g:] == 0)
        boxes = batch["input_gt_boxes"][k]
        assert np.all(boxes[:g, 2] > boxes[:g, 0]) and np.all(boxes[g:] == 0)
        assert batch["input_gt_masks"][k, ..., :g].any(axis=(0, 1)).all()
        assert not batch["input_gt_masks"][k, ..., g:].any()
        match = batch["input_rpn_match"][k, :, 0]
        assert 0 < (match == 1).sum() <= 32 and (match != 0).sum() == 64
        meta = IO.parse_image_meta(batch["input_image_meta"][k])
        assert meta["image_shape"].tolist() == [128, 128, 3]
        assert meta["original_image_shape"].tolist() == [160, 200, 3]
        assert meta["active_class_ids"].tolist() == [1, 1] and float(meta["scale"]) == 1.5
        # molded image = image - MEAN_PIXEL
        image = batch["input_image"][k] + cfg.MEAN_PIXEL.astype(np.float32)
        assert image.min() >= -1e-3 and image.max() <= 255 + 1e-3


def test_seeded_determinism_epochs_and_threads(synthetic):
    cfg = TinyConfig()
    aug = default_augmentation()
    a = L.TrainingLoader(synthetic, cfg, augmentation=aug, seed=5)
    b = L.TrainingLoader(synthetic, cfg, augmentation=aug, seed=5)
    for i in (1, 0):
        ba, bb = a[i], b[i]
        for key in ba:
            np.testing.assert_array_equal(ba[key], bb[key], err_msg=key)
    first = a[0]
    a.on_epoch_end()
    assert a.epoch == 1
    assert not np.array_equal(a[0]["input_image"], first["input_image"])
    # the Keras thread pool (2 workers) yields exactly the batches of direct indexing
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    c = L.TrainingLoader(synthetic, cfg, augmentation=aug, seed=5, workers=2)
    adapter = PyDatasetAdapter(c, shuffle=False)
    adapter.on_epoch_begin()
    got = list(adapter.get_numpy_iterator())
    adapter.on_epoch_end()
    assert len(got) == len(c)
    ref = L.TrainingLoader(synthetic, cfg, augmentation=aug, seed=5)
    for i, batch in enumerate(got):
        direct = ref[i]
        for key in direct:
            np.testing.assert_array_equal(batch[key], direct[key], err_msg=key)


def test_image_without_nuclei_is_kept():
    cfg = TinyConfig()
    ds = _disc([0, 0])
    batch = L.TrainingLoader(ds, cfg, seed=0)[0]
    match = batch["input_rpn_match"][..., 0]
    assert (match == 1).sum() == 0
    assert np.all((match == -1).sum(axis=1) == cfg.RPN_TRAIN_ANCHORS_PER_IMAGE)
    assert not batch["input_gt_class_ids"].any() and not batch["input_gt_boxes"].any()
    assert not batch["input_rpn_bbox"].any()
    image, meta, class_ids, bbox, mask = L.load_image_gt(ds, cfg, 0, rng=np.random.default_rng(0))
    assert class_ids.shape == (0,) and bbox.shape == (0, 4) and mask.shape == (28, 28, 0)


@pytest.mark.parametrize("mode", ["largest", "random"])
def test_overflow_keeps_max_instances(mode, caplog):
    class Over(TinyConfig):
        IMAGES_PER_GPU = 1
        MAX_GT_INSTANCES = 10
        GT_OVERFLOW = mode
        USE_MINI_MASK = False
        IMAGE_MIN_SCALE = 0
    cfg = Over()
    ds = _disc([60, 60], size=(128, 128))
    loader = L.TrainingLoader(ds, cfg, shuffle=False, seed=0)
    with caplog.at_level(logging.WARNING, logger="mrcnn_nuclei.data.loader"):
        b0, b1 = loader[0], loader[1]
    logged = [r for r in caplog.records if "MAX_GT_INSTANCES" in r.getMessage()]
    assert len(logged) == 1 and "instances" in logged[0].getMessage()
    assert np.all(b0["input_gt_class_ids"][0] == 1)  # all 10 slots filled
    _, _, ids_all, bbox_all, mask_all = L.load_image_gt(ds, cfg, 0, rng=np.random.default_rng(0))
    assert len(ids_all) > 10
    areas_all = mask_all.sum(axis=(0, 1))
    kept = b0["input_gt_masks"][0]
    kept_areas = np.sort(kept.sum(axis=(0, 1)))
    if mode == "largest":
        np.testing.assert_array_equal(kept_areas, np.sort(areas_all)[-10:])
    else:
        assert kept_areas.sum() < np.sort(areas_all)[-10:].sum()  # not simply the largest
        again = L.TrainingLoader(ds, cfg, shuffle=False, seed=0)[0]
        np.testing.assert_array_equal(again["input_gt_masks"], b0["input_gt_masks"])
    # boxes match their masks
    np.testing.assert_array_equal(b0["input_gt_boxes"][0], IO.extract_bboxes(kept))
    # the RPN targets still see every nucleus: positives can lie on dropped ones
    anchors = get_anchors(cfg, (128, 128))
    from mrcnn_nuclei.data.targets import match_anchors
    full, _ = match_anchors(anchors, ids_all, bbox_all)
    assert np.all(full[b0["input_rpn_match"][0, :, 0] == 1] == 1)


def test_failing_image_names_its_reference():
    ds = _disc([3, 3], bad=(1,))
    with pytest.raises(RuntimeError, match=r"disc://1.*truncated file"):
        L.load_image_gt(ds, TinyConfig(), 1)


def test_crop_fast_path_equals_plain_resize_and_masks_follow(synthetic):
    cfg = TinyConfig()
    for image_id in synthetic.image_ids:
        image, packed, n, channels, class_ids, info = L._load_image_gt(
            synthetic, cfg, image_id, None, np.random.default_rng(image_id))
        mask = IO.packed_unpack(packed, channels, n)
        np.testing.assert_array_equal(IO.packed_bboxes(packed, channels), IO.extract_bboxes(mask))
        np.testing.assert_array_equal(
            IO.packed_minimize_mask(IO.extract_bboxes(mask), packed, channels, (28, 28)),
            IO.minimize_mask(IO.extract_bboxes(mask), mask, (28, 28)))
        raw = synthetic.load_image(image_id)
        raw_mask, raw_ids = synthetic.load_mask(image_id)
        ref, window, scale, padding, crop = IO.resize_image(
            raw, min_dim=128, max_dim=128, min_scale=1.5, mode="crop",
            rng=np.random.default_rng(image_id))
        ref_mask = IO.resize_mask(raw_mask, scale, padding, crop)
        nonempty = ref_mask.any(axis=(0, 1))
        diff = np.abs(image.astype(int) - ref.astype(int))
        # float32 arithmetic and round-half-up: at most 1 grey level apart, a shifted or
        # mis-scaled crop would differ by far more
        assert diff.max() <= 1 and (diff > 0).mean() < 0.1
        np.testing.assert_array_equal(mask, ref_mask[..., nonempty])
        np.testing.assert_array_equal(class_ids, raw_ids[nonempty])
        assert info[3] == scale and info[2] == window


def test_load_image_gt_minimasks_round_trip(synthetic):
    class Full(TinyConfig):
        USE_MINI_MASK = False
    image, meta, ids, bbox, full = L.load_image_gt(synthetic, Full(), 0,
                                                   augmentation=default_augmentation(),
                                                   rng=np.random.default_rng(4))
    _, _, ids2, bbox2, mini = L.load_image_gt(synthetic, TinyConfig(), 0,
                                              augmentation=default_augmentation(),
                                              rng=np.random.default_rng(4))
    np.testing.assert_array_equal(bbox, bbox2)
    assert mini.shape == (28, 28, len(ids)) and full.shape == (128, 128, len(ids))
    back = IO.expand_mask(bbox2, mini, image.shape)
    inter = (back & full).sum(axis=(0, 1))
    union = (back | full).sum(axis=(0, 1))
    assert np.mean(inter / union) > 0.8
    np.testing.assert_array_equal(bbox, IO.extract_bboxes(full))


def test_bad_setup_messages(synthetic):
    class Three(TinyConfig):
        NUM_CLASSES = 3
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        L.TrainingLoader(synthetic, Three())
    with pytest.raises(ValueError, match="no images"):
        L.TrainingLoader(Dataset(), TinyConfig())
    loader = L.TrainingLoader(synthetic, TinyConfig(), seed=0)
    with pytest.raises(IndexError):
        loader[len(loader)]


def test_small_dataset_wraps_and_select_gt():
    cfg = TinyConfig()
    loader = L.TrainingLoader(_disc([4]), cfg, seed=0)
    assert len(loader) == 1
    batch = loader[0]
    assert batch["input_image"].shape[0] == 2
    np.testing.assert_array_equal(L.select_gt(5, 3, "largest", None, areas=[5, 1, 9, 9, 2]),
                                  [0, 2, 3])
    idx = L.select_gt(50, 7, "random", np.random.default_rng(0))
    assert len(idx) == 7 and len(set(idx.tolist())) == 7 and np.all(np.diff(idx) > 0)


def test_cache_gives_identical_batches_and_is_not_mutated(synthetic):
    cfg = TinyConfig()
    aug = default_augmentation("strong")
    plain = L.TrainingLoader(synthetic, cfg, augmentation=aug, seed=9)
    cached = L.TrainingLoader(synthetic, cfg, augmentation=aug, seed=9, cache=True)
    for epoch in range(2):
        for i in range(len(plain)):
            a, b = plain[i], cached[i]
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        plain.on_epoch_end()
        cached.on_epoch_end()
    assert 4 <= len(cached._cache) <= 5  # 2 batches x 2 images per epoch, reshuffled
    image, packed, ids, n = next(iter(cached._cache.values()))
    assert not image.flags.writeable and not packed.flags.writeable
    import pickle
    assert pickle.loads(pickle.dumps(cached))._cache == {}


def test_steps_per_epoch_beyond_one_pass_reshuffles():
    cfg = TinyConfig()  # BATCH_SIZE 2
    ds = _disc([3, 4, 5, 6])
    loader = L.TrainingLoader(ds, cfg, seed=2, steps_per_epoch=5)
    assert len(loader) == 5
    metas = [IO.parse_image_meta(loader[i]["input_image_meta"])["image_id"].tolist()
             for i in range(5)]
    # each pass of 2 batches covers every image once
    assert sorted(metas[0] + metas[1]) == [0, 1, 2, 3]
    assert sorted(metas[2] + metas[3]) == [0, 1, 2, 3]
    # a repeated image in a later pass gets a different crop (new random draws)
    first = loader[0]
    same = [i for i in (2, 3, 4) if metas[i] == metas[0]]
    for i in same:
        assert not np.array_equal(loader[i]["input_image"], first["input_image"])
    epoch0 = [loader[i]["input_image"] for i in range(5)]
    loader.on_epoch_end()
    assert not all(np.array_equal(a, loader[i]["input_image"]) for i, a in enumerate(epoch0))
    with pytest.raises(ValueError, match="steps_per_epoch"):
        L.TrainingLoader(ds, cfg, steps_per_epoch=0)


def test_unpacked_augmentation_paths_in_loader(synthetic):
    import albumentations as A
    import cv2

    class Flip:  # imgaug-style protocol (imgaug itself is not a dependency)
        def to_deterministic(self):
            return self

        def augment_image(self, image, hooks=None):
            return np.ascontiguousarray(image[:, ::-1])

    cfg = TinyConfig()
    rng = np.random.default_rng
    plain = L.load_image_gt(synthetic, cfg, 1, rng=rng(3))
    flipped = L.load_image_gt(synthetic, cfg, 1, augmentation=Flip(), rng=rng(3))
    np.testing.assert_array_equal(flipped[0], plain[0][:, ::-1])
    np.testing.assert_array_equal(flipped[4], plain[4][:, ::-1])  # mini-masks mirror too
    w = 128
    np.testing.assert_array_equal(flipped[3][:, [1, 3]], w - plain[3][:, [3, 1]])
    # a pipeline that is not mask-safe (linear mask interpolation) takes the unpacked path
    linear = A.Compose([A.Affine(rotate=(10, 10), mask_interpolation=cv2.INTER_LINEAR, p=1)])
    image, meta, ids, bbox, mini = L.load_image_gt(synthetic, cfg, 1, augmentation=linear,
                                                   rng=rng(3))
    assert len(ids) == len(bbox) == mini.shape[-1] > 0
    assert np.all(bbox[:, 2] > bbox[:, 0]) and mini.any(axis=(0, 1)).all()


class BrightDiscDataset(DiscDataset):
    """The discs dark on a bright background (as brightfield/H&E) when ``bright``."""

    def load_image(self, image_id):
        return 255 - super().load_image(image_id)


def test_invert_bright_applies_alike_in_training_and_inference():
    from mrcnn_nuclei.data.convert import invert_bright
    from mrcnn_nuclei.molding import mold_inputs

    dark = DiscDataset().load([3])
    dark.prepare()
    bright = BrightDiscDataset().load([3])
    bright.prepare()
    img = bright.load_image(0)
    assert img.mean() > 127 and dark.load_image(0).mean() < 127
    np.testing.assert_array_equal(invert_bright(img, 127), dark.load_image(0))
    assert invert_bright(img, None) is img and invert_bright(img, 254.9) is img
    with pytest.raises(ValueError, match="uint8"):
        invert_bright(img.astype(np.float32), 127)

    class Inv(TinyConfig):
        IMAGE_INVERT_BRIGHT = 127
        IMAGE_RESIZE_MODE = "square"

    class Plain(TinyConfig):
        IMAGE_RESIZE_MODE = "square"

    inv, plain = Inv(), Plain()
    # training: the bright dataset under inversion gives the dark dataset's batch exactly
    a = L.load_image_gt(bright, inv, 0)
    b = L.load_image_gt(dark, plain, 0)
    c = L.load_image_gt(bright, plain, 0)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    # inference: mold_inputs inverts the same images (and leaves dark ones alone)
    m_inv = mold_inputs([img], inv)[0][0]
    m_dark = mold_inputs([dark.load_image(0)], plain)[0][0]
    np.testing.assert_array_equal(m_inv, m_dark)
    np.testing.assert_array_equal(mold_inputs([dark.load_image(0)], inv)[0][0], m_dark)


@pytest.mark.parametrize("bad", [True, -1, 300, "x"])
def test_invert_bright_config_check(bad):
    from mrcnn_nuclei.config import ConfigError

    class C(TinyConfig):
        IMAGE_INVERT_BRIGHT = bad

    with pytest.raises(ConfigError, match="IMAGE_INVERT_BRIGHT"):
        C()
