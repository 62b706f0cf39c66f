"""Failure analysis (mrcnn_nuclei.diagnostics), the detection cache and the post-processing sweep
(mrcnn_nuclei.detection_cache), and the two benchmark scripts on a tiny seeded model."""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from mrcnn_nuclei import diagnostics as D
from mrcnn_nuclei import detection_cache as C
from mrcnn_nuclei.metrics import DSB_THRESHOLDS, dsb_score, masks_to_label
from mrcnn_nuclei.modelfolder import PostProcess

REPO = Path(__file__).resolve().parents[1]


def _box(label, value, y1, y2, x1, x2):
    label[y1:y2, x1:x2] = value


def _hand_case():
    """gt: a touching pair A|B (merged by one prediction), C (split in two), a small missed D,
    E (400 px, predicted 2 px to the right), F (perfect)."""
    gt = np.zeros((64, 64), np.int32)
    pred = np.zeros((64, 64), np.int32)
    _box(gt, 1, 5, 15, 5, 15)      # A 100 px
    _box(gt, 2, 5, 15, 15, 25)     # B 100 px
    _box(gt, 3, 30, 40, 5, 25)     # C 200 px
    _box(gt, 4, 50, 55, 50, 56)    # D 30 px
    _box(gt, 5, 30, 50, 40, 60)    # E 400 px
    _box(gt, 6, 50, 60, 5, 15)     # F 100 px
    _box(pred, 1, 5, 15, 5, 25)    # over A and B
    _box(pred, 2, 30, 40, 5, 15)   # left half of C
    _box(pred, 3, 30, 40, 15, 25)  # right half of C
    _box(pred, 4, 30, 50, 42, 62)  # E shifted by 2 columns: IoU 360/440
    _box(pred, 5, 50, 60, 5, 15)   # F exactly
    return gt, pred


def _brute_boundary_mean(gt, pred):
    """Mean of the distances from each boundary pixel of the matched pairs to the nearest
    boundary pixel of the other image (all pairs here are matched), by explicit point sets."""
    def edge_points(label):
        pts = []
        h, w = label.shape
        for y in range(h):
            for x in range(w):
                v = label[y, x]
                if v == 0:
                    continue
                for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    yy, xx = min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)
                    if label[yy, xx] != v:
                        pts.append((y, x))
                        break
        return np.array(pts, float)

    a, b = edge_points(gt), edge_points(pred)
    d = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    return (d.min(1).sum() + d.min(0).sum()) / (len(a) + len(b))


def test_hand_made_counts():
    gt, pred = _hand_case()
    r = D.diagnose_image(gt, pred, scores=np.array([0.95, 0.6, 0.55, 0.8, 0.99]))
    n_loose = int((DSB_THRESHOLDS < 360 / 440).sum())  # thresholds E still passes: 0.5..0.8
    assert n_loose == 7
    want_tp = np.array([2] * 7 + [1] * 3)
    np.testing.assert_array_equal(r["tp"], want_tp)
    np.testing.assert_array_equal(r["fp"], 5 - want_tp)
    np.testing.assert_array_equal(r["fn"], 6 - want_tp)
    assert r["dsb"] == pytest.approx((7 * 2 / 9 + 3 * 1 / 10) / 10)
    assert r["dsb"] == pytest.approx(dsb_score(gt, pred))
    assert (r["merges"], r["gt_in_merges"], r["splits"], r["pred_in_splits"]) == (1, 2, 1, 2)
    # sizes: D 30 (<50); A, B, F 100 (50-150); C 200 (150-400); E 400 (>=400)
    np.testing.assert_array_equal(r["size_n"], [1, 3, 1, 1])
    np.testing.assert_array_equal(r["size_missed"], [1, 2, 1, 0])   # D; A, B; C
    # matched pairs E and F: 40 of 500 GT pixels left out, 40 of 500 predicted outside
    assert (r["matched"], r["gt_px"], r["pred_px"], r["inter_px"]) == (2, 500, 500, 460)
    assert r["iou_sum"] == pytest.approx(1.0 + 360 / 440)
    # score lost: the two splits add up to 1 - DSB_t; at 0.85 one of two pairs is lost by its mask
    np.testing.assert_allclose(r["loss_fp"] + r["loss_fn"], 1 - r["dsb_t"])
    np.testing.assert_allclose(r["loss_det_fp"] + r["loss_det_fn"] + r["loss_loc"],
                               1 - r["dsb_t"])
    i85 = int(np.flatnonzero(np.isclose(DSB_THRESHOLDS, 0.85))[0])
    assert (r["loss_det_fp"][i85], r["loss_det_fn"][i85], r["loss_loc"][i85]) == \
        pytest.approx((3 / 10, 4 / 10, 2 / 10))
    # scores of matched (0.8 E, 0.99 F) and unmatched (0.95, 0.6, 0.55) predictions
    np.testing.assert_array_equal(r["score_tp"], [0, 0, 1, 1])
    np.testing.assert_array_equal(r["score_fp"], [0, 2, 0, 1])


