"""The faster evaluation path scores exactly as the plain one: the one-scan ``masks_to_label``,
the x2 upsampling of the recipe's molding (``molding.upsample2_project``),
``evaluation.postprocess_label`` (the prediction's label image without the dense intermediate
stacks) and ``evaluation.ground_truth`` (ground truth decoded once per dataset and image), each
against a brute-force computation, and a seeded random-weights model evaluated by
``evaluate_dataset`` against the plain loop (detect, post-process, label, score) written out here."""

import numpy as np
import pytest

from mrcnn_nuclei import metrics as M
from mrcnn_nuclei.datasets import SyntheticNucleiDataset
from mrcnn_nuclei.evaluation import METRICS, evaluate_dataset, ground_truth, postprocess_label
from mrcnn_nuclei.modelfolder import PostProcess


def brute_label(masks, scores=None, mode="score"):
    """Paint channels from the weakest to the strongest; the strongest covering one wins
    (key: score or area; ties: the earlier channel)."""
    masks = np.asarray(masks) > 0
    n = masks.shape[-1]
    if mode == "area":
        key = [int(masks[..., k].sum()) for k in range(n)]
    else:
        key = [0.0] * n if scores is None else [float(s) for s in scores]
    label = np.zeros(masks.shape[:2], np.int32)
    for k in sorted(range(n), key=lambda k: (key[k], -k)):
        label[masks[..., k]] = k + 1
    return label


def brute_postprocess(r, settings):
    """PostProcess (no fill_holes) by hand: score cut, overlaps painted, small ones dropped,
    ids renumbered 1..K. Returns (label, scores, class_ids)."""
    masks = np.asarray(r["masks"]) > 0
    n = masks.shape[-1]
    scores = np.asarray(r.get("scores", np.ones(n)), np.float64)
    class_ids = np.asarray(r.get("class_ids", np.ones(n)), np.int64)
    keep = scores >= settings.score_threshold if settings.score_threshold else np.ones(n, bool)
    masks, scores, class_ids = masks[..., keep], scores[keep], class_ids[keep]
    label = brute_label(masks, scores, settings.overlap)
    out = np.zeros_like(label)
    kept = []
    for k in range(masks.shape[-1]):
        if (label == k + 1).sum() >= max(settings.min_size, 1):
            kept.append(k)
            out[label == k + 1] = len(kept)
    return out, scores[kept], class_ids[kept]


def random_detection(rng, h=None, w=None, n=None, dtype=bool):
    h = int(rng.integers(1, 24)) if h is None else h
    w = int(rng.integers(1, 24)) if w is None else w
    n = int(rng.integers(0, 12)) if n is None else n
    masks = (rng.random((h, w, n)) < rng.uniform(0.0, 0.6)).astype(dtype)
    r = {"masks": masks}
    if rng.random() < 0.8:  # scores with ties
        r["scores"] = rng.integers(0, 5, n) / 4
    if rng.random() < 0.5:
        r["class_ids"] = rng.integers(1, 3, n)
    return r


def test_masks_to_label_matches_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(300):
        r = random_detection(rng)
        mode = "area" if trial % 3 == 0 else "score"
        got = M.masks_to_label(r["masks"], r.get("scores"), mode)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, brute_label(r["masks"], r.get("scores"), mode),
                                      err_msg=f"trial {trial}")
    # one crowded image: 60 overlapping boxes in 200 x 300, scores descending as detect gives
    masks = np.zeros((200, 300, 60), bool)
    for k in range(60):
        y, x = rng.integers(0, 170, 2)
        masks[y:y + rng.integers(5, 30), x:x + rng.integers(5, 30), k] = True
    scores = np.sort(rng.random(60))[::-1]
    np.testing.assert_array_equal(M.masks_to_label(masks, scores), brute_label(masks, scores))
    np.testing.assert_array_equal(M.masks_to_label(masks), brute_label(masks))


