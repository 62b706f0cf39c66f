"""Instance merging across runs: grouping by mask IoU, voting, averaging, touching nuclei."""

import numpy as np
import pytest

from mrcnn_nuclei.inference.merge import boxes_from_masks, mask_iou_matrix, merge_instances

H, W = 40, 50


def _square(y, x, s, value=1.0):
    m = np.zeros((H, W), np.float32)
    m[y:y + s, x:x + s] = value
    return m


def _run(masks, scores, classes=None):
    soft = np.stack(masks, -1) if masks else np.zeros((H, W, 0), np.float32)
    n = soft.shape[-1]
    return {"soft_masks": soft, "masks": soft >= 0.5, "scores": np.asarray(scores, np.float32),
            "class_ids": np.asarray(classes if classes is not None else [1] * n, np.int32)}


def test_iou_matrix_matches_brute_force():
    rng = np.random.default_rng(0)
    a = rng.random((12, 13, 5)) > 0.6
    b = rng.random((12, 13, 4)) > 0.5
    b[..., 3] = False
    got = mask_iou_matrix(a, b)
    for i in range(5):
        for j in range(4):
            inter = np.logical_and(a[..., i], b[..., j]).sum()
            union = np.logical_or(a[..., i], b[..., j]).sum()
            assert np.isclose(got[i, j], inter / union if union else 0.0)


def test_boxes_from_masks_exclusive_corners():
    m = np.zeros((10, 12, 3), bool)
    m[2:5, 3:9, 0] = True
    m[9, 11, 1] = True
    got = boxes_from_masks(m)
    assert got.tolist() == [[2, 3, 5, 9], [9, 11, 10, 12], [0, 0, 0, 0]]


def test_same_detection_in_all_runs_gives_one_instance_with_mean_score():
    runs = [_run([_square(5, 5, 10, v)], [s]) for v, s in ((0.9, 0.9), (0.8, 0.7), (0.7, 0.5))]
    out = merge_instances(runs, min_runs=2)
    assert out["masks"].shape == (H, W, 1)
    assert np.isclose(out["scores"][0], (0.9 + 0.7 + 0.5) / 3)
    assert np.allclose(out["soft_masks"][5:15, 5:15, 0], 0.8)
    assert out["n_runs"].tolist() == [3]
    assert out["rois"].tolist() == [[5, 5, 15, 15]]
    assert out["masks"][..., 0].sum() == 100


def test_detection_in_one_run_only_is_dropped():
    runs = [_run([_square(5, 5, 10), _square(25, 30, 8)], [0.9, 0.95]),
            _run([_square(5, 6, 10)], [0.8]),
            _run([_square(6, 5, 10)], [0.85])]
    out = merge_instances(runs, min_runs=2)
    assert len(out["scores"]) == 1
    assert out["masks"][5:15, 6:15, 0].all() and not out["masks"][25:33, 30:38].any()
    kept_all = merge_instances(runs, min_runs=1)
    assert len(kept_all["scores"]) == 2
    assert np.isclose(kept_all["scores"][0], 0.95)  # singleton keeps its own score


def test_two_touching_nuclei_stay_two():
    left, right = _square(10, 10, 10), _square(10, 20, 10)   # share an edge
    runs = [_run([left, right], [0.9, 0.8]) for _ in range(3)]
    out = merge_instances(runs, min_runs=2)
    assert len(out["scores"]) == 2
    areas = sorted(out["masks"].sum((0, 1)).tolist())
    assert areas == [100, 100]
    assert not np.logical_and(out["masks"][..., 0], out["masks"][..., 1]).any()


def test_touching_nuclei_stay_two_when_runs_disagree_at_the_shared_edge():
    # each run's masks bleed 0..2 columns across the shared edge (x = 20), so the runs' masks of
    # the two nuclei overlap there: the merge must still give two disjoint nuclei split at x = 20
    runs = []
    for bleed, score in ((0, 0.9), (1, 0.8), (2, 0.7)):
        left, right = _square(10, 10, 10, 0.9), _square(10, 20, 10, 0.9)
        left[10:20, 20:20 + bleed] = 0.8
        right[10:20, 20 - bleed:20] = 0.8
        runs.append(_run([left, right], [score, score - 0.05]))
    out = merge_instances(runs, min_runs=2)
    assert len(out["scores"]) == 2 and out["n_runs"].tolist() == [3, 3]
    # the averaged left mask is 0.53 >= 0.5 on column 20 (a plain threshold would give that
    # column to both nuclei); the right nucleus' larger average wins it
    assert np.isclose(out["soft_masks"][15, 20].min(), 1.6 / 3, atol=1e-6)
    masks = out["masks"]
    assert not np.logical_and(masks[..., 0], masks[..., 1]).any()
    k_left = int(np.argmax(masks[15, 12]))
    left_m, right_m = masks[..., k_left], masks[..., 1 - k_left]
    assert left_m[15, 12] and right_m[15, 27]
    assert left_m.sum() == 100 and left_m[10:20, 10:20].all()
    assert right_m.sum() == 100 and right_m[10:20, 20:30].all()