def test_boundary_distance_against_point_sets():
    gt = np.zeros((40, 40), np.int32)
    pred = np.zeros((40, 40), np.int32)
    _box(gt, 1, 5, 25, 5, 25)
    _box(pred, 7, 6, 25, 7, 27)           # shifted and cut
    r = D.diagnose_image(gt, pred, boundary_distance=True)
    assert r["matched"] == 1
    assert r["bd_sum"] / r["bd_count"] == pytest.approx(_brute_boundary_mean(gt, pred))
    assert D.diagnose_image(gt, gt)["bd_sum"] == 0.0


def _random_labels(rng, h=48, w=48, n=8):
    lab = np.zeros((h, w), np.int32)
    for k in range(1, n + 1):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        dy, dx = rng.integers(3, 12, 2)
        lab[y:y + dy, x:x + dx] = k
    return lab


def test_dsb_and_summary_equal_the_package_score():
    rng = np.random.default_rng(3)
    records, gts, preds = [], [], []
    groups = ["256x256_gray", "256x320_color", "1024x1024_gray", "520x696_gray", None]
    for i in range(10):
        gt = _random_labels(rng)
        pred = np.where(rng.random(gt.shape) < 0.9, np.roll(gt, rng.integers(-2, 3), 1), 0)
        if i == 3:
            pred[:] = 0                                  # nothing predicted
        if i == 4:
            gt[:] = 0
            pred[:] = 0                                  # both empty: 1.0
        r = D.diagnose_image(gt, pred)
        assert r["dsb"] == pytest.approx(dsb_score(gt, pred), abs=1e-12)
        r.update(image_id=f"im{i}", group=groups[i % 5])
        records.append(r)
        gts.append(gt)
        preds.append(pred)
    s = D.summarize(records)
    want = np.mean([dsb_score(g, p) for g, p in zip(gts, preds)])
    assert s["all"]["dsb"] == pytest.approx(want)
    # the subsets' shares of the loss add up to 1 - DSB, by type and by group
    for key in ("by_type", "by_group"):
        assert sum(a["share_of_loss"] for a in s[key].values()) == pytest.approx(1 - want)
    assert set(s["by_type"]) == {"small_fluorescence", "he_colour", "brightfield",
                                 "large_fluorescence", "other"}
    assert s["by_type"]["brightfield"]["n_images"] == 2
    text = D.format_report(s)
    assert "By image type" in text and "brightfield" in text
    saved = json.loads(json.dumps(D.to_jsonable(s)))      # JSON-able (NaN -> null)
    fewer = D.summarize(records[:5])
    table = D.format_comparison(saved, fewer).splitlines()
    dsb_line = next(line for line in table if line.startswith("DSB "))
    want_change = fewer["all"]["dsb"] - s["all"]["dsb"]
    assert float(dsb_line.split()[-1]) == pytest.approx(want_change, abs=1e-4)


def test_stack_input_uses_the_overlap_rule():
    rng = np.random.default_rng(0)
    gt = _random_labels(rng)
    stack = np.stack([gt == k for k in range(1, 9)], -1)
    stack[..., 0] |= np.roll(stack[..., 1], 2, 0)       # overlapping masks
    scores = rng.random(8)
    r = D.diagnose_image(gt, stack, scores)
    assert r["dsb"] == pytest.approx(dsb_score(gt, masks_to_label(stack, scores)))


def test_group_mapping_covers_the_dsb_groups(dsb_root):
    groups = D.read_groups(dsb_root / "image_groups.tsv")
    assert set(groups.values()) <= set(D.GROUP_TYPES)
    assert {D.image_type(g) for g in groups.values()} == set(D.IMAGE_TYPES)


# ------------------------------------------------------------------------------- the sweep
def _fake_result(rng, h=40, w=44, n=7):
    """A detect_soft-like dict: blob soft masks inside boxes, tied scores, and detect's own
    masks differing from soft >= 0.5 at a few pixels (as float64 vs float32 resizes can)."""
    soft = np.zeros((h, w, n), np.float32)
    rois = np.zeros((n, 4), np.int32)
    yy, xx = np.mgrid[:h, :w]
    for k in range(n):
        cy, cx = rng.integers(6, h - 6), rng.integers(6, w - 6)
        r = rng.uniform(3, 9)
        y1, x1, y2, x2 = max(cy - 10, 0), max(cx - 10, 0), min(cy + 10, h), min(cx + 10, w)
        blob = np.clip(1.2 - np.hypot(yy - cy, xx - cx) / r, 0, 1).astype(np.float32)
        blob[:y1] = 0
        blob[y2:] = 0
        blob[:, :x1] = 0
        blob[:, x2:] = 0
        soft[..., k] = blob
        rois[k] = (y1, x1, y2, x2)
    scores = np.sort(rng.choice([0.4, 0.55, 0.7, 0.9], n))[::-1].astype(np.float32)
    hard = soft >= 0.5
    near = np.argwhere((soft > 0.45) & (soft < 0.55))
    for y, x, k in near[::3]:
        hard[y, x, k] = ~hard[y, x, k]
    return {"rois": rois, "scores": scores, "class_ids": np.ones(n, np.int32), "masks": hard,
            "soft_masks": soft}


