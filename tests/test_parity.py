"""Parity of the NumPy pre/post-processing with Matterport's own functions.

The fixture ``../shared/parity/matterport_reference.npz`` (see its SOURCE.md) holds what
Matterport's ``mrcnn/utils.py`` and ``MaskRCNN.mold_inputs``/``unmold_detections`` return on 8
real DSB2018 images.  Under the default ``RESIZE_SEMANTICS = "matterport"`` every function must
give exactly the same pixels and values (floats to 1e-6); ``"project"`` must keep the old
behaviour, whose differences from Matterport were measured in issue 10 (the counts below).
"""

import numpy as np
import pytest
from PIL import Image

from conftest import _shared_path
from mrcnn_nuclei import molding
from mrcnn_nuclei.config import Config
from mrcnn_nuclei.data import image_ops as IO
from mrcnn_nuclei.data import loader as L

MEAN_PIXEL = (43.53, 39.56, 48.22)


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)])


def _unpack(packed, shape):
    return np.unpackbits(packed, axis=-1, count=int(shape[-1])).view(bool)


def _bit_differences(a, b):
    """Differing bits of two bit-packed mask stacks of the same shape."""
    assert a.shape == b.shape, (a.shape, b.shape)
    x = a ^ b
    return int(_POPCOUNT[x[x != 0]].sum())