def test_postprocess_label_equals_postprocess_apply_and_brute_force():
    rng = np.random.default_rng(1)
    for trial in range(300):
        r = random_detection(rng, dtype=[bool, np.uint8, np.float32][trial % 3])
        settings = PostProcess(score_threshold=float(rng.choice([0.0, 0.5, 0.75])),
                               min_size=int(rng.integers(0, 6)),
                               overlap=["score", "area"][trial % 2],
                               fill_holes=trial % 7 == 0)
        shape = r["masks"].shape[:2] + (3,)
        label, scores, class_ids = postprocess_label(r, shape, settings)
        masks, want_scores, want_ids = settings.apply(r, shape)  # the plain path
        np.testing.assert_array_equal(label, M.masks_to_label(masks), err_msg=f"trial {trial}")
        assert label.dtype == np.int32
        np.testing.assert_array_equal(scores, want_scores)
        np.testing.assert_array_equal(class_ids, want_ids)
        assert scores.dtype == want_scores.dtype and class_ids.dtype == want_ids.dtype
        if not settings.fill_holes:
            b_label, b_scores, b_ids = brute_postprocess(r, settings)
            np.testing.assert_array_equal(label, b_label, err_msg=f"trial {trial}")
            np.testing.assert_array_equal(scores, b_scores)
            np.testing.assert_array_equal(class_ids, b_ids)


def test_postprocess_label_raises_as_apply():
    masks = np.zeros((4, 5, 2), bool)
    with pytest.raises(KeyError, match="no 'masks'"):
        postprocess_label({"scores": np.ones(2)}, (4, 5, 3))
    with pytest.raises(ValueError, match="at image size"):
        postprocess_label({"masks": masks}, (4, 6, 3))
    with pytest.raises(ValueError, match="3 scores"):
        postprocess_label({"masks": masks, "scores": np.ones(3)}, (4, 5, 3))


def test_labelling_makes_no_copy_of_the_stack():
    """The plain path copied the whole [H, W, N] stack (a reordered copy in masks_to_label, the
    resolved, filtered and relabelled stacks in PostProcess.apply): 8 s and 400 MB each on a
    1024 x 1024 image with 400 detections. The one-scan path allocates far less than the stack."""
    import tracemalloc

    rng = np.random.default_rng(2)
    masks = np.zeros((512, 512, 128), bool)  # 32 MiB
    for k in range(128):
        y, x = rng.integers(0, 480, 2)
        masks[y:y + rng.integers(5, 30), x:x + rng.integers(5, 30), k] = True
    scores = np.sort(rng.random(128))[::-1]
    r = {"masks": masks, "scores": scores}
    tracemalloc.start()
    try:
        for fn in (lambda: M.masks_to_label(masks, scores),
                   lambda: postprocess_label(r, masks.shape, PostProcess(score_threshold=0.3))):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            fn()
            assert tracemalloc.get_traced_memory()[1] - base < masks.nbytes / 4
    finally:
        tracemalloc.stop()


def test_upsample2_project_equals_the_skimage_resize():
    from mrcnn_nuclei.data.image_ops import resize
    from mrcnn_nuclei.molding import upsample2_project

    rng = np.random.default_rng(4)
    for trial in range(200):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        shape = [(h, w), (h, w, 1), (h, w, 3)][trial % 3]
        image = rng.integers(0, 256, shape).astype(np.uint8)
        if trial % 4 == 0:  # 0/255 edges: many values exactly half-way (round half to even)
            image = (rng.integers(0, 2, shape) * 255).astype(np.uint8)
        want = resize(image, (2 * h, 2 * w))
        got = upsample2_project(image)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}")
    with pytest.raises(ValueError, match="uint8"):
        upsample2_project(np.zeros((4, 4), np.float32))


@pytest.mark.parametrize("semantics,mode,min_dim,min_scale", [
    ("project", "pad64", 64, 2.0),      # the recipe's inference twin: the fast x2 path
    ("project", "pad64", 256, 2.0),     # small images scaled by more than 2: resize_image
    ("matterport", "pad64", 64, 2.0),   # Matterport semantics: resize_image
    ("project", "square", 64, 2.0)])