@pytest.mark.parametrize("overlap", ["score", "area"])
def test_sweep_labels_equal_postprocess_apply(overlap):
    rng = np.random.default_rng(1)
    r = _fake_result(rng)
    gt = masks_to_label(r["soft_masks"] > 0.6)
    entry = C.cache_entry(r, gt, "x", "256x256_gray")
    np.testing.assert_array_equal(C.cached_soft_masks(entry), r["soft_masks"])
    np.testing.assert_array_equal(C.cached_detection(entry, 0.5)["masks"], r["masks"])
    settings = list(C.sweep_image(entry, (0.3, 0.5, 0.62), (0.0, 0.55, 0.9), (0, 30), overlap))
    assert len(settings) == 18
    for (t, s, m), label, sc in settings:
        pp = PostProcess(mask_threshold=t, score_threshold=s, min_size=m, overlap=overlap)
        det = dict(r, masks=r["masks"] if t == 0.5 else r["soft_masks"] >= t)
        masks, scores, _ = pp.apply(det, gt.shape)
        np.testing.assert_array_equal(label, masks_to_label(masks), err_msg=str((t, s, m)))
        np.testing.assert_array_equal(sc, scores.astype(np.float32))


def test_cache_files_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    r = _fake_result(rng)
    gt = masks_to_label(r["soft_masks"] > 0.6)
    path = C.save_cached(str(tmp_path / "a.npz"), C.cache_entry(r, gt, "a", "", {"X": 1}))
    e = C.load_cached(path)
    assert (e["image_id"], e["group"], e["config"]) == ("a", "", {"X": 1})
    np.testing.assert_array_equal(e["gt"], gt)
    res = C.sweep([e], (0.5,), (0.0,), (0,), ap=True)
    pp_masks, pp_scores, _ = PostProcess().apply(r, gt.shape)
    want = dsb_score(gt, masks_to_label(pp_masks))
    assert res["rows"][0]["dsb"] == pytest.approx(want)
    assert C.best_setting(res["rows"])["dsb"] == pytest.approx(want)
    with pytest.raises(FileNotFoundError, match="not cached"):
        C.load_cache(str(tmp_path), ["b"])


# ------------------------------------------------------------- the scripts on a tiny model
def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _varied_detections(m):
    """Random weights detect nothing; a class bias gives every proposal a nucleus score of
    about 0.5-0.75 and a larger mask kernel spreads the soft masks over 0.1-1."""
    cls = m.keras_model.get_layer("mrcnn_class_logits")
    kernel, _ = cls.get_weights()
    cls.set_weights([kernel, np.array([0.0, 2.0], np.float32)])
    mask = m.keras_model.get_layer("mrcnn_mask")
    mask.set_weights([w * 30.0 if w.ndim > 1 else w for w in mask.get_weights()])
    return m