@pytest.fixture(scope="module")
def cases():
    ref = np.load(_shared_path("parity", "matterport_reference.npz"))
    root = _shared_path("data", "dsb2018_stage1_train", "stage1_train")
    out = []
    for k in range(int(ref["n_cases"])):
        case = {key[len(f"c{k}_"):]: ref[key] for key in ref.files if key.startswith(f"c{k}_")}
        folder = root / str(case["image_id"])
        case["image"] = np.asarray(Image.open(folder / "images" / f"{case['image_id']}.png")
                                   .convert("RGB"))
        files = sorted((folder / "masks").glob("*.png"))
        # kept bit-packed, [H, W, ceil(N/8)] as np.packbits(stack, axis=-1): cheap to compare
        planes = np.zeros(((len(files) + 7) // 8,) + case["image"].shape[:2], np.uint8)
        for i, f in enumerate(files):
            planes[i // 8] |= (np.asarray(Image.open(f)) > 0).view(np.uint8) << (7 - i % 8)
        case["masks"] = np.ascontiguousarray(planes.transpose(1, 2, 0))
        case["n_masks"] = len(files)
        out.append(case)
    assert len(out) == 8
    return out


def _config(case, semantics="matterport"):
    attrs = dict(NAME="parity", NUM_CLASSES=2, MEAN_PIXEL=MEAN_PIXEL, IMAGES_PER_GPU=1,
                 IMAGE_RESIZE_MODE=str(case["mode"]), IMAGE_MIN_DIM=int(case["min_dim"]),
                 IMAGE_MAX_DIM=int(case["max_dim"]), IMAGE_MIN_SCALE=float(case["min_scale"]))
    if semantics != "matterport":
        attrs["RESIZE_SEMANTICS"] = semantics
    return type("ParityConfig", (Config,), attrs)()


def _resize(case, semantics):
    return IO.resize_image(case["image"], int(case["min_dim"]), int(case["max_dim"]),
                           float(case["min_scale"]), str(case["mode"]), semantics=semantics)


def _differences(case, semantics):
    """Differing pixels/values of every function against the fixture, for one case."""
    image, window, scale, padding, crop = _resize(case, semantics)
    ref_image = case["resized_image"]
    diff = {"image": int((image != ref_image).sum()),
            "image_mean": float(image.astype(float).mean() - ref_image.astype(float).mean()),
            "image_meta": (tuple(window), float(scale), np.asarray(padding).tolist()) !=
            (tuple(case["window"]), float(case["scale"]), case["padding"].tolist())}
    packed = IO.resize_mask(case["masks"], scale, padding, crop, semantics=semantics)
    nonempty = IO.packed_nonempty(packed, case["n_masks"])
    if not nonempty.all():  # Matterport's fixture drops the masks that became empty
        packed = np.packbits(IO.packed_unpack(packed, np.flatnonzero(nonempty), case["n_masks"]),
                             axis=-1)
    diff["resize_mask"] = _bit_differences(packed, case["resized_masks_packed"])
    ref_masks = _unpack(case["resized_masks_packed"], case["resized_masks_shape"])
    diff["bbox"] = int((IO.extract_bboxes(ref_masks) != case["bbox"]).sum())
    mini_shape = tuple(case["mini_shape"][:2])
    ref_mini = _unpack(case["mini_masks_packed"], case["mini_shape"])
    mini = IO.minimize_mask(case["bbox"], ref_masks, mini_shape, semantics=semantics)
    diff["minimize_mask"] = int((mini != ref_mini).sum())
    packed = IO.packed_minimize_mask(case["bbox"], np.packbits(ref_masks, axis=-1),
                                     np.arange(ref_masks.shape[-1]), mini_shape,
                                     semantics=semantics)
    diff["packed_minimize_mask"] = int((packed != ref_mini).sum())
    expanded = IO.expand_mask(case["bbox"], ref_mini, ref_image.shape, semantics=semantics)
    diff["expand_mask"] = _bit_differences(np.packbits(expanded, axis=-1),
                                           case["expanded_packed"])
    return diff


def _unmold(case, config):
    molded = case["molded_image"]
    return molding.unmold_detections(case["detections"], case["mrcnn_mask"], case["image"].shape,
                                     molded.shape, case["window"], config)


def test_every_case_matches_matterport_exactly(cases):
    for k, case in enumerate(cases):
        diff = _differences(case, "matterport")
        assert diff == {"image": 0, "image_mean": 0.0, "image_meta": False, "resize_mask": 0,
                        "bbox": 0, "minimize_mask": 0, "packed_minimize_mask": 0,
                        "expand_mask": 0}, (k, diff)
        cfg = _config(case)
        molded, metas, windows = molding.mold_inputs([case["image"]], cfg)
        assert molded[0].shape == case["molded_image"].shape
        np.testing.assert_allclose(molded[0], case["molded_image"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(metas[0], case["image_meta"], rtol=1e-6, atol=1e-6)
        assert tuple(windows[0]) == tuple(case["window"])
        image, window, scale, _, _ = _resize(case, "matterport")
        meta = IO.compose_image_meta(0, case["image"].shape, case["molded_image"].shape, window,
                                     scale, np.zeros(2, np.int32))
        np.testing.assert_allclose(meta, case["image_meta"], rtol=1e-6, atol=1e-6)
        boxes, ids, scores, masks, _ = _unmold(case, cfg)
        np.testing.assert_array_equal(boxes, case["unmold_boxes"])
        np.testing.assert_array_equal(ids, case["unmold_class_ids"])
        np.testing.assert_allclose(scores, case["unmold_scores"], rtol=1e-6, atol=1e-6)
        assert masks.shape == tuple(case["unmold_masks_shape"])
        assert _bit_differences(np.packbits(masks, axis=-1), case["unmold_masks_packed"]) == 0, k
        ref = _unpack(case["unmold_masks_packed"], case["unmold_masks_shape"])
        # unmold_mask, one instance at a time, is the same function
        soft = case["mrcnn_mask"][np.arange(len(ids)), :, :, ids]
        for i in range(0, len(ids), 5):
            np.testing.assert_array_equal(IO.unmold_mask(soft[i], boxes[i], case["image"].shape),
                                          ref[..., i])


# Issue 10's measurement of the old (now "project") functions against Matterport, per case
_PROJECT_RESIZE_MASK = [0, 1426, 1383, 0, 0, 593, 0, 187]
_PROJECT_MINIMIZE = [263, 295, 4363, 867, 5562, 4888, 48, 133]
_PROJECT_EXPAND = [10, 15, 0, 0, 0, 0, 0, 0]


def test_project_semantics_keep_the_old_behaviour(cases):
    image_cases, unmold_cases = 0, 0
    for k, case in enumerate(cases):
        diff = _differences(case, "project")
        assert diff["resize_mask"] == _PROJECT_RESIZE_MASK[k], (k, diff)
        assert diff["minimize_mask"] == _PROJECT_MINIMIZE[k], (k, diff)
        assert diff["packed_minimize_mask"] == _PROJECT_MINIMIZE[k], (k, diff)
        assert diff["expand_mask"] == _PROJECT_EXPAND[k], (k, diff)
        assert not diff["image_meta"]
        if float(case["scale"]) != 1:  # rounded instead of truncated: brighter on average
            image_cases += 1
            assert diff["image"] > 0 and 0.2 < diff["image_mean"] < 0.65, (k, diff)
        else:
            assert diff["image"] == 0
        _, _, _, masks, _ = _unmold(case, _config(case, "project"))
        n = _bit_differences(np.packbits(masks, axis=-1), case["unmold_masks_packed"])
        assert n == 0 or 4 <= n <= 114, (k, n)
        unmold_cases += n > 0
    assert image_cases == 6 and unmold_cases == 6


def test_loader_crop_path_equals_matterport_resize_then_crop(cases):
    """The loader resizes only the crop's window; under "matterport" that is bit-identical to
    resize_image on the whole image followed by the crop (and so are the masks)."""
    for case in cases[:3]:
        for semantics in ("matterport", "project"):
            cfg = type("CropConfig", (Config,), dict(
                NAME="crop", IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=256, IMAGE_MAX_DIM=256,
                IMAGE_MIN_SCALE=2.0, RESIZE_SEMANTICS=semantics))()
            (fast, window, scale, padding, crop), _ = L._resize_and_crop(
                case["image"], cfg, np.random.default_rng(7))
            full, *_, crop_ref = IO.resize_image(case["image"], 256, 256, 2.0, "crop",
                                                 rng=np.random.default_rng(7),
                                                 semantics=semantics)
            assert crop == crop_ref
            d = np.abs(fast.astype(int) - full.astype(int))
            assert d.max() == 0 if semantics == "matterport" else d.max() <= 1


def test_loader_mini_masks_follow_the_option_and_config_validates_it(cases):
    from mrcnn_nuclei.config import ConfigError
    from mrcnn_nuclei.recipes import DSBScratchConfig

    case = cases[1]
    n = int(case["resized_masks_shape"][-1])
    packed, channels = case["resized_masks_packed"], np.arange(n)
    masks = _unpack(packed, case["resized_masks_shape"])
    bbox = IO.packed_bboxes(packed, channels)
    results = {}
    for semantics in ("matterport", "project"):
        cfg = _config(case, semantics)
        results[semantics] = L._gt_masks(cfg, packed, n, channels, bbox)
        np.testing.assert_array_equal(
            results[semantics], IO.minimize_mask(bbox, masks, cfg.MINI_MASK_SHAPE, semantics))
    np.testing.assert_array_equal(results["matterport"],
                                  _unpack(case["mini_masks_packed"], case["mini_shape"]))
    assert (results["matterport"] != results["project"]).any()
    assert DSBScratchConfig().RESIZE_SEMANTICS == "project"  # its measured curve used it
    assert Config().RESIZE_SEMANTICS == "matterport"
    with pytest.raises(ConfigError, match="RESIZE_SEMANTICS"):
        type("Bad", (Config,), dict(RESIZE_SEMANTICS="skimage"))()