def test_overlap_between_merged_instances_goes_to_larger_average():
    a = _square(10, 10, 10, 0.9)
    b = _square(10, 17, 10, 0.6)   # overlaps a on columns 17..19, IoU low
    runs = [_run([a, b], [0.9, 0.8]), _run([a, b], [0.9, 0.8])]
    out = merge_instances(runs, min_runs=2)
    assert len(out["scores"]) == 2
    first = out["masks"][..., 0]   # best score = instance a
    assert first[10:20, 17:20].all() and not out["masks"][10:20, 17:20, 1].any()


def test_averaging_missing_runs_exclude_vs_zero_by_hand():
    runs = [_run([_square(5, 5, 10, 0.9)], [0.6]),
            _run([_square(5, 5, 10, 0.7)], [0.9]),
            _run([], [])]
    ex = merge_instances(runs, min_runs=2, missing="exclude")
    assert np.isclose(ex["soft_masks"][8, 8, 0], 0.8) and np.isclose(ex["scores"][0], 0.75)
    zero = merge_instances(runs, min_runs=2, missing="zero", mask_threshold=0.5)
    assert np.isclose(zero["soft_masks"][8, 8, 0], 1.6 / 3)
    assert np.isclose(zero["scores"][0], 0.5)
    assert zero["masks"][..., 0].sum() == 100     # 0.533 >= 0.5
    strict = merge_instances(runs, min_runs=2, missing="zero", mask_threshold=0.6)
    assert len(strict["scores"]) == 0             # the averaged mask vanishes


def test_at_most_one_member_per_run_and_class_awareness():
    seed = _square(5, 5, 10)
    near = _square(5, 6, 10)       # IoU 0.82 with seed
    worse = _square(6, 7, 10)      # IoU 0.66 with seed, from the SAME run as near
    runs = [_run([seed], [0.9]), _run([near, worse], [0.5, 0.4])]
    out = merge_instances(runs, min_runs=1)
    assert sorted(out["n_runs"].tolist()) == [1, 2]
    other_class = [_run([seed], [0.9], [1]), _run([near], [0.8], [2])]
    out2 = merge_instances(other_class, min_runs=2)
    assert len(out2["scores"]) == 0
    out3 = merge_instances(other_class, min_runs=2, class_aware=False)
    assert len(out3["scores"]) == 1 and out3["class_ids"].tolist() == [1]


def test_iou_threshold_is_respected():
    a, b = _square(5, 5, 10), _square(5, 10, 10)   # IoU = 50 / 150
    runs = [_run([a], [0.9]), _run([b], [0.8])]
    assert len(merge_instances(runs, iou_threshold=0.3, min_runs=2)["scores"]) == 1
    assert len(merge_instances(runs, iou_threshold=0.34, min_runs=2)["scores"]) == 0


def test_hard_masks_only_and_bad_input():
    r = {"masks": _square(1, 1, 5)[..., None] > 0, "scores": [0.5], "class_ids": [1]}
    out = merge_instances([r, r], min_runs=2)
    assert out["masks"].sum() == 25
    with pytest.raises(ValueError, match="different image sizes"):
        merge_instances([r, {"masks": np.zeros((3, 3, 0), bool), "scores": [], "class_ids": []}])
    with pytest.raises(ValueError, match="min_runs"):
        merge_instances([r], min_runs=2)
    with pytest.raises(ValueError, match="runs is empty"):
        merge_instances([])


def test_float64_and_float32_soft_masks_merge_alike():
    runs32 = [_run([_square(5, 5, 10, 0.9), _square(20, 20, 8, 0.7)], [0.9, 0.6]),
              _run([_square(5, 6, 10, 0.8)], [0.8])]
    runs64 = [dict(r, soft_masks=r["soft_masks"].astype(np.float64)) for r in runs32]
    a, b = merge_instances(runs32, min_runs=1), merge_instances(runs64, min_runs=1)
    for key in ("rois", "class_ids", "scores", "masks", "soft_masks", "n_runs"):
        np.testing.assert_allclose(a[key], b[key], err_msg=key)
    assert a["n_runs"].tolist() == [2, 1]
    # the merged soft mask is the mean of the two runs where both saw the nucleus
    assert np.isclose(a["soft_masks"][10, 10, 0], 0.85)
    assert np.isclose(a["soft_masks"][10, 5, 0], 0.45)    # only run 0 covers column 5: 0.9 / 2