def test_scripts_sweep_equals_evaluate_dataset_on_a_tiny_model(tmp_path, dsb_root):
    """tune_postprocess caches detect_soft at DETECTION_MIN_CONFIDENCE 0 for a folder whose own
    value is 0.6; each swept setting scores exactly what evaluate_dataset gives the folder's
    model with that postprocess.json; --write stores the best writable one; dsb_failures then
    reads the same cache and reports the DSB score evaluate_dataset gives."""
    sys_path = list(__import__("sys").path)
    from mrcnn_nuclei.datasets import DSBDataset
    from mrcnn_nuclei.evaluation import evaluate_dataset
    from mrcnn_nuclei.modelfolder import save_model
    from tiny_model import tiny_inference_model

    folder = str(tmp_path / "model")
    model = _varied_detections(tiny_inference_model(tmp_path, seed=0,
                                                    DETECTION_MIN_CONFIDENCE=0.6,
                                                    DETECTION_MAX_INSTANCES=40))
    save_model(model, folder)
    groups = D.read_groups(dsb_root / "image_groups.tsv")
    ids = sorted(i for i, g in groups.items() if g == "256x256_gray")[:2]
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    common = ["--model", folder, "--dataset", str(dsb_root), "--ids", "file",
              "--ids-file", str(tmp_path / "ids.txt"), "--min-confidence", "0"]
    tune = _load_script("tune_postprocess")
    res = tune.main(common + ["--mask-thresholds", "0.4,0.5,0.65", "--score-thresholds",
                              "0,0.6,0.7", "--min-sizes", "0,30", "--key", "aji",
                              "--write"])
    __import__("sys").path[:] = sys_path
    rows = {(r["mask_threshold"], r["score_threshold"], r["min_size"]): r for r in res["rows"]}
    assert len(rows) == 18
    assert rows[(0.5, 0.0, 0)]["n_pred"] > rows[(0.5, 0.6, 0)]["n_pred"] > 0  # the cut matters
    ds = DSBDataset().load(str(dsb_root), ids=ids)
    ds.prepare()
    for key in [(0.4, 0.6, 0), (0.5, 0.7, 30), (0.65, 0.6, 30), (0.5, 0.6, 0)]:
        t, s, m = key
        got = evaluate_dataset(model, ds, postprocess=PostProcess(mask_threshold=t,
                               score_threshold=s, min_size=m), coco_backend="numpy",
                               pannuke=False, verbose=0, check_images=False)
        for k in ("dsb", "aji", "pq", "f1"):
            assert rows[key][k] == pytest.approx(got["means"][k], abs=1e-12), (key, k)
        assert rows[key]["AP"] == pytest.approx(got["coco"]["AP"], abs=1e-12)
        assert rows[key]["n_pred"] == got["totals"]["n_pred"]
    assert len({rows[k]["aji"] for k in rows}) > 3          # the settings do differ
    best = res["writable"]
    assert best["score_threshold"] >= 0.6
    saved = json.loads((tmp_path / "model" / "postprocess.json").read_text())
    assert (saved["mask_threshold"], saved["score_threshold"], saved["min_size"]) == \
        (best["mask_threshold"], best["score_threshold"], best["min_size"])
    # dsb_failures: same cache (no second detection), the folder's new settings
    failures = _load_script("dsb_failures")
    summary = failures.main(common + ["--out", str(tmp_path / "out")])
    __import__("sys").path[:] = sys_path
    assert summary["all"]["dsb"] == pytest.approx(best["dsb"], abs=1e-12)
    assert summary["all"]["n_pred"] == best["n_pred"]
    assert summary["all"]["n_gt"] == got["totals"]["n_gt"]
    report = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert report["summary"]["all"]["n_images"] == 2
    assert (tmp_path / "out" / "failures.txt").read_text().count("By image type") == 1


def test_update_postprocess_changes_only_the_given_settings(tmp_path):
    from mrcnn_nuclei.modelfolder import update_postprocess

    folder = tmp_path / "m"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="weights.weights.h5"):
        update_postprocess(folder, mask_threshold=0.4)
    (folder / "weights.weights.h5").write_bytes(b"")
    (folder / "postprocess.json").write_text(json.dumps({"min_size": 12, "overlap": "area"}))
    new = update_postprocess(folder, mask_threshold=0.45, score_threshold=0.7)
    saved = json.loads((folder / "postprocess.json").read_text())
    assert saved == new.to_dict() == dict(PostProcess().to_dict(), min_size=12, overlap="area",
                                          mask_threshold=0.45, score_threshold=0.7)
    with pytest.raises(ValueError, match="unknown setting"):
        update_postprocess(folder, threshold=0.3)
    with pytest.raises(ValueError, match="mask_threshold"):
        update_postprocess(folder, mask_threshold=1.5)
    assert json.loads((folder / "postprocess.json").read_text()) == saved   # unchanged


def test_a_cache_belongs_to_one_model(tmp_path):
    """ensure_cache refuses a folder cached for other weights (or overrides) unless overwritten,
    and loads no model when every image is cached."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "weights.weights.h5").write_bytes(b"1")
    cache = tmp_path / "cache"
    cache.mkdir()
    key = C.model_key(folder)
    assert key != C.model_key(folder, DETECTION_MIN_CONFIDENCE=0.3)
    (cache / "manifest.json").write_text(json.dumps({"key": key}))
    rng = np.random.default_rng(0)
    r = _fake_result(rng)
    C.save_cached(str(cache / "a.npz"), C.cache_entry(r, masks_to_label(r["masks"]), "a"))

    class OneImage:
        image_ids = [0]
        image_info = [{"id": "a"}]

    paths, manifest = C.ensure_cache(folder, OneImage(), str(cache))   # no model needed
    assert paths == [str(cache / "a.npz")] and manifest["key"] == key
    with pytest.raises(ValueError, match="another model or settings"):
        C.ensure_cache(folder, OneImage(), str(cache), DETECTION_MIN_CONFIDENCE=0.3)
    (folder / "weights.weights.h5").write_bytes(b"22")                 # retrained weights
    with pytest.raises(ValueError, match="another model or settings"):
        C.ensure_cache(folder, OneImage(), str(cache))