def test_mold_inputs_equals_resize_image_then_mold(semantics, mode, min_dim, min_scale):
    from mrcnn_nuclei.config import NucleusConfig
    from mrcnn_nuclei.data import image_ops as IO
    from mrcnn_nuclei.molding import mold_inputs

    c = type("C", (NucleusConfig,), dict(
        RESIZE_SEMANTICS=semantics, IMAGE_RESIZE_MODE=mode, IMAGE_MIN_DIM=min_dim,
        IMAGE_MAX_DIM=256, IMAGE_MIN_SCALE=min_scale, GPU_COUNT=1, IMAGES_PER_GPU=1))()
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (50, 70, 3)).astype(np.uint8),
              rng.integers(0, 256, (33, 130, 3)).astype(np.uint8)]
    molded, metas, windows = mold_inputs(images, c)
    for image, m, meta, window in zip(images, molded, metas, windows):
        out, win, scale, _, _ = IO.resize_image(image, min_dim=min_dim, max_dim=256,
                                                min_scale=min_scale, mode=mode,
                                                semantics=semantics)
        np.testing.assert_array_equal(m, IO.mold_image(out, c))
        assert tuple(window) == tuple(win)
        np.testing.assert_array_equal(meta, IO.compose_image_meta(
            0, image.shape, out.shape, win, scale, np.zeros([c.NUM_CLASSES], np.int32)))


class CountingNuclei(SyntheticNucleiDataset):
    """Synthetic nuclei that count their load_mask calls."""

    calls = 0

    def load_mask(self, image_id):
        self.calls += 1
        return super().load_mask(image_id)


def test_ground_truth_is_decoded_once_per_dataset_and_image():
    ds = CountingNuclei()
    ds.load(3, seed=5, height=40, width=48, min_nuclei=2, max_nuclei=5)
    ds.prepare()
    for i in ds.image_ids:
        masks, class_ids = SyntheticNucleiDataset.load_mask(ds, i)
        for _ in range(2):
            gt, ids = ground_truth(ds, i)
            np.testing.assert_array_equal(gt, brute_label(masks))
            assert gt.dtype == np.int32
            np.testing.assert_array_equal(ids, class_ids)
    assert ds.calls == 3  # the second round came from the cache
    ground_truth(ds, 0, cache=False)
    assert ds.calls == 4
    ds.image_info[0] = dict(ds.image_info[0])  # a new info entry: read again
    ground_truth(ds, 0)
    assert ds.calls == 5
    other = CountingNuclei()  # the cache belongs to one dataset object
    other.load(1, seed=5, height=40, width=48, min_nuclei=2, max_nuclei=5)
    other.prepare()
    ground_truth(other, 0)
    assert other.calls == 1


class Memo:
    """A MaskRCNN that runs each image once: both loops below see the same detections."""

    def __init__(self, model):
        self.model, self.seen = model, {}

    def detect(self, images):
        key = images[0].tobytes()
        if key not in self.seen:
            self.seen[key] = self.model.detect(images)[0]
        return [self.seen[key]]


def plain_evaluation(detector, ds, ids):
    """The evaluation loop written out: detect, post-process by hand, label, score."""
    rows, gts, preds, scores = [], [], [], []
    settings = PostProcess()
    for i in ids:
        image = ds.load_image(i)
        r = detector.detect([image])[0]
        pred, s, _ = brute_postprocess(r, settings)
        gt = brute_label(ds.load_mask(i)[0])
        rows.append(M.evaluate_all(gt, pred))
        gts.append(gt)
        preds.append(pred)
        scores.append(s)
    return rows, M.coco_mask_ap(gts, preds, scores, backend="numpy")


def test_seeded_model_scores_equal_on_the_fast_and_plain_paths(tmp_path):
    from tiny_model import tiny_inference_model

    ds = SyntheticNucleiDataset()
    ds.load(4, seed=3, height=96, width=112, min_nuclei=6, max_nuclei=14)
    ds.prepare()
    model = tiny_inference_model(tmp_path, seed=1, DETECTION_MAX_INSTANCES=40,
                                 POST_NMS_ROIS_INFERENCE=64)
    detector = Memo(model)
    ids = list(ds.image_ids)
    rows, coco = plain_evaluation(detector, ds, ids)
    assert sum(r["n_pred"] for r in rows) > 20  # random weights at confidence 0: many, overlapping
    assert any(M.masks_to_label(r["masks"]).max() < r["masks"].shape[-1]  # some lost to overlaps
               for r in detector.seen.values())
    for _ in range(2):  # the second pass reads the cached ground truth
        s = evaluate_dataset(detector, ds, ids, min_size=0, coco_backend="numpy",
                             pannuke=False, verbose=0)
        for got, want in zip(s["per_image"], rows):
            for m in METRICS + ["n_gt", "n_pred", "tp", "fp", "fn"]:
                assert got[m] == want[m] or (np.isnan(got[m]) and np.isnan(want[m])), m
        assert s["coco"] == coco
