"""Metrics against brute-force loop implementations written here, plus hand-made cases."""

import itertools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from mrcnn_nuclei import metrics as M

SEEDS = range(20)
THRESHOLDS = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


# --------------------------------------------------------------------------- random images
def random_label(rng, size=64, n=10):
    """Label image with ~n ellipses painted in order (later ones cover earlier ones)."""
    yy, xx = np.mgrid[:size, :size]
    label = np.zeros((size, size), np.int32)
    for k in range(n):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(3, 9, 2)
        label[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = k + 1
    return label


def perturb(rng, gt):
    """A plausible prediction: shifted, some nuclei dropped, extra blobs, ids shuffled."""
    dy, dx = rng.integers(-2, 3, 2)
    pred = np.roll(gt, (dy, dx), axis=(0, 1))
    ids = np.unique(pred)[1:]
    drop = rng.random(ids.size) < 0.2
    pred[np.isin(pred, ids[drop])] = 0
    extra = random_label(rng, gt.shape[0], 3)
    pred = np.where((extra > 0) & (pred == 0), extra + 100, pred)
    new_ids = rng.permutation(500)[:pred.max() + 1] + 1
    new_ids[0] = 0
    return new_ids[pred]


def pairs(seed):
    rng = np.random.default_rng(seed)
    gt = random_label(rng, 64, int(rng.integers(6, 14)))
    return gt, perturb(rng, gt)


# --------------------------------------------------------------------------- brute force
def bf_ious(gt, pred):
    """Dict-free loops: ids and IoU / intersection / union matrices, pixel-wise per pair."""
    g_ids = [v for v in np.unique(gt) if v != 0]
    p_ids = [v for v in np.unique(pred) if v != 0]
    iou = np.zeros((len(g_ids), len(p_ids)))
    inter = np.zeros_like(iou)
    union = np.zeros_like(iou)
    for i, g in enumerate(g_ids):
        gm = gt == g
        for j, p in enumerate(p_ids):
            pm = pred == p
            inter[i, j] = np.logical_and(gm, pm).sum()
            union[i, j] = np.logical_or(gm, pm).sum()
            iou[i, j] = inter[i, j] / union[i, j]
    g_area = [int((gt == g).sum()) for g in g_ids]
    p_area = [int((pred == p).sum()) for p in p_ids]
    return iou, inter, union, g_area, p_area


def bf_match(iou, t):
    out = []
    for i in range(iou.shape[0]):
        for j in range(iou.shape[1]):
            if iou[i, j] > t:
                out.append((i, j, iou[i, j]))
    return out


def bf_dsb(gt, pred):
    iou, *_ = bf_ious(gt, pred)
    ng, np_ = iou.shape
    if ng == 0 and np_ == 0:
        return 1.0
    scores = []
    for t in THRESHOLDS:
        tp = len(bf_match(iou, t))
        scores.append(tp / (tp + (np_ - tp) + (ng - tp)))
    return sum(scores) / len(scores)


def bf_aji(gt, pred):
    iou, inter, union, g_area, p_area = bf_ious(gt, pred)
    c = u = 0.0
    used = set()
    for i in range(iou.shape[0]):
        best, bj = 0.0, None
        for j in range(iou.shape[1]):
            if iou[i, j] > best:
                best, bj = iou[i, j], j
        if bj is None:
            u += g_area[i]
        else:
            c += inter[i, bj]
            u += union[i, bj]
            used.add(bj)
    for j in range(iou.shape[1]):
        if j not in used:
            u += p_area[j]
    return c / u


def bf_aji_plus(gt, pred):
    iou, inter, union, g_area, p_area = bf_ious(gt, pred)
    rows, cols = linear_sum_assignment(-iou)
    c = u = 0.0
    gl, pl = set(range(iou.shape[0])), set(range(iou.shape[1]))
    for i, j in zip(rows, cols):
        if iou[i, j] > 0:
            c += inter[i, j]
            u += union[i, j]
            gl.discard(i)
            pl.discard(j)
    u += sum(g_area[i] for i in gl) + sum(p_area[j] for j in pl)
    return c / u


def bf_pq(gt, pred):
    iou, *_ = bf_ious(gt, pred)
    m = bf_match(iou, 0.5)
    tp = len(m)
    fp, fn = iou.shape[1] - tp, iou.shape[0] - tp
    dq = tp / (tp + fp / 2 + fn / 2)
    sq = sum(v for *_, v in m) / tp if tp else 0.0
    return dq * sq, dq, sq


def bf_dice(gt, pred):
    a = b = both = 0
    for y in range(gt.shape[0]):
        for x in range(gt.shape[1]):
            a += gt[y, x] > 0
            b += pred[y, x] > 0
            both += (gt[y, x] > 0) and (pred[y, x] > 0)
    return 2 * both / (a + b)


# --------------------------------------------------------------------------- random-image tests
@pytest.mark.parametrize("seed", SEEDS)
def test_against_brute_force(seed):
    gt, pred = pairs(seed)
    iou, *_ = bf_ious(gt, pred)
    assert M.dsb_score(gt, pred) == pytest.approx(bf_dsb(gt, pred), abs=1e-12)
    assert M.aji(gt, pred) == pytest.approx(bf_aji(gt, pred), abs=1e-12)
    assert M.aji_plus(gt, pred) == pytest.approx(bf_aji_plus(gt, pred), abs=1e-12)
    assert M.panoptic_quality(gt, pred) == pytest.approx(bf_pq(gt, pred), abs=1e-12)
    assert M.dice(gt, pred) == pytest.approx(bf_dice(gt, pred), abs=1e-12)
    m = bf_match(iou, 0.5)
    expect_miou = np.mean([v for *_, v in m]) if m else np.nan
    assert M.matched_mean_iou(gt, pred) == pytest.approx(expect_miou, abs=1e-12, nan_ok=True)
    f1 = 2 * len(m) / (iou.shape[0] + iou.shape[1])
    assert M.f1_detection(gt, pred) == pytest.approx(f1, abs=1e-12)
    # the contingency IoU matrix itself
    c = M.Contingency(gt, pred)
    np.testing.assert_allclose(c.iou, iou, atol=1e-12)
    # evaluate_all agrees with the single functions
    allm = M.evaluate_all(gt, pred)
    assert allm["dsb"] == pytest.approx(bf_dsb(gt, pred))
    assert allm["aji_plus"] == pytest.approx(bf_aji_plus(gt, pred))
    assert allm["tp"] == len(m) and allm["n_gt"] == iou.shape[0] and allm["n_pred"] == iou.shape[1]


@pytest.mark.parametrize("seed", range(5))
def test_low_threshold_matching_is_optimal_assignment(seed):
    """Below IoU 0.5 matching is the one-to-one pairing of maximal summed IoU (by enumeration)."""
    rng = np.random.default_rng(100 + seed)
    gt = random_label(rng, 40, 5)
    pred = np.roll(gt, (3, 3), axis=(0, 1))
    iou, *_ = bf_ious(gt, pred)
    gi, pi, v = M.Contingency(gt, pred).match(0.0)
    ng, np_ = iou.shape
    best = 0.0
    small, large = (ng, np_) if ng <= np_ else (np_, ng)
    for perm in itertools.permutations(range(large), small):
        total = sum(iou[i, j] if ng <= np_ else iou[j, i] for i, j in enumerate(perm))
        best = max(best, total)
    assert v.sum() == pytest.approx(best)
    assert len(set(gi)) == gi.size and len(set(pi)) == pi.size


def test_aji_reuses_a_prediction_but_aji_plus_does_not():
    gt = np.zeros((10, 20), np.int32)
    gt[2:8, 2:9] = 1
    gt[2:8, 11:18] = 2
    pred = np.zeros_like(gt)
    pred[2:8, 2:18] = 5  # one prediction covering both nuclei
    a1, a2 = 42, 42
    # AJI: both nuclei pick pred 5 -> C = 84, U = 2 * 96 (the merged area counted twice)
    assert M.aji(gt, pred) == pytest.approx((a1 + a2) / (2 * 96))
    # AJI+: one nucleus pairs with pred 5, the other is unmatched -> C = 42, U = 96 + 42
    assert M.aji_plus(gt, pred) == pytest.approx(42 / (96 + 42))


@pytest.mark.parametrize("seed", range(10))
def test_aji_plus_against_enumerated_pairings(seed):
    """AJI+ with the one-to-one pairing of maximal summed IoU found by enumerating all pairings."""
    rng = np.random.default_rng(500 + seed)
    gt = random_label(rng, 40, 5)
    pred = perturb(rng, gt)
    # merge the predictions covering two nuclei: AJI would reuse it, AJI+ pairs it only once
    under = [np.bincount(pred[(gt == g) & (pred > 0)]).argmax() for g in np.unique(gt)[1:]
             if ((gt == g) & (pred > 0)).any()]
    pred[pred == under[1]] = under[0]
    iou, inter, union, g_area, p_area = bf_ious(gt, pred)
    ng, np_ = iou.shape
    best, best_pairs = -1.0, []
    rows, cols = (range(ng), range(np_)) if ng <= np_ else (range(np_), range(ng))
    for perm in itertools.permutations(cols, len(rows)):
        pairs_ = [(i, j) if ng <= np_ else (j, i) for i, j in zip(rows, perm)]
        total = sum(iou[i, j] for i, j in pairs_)
        if total > best + 1e-12:
            best, best_pairs = total, pairs_
    kept = [(i, j) for i, j in best_pairs if iou[i, j] > 0]
    c = sum(inter[i, j] for i, j in kept)
    u = sum(union[i, j] for i, j in kept)
    u += sum(g_area[i] for i in range(ng) if i not in {i for i, _ in kept})
    u += sum(p_area[j] for j in range(np_) if j not in {j for _, j in kept})
    assert M.aji_plus(gt, pred) == pytest.approx(c / u, abs=1e-12)


# --------------------------------------------------------------------------- hand-made cases
def four_squares():
    gt = np.zeros((40, 40), np.int32)
    for k, (y, x) in enumerate([(2, 2), (2, 22), (22, 2), (22, 22)]):
        gt[y:y + 10, x:x + 10] = k + 1
    return gt


def test_identical_scores_one():
    gt = four_squares()
    pred = gt * 7  # different ids, same instances
    r = M.evaluate_all(gt, pred)
    for key in ("dsb", "aji", "aji_plus", "pq", "dq", "sq", "dice", "matched_iou", "f1"):
        assert r[key] == pytest.approx(1.0), key
    assert M.coco_mask_ap([gt], [pred])["AP"] == pytest.approx(1.0)


def test_one_missing_and_one_extra():
    gt = four_squares()
    pred = np.where(gt == 4, 0, gt)
    assert M.dsb_score(gt, pred) == pytest.approx(3 / 4)
    assert M.f1_detection(gt, pred) == pytest.approx(6 / 7)
    assert M.panoptic_quality(gt, pred) == pytest.approx((6 / 7, 6 / 7, 1.0))
    assert M.aji(gt, pred) == pytest.approx(300 / 400)
    assert M.dice(gt, pred) == pytest.approx(600 / 700)
    # the same pair swapped: an extra prediction
    assert M.dsb_score(pred, gt) == pytest.approx(3 / 4)
    assert M.aji(pred, gt) == pytest.approx(300 / 400)
    r = M.evaluate_all(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (3, 1, 0)
    assert M.panoptic_quality(pred, gt) == pytest.approx((6 / 7, 6 / 7, 1.0))
    assert M.f1_detection(pred, gt) == pytest.approx(6 / 7)
    assert M.aji_plus(gt, pred) == pytest.approx(300 / 400)
    assert M.aji_plus(pred, gt) == pytest.approx(300 / 400)
    assert M.matched_mean_iou(pred, gt) == pytest.approx(1.0)


def test_shifted_masks_known_iou():
    gt = np.zeros((30, 30), np.int32)
    gt[5:15, 5:15] = 1
    pred = np.roll(gt, 2, axis=1)  # IoU = 80 / 120 = 2/3
    assert M.matched_mean_iou(gt, pred) == pytest.approx(2 / 3)
    assert M.dsb_score(gt, pred) == pytest.approx(4 / 10)  # t = .50 .55 .60 .65 pass
    assert M.panoptic_quality(gt, pred) == pytest.approx((2 / 3, 1.0, 2 / 3))
    assert M.aji(gt, pred) == pytest.approx(2 / 3)
    assert M.dice(gt, pred) == pytest.approx(160 / 200)
    pred4 = np.roll(gt, 4, axis=1)  # IoU = 60 / 140 < 0.5: no match
    assert M.dsb_score(gt, pred4) == 0.0
    assert M.panoptic_quality(gt, pred4) == (0.0, 0.0, 0.0)
    assert np.isnan(M.matched_mean_iou(gt, pred4))
    assert M.aji(gt, pred4) == pytest.approx(60 / 140)


def test_empty_cases():
    gt = four_squares()
    empty = np.zeros_like(gt)
    for a, b in ((gt, empty), (empty, gt)):
        assert M.dsb_score(a, b) == 0.0
        assert M.aji(a, b) == 0.0 and M.aji_plus(a, b) == 0.0
        assert M.panoptic_quality(a, b) == (0.0, 0.0, 0.0)
        assert M.dice(a, b) == 0.0 and M.f1_detection(a, b) == 0.0
    assert M.dsb_score(empty, empty) == 1.0
    assert M.dice(empty, empty) == 1.0
    assert M.aji(empty, empty) == 1.0 and M.aji_plus(empty, empty) == 1.0
    assert M.f1_detection(empty, empty) == 1.0
    assert np.isnan(M.matched_mean_iou(empty, empty))
    assert np.isnan(M.matched_mean_iou(gt, empty)) and np.isnan(M.matched_mean_iou(empty, gt))
    assert M.panoptic_quality(empty, empty) == (1.0, 1.0, 1.0)  # perfect, as DSB / AJI / F1
    assert M.coco_mask_ap([gt], [empty])["AP"] == 0.0
    assert np.isnan(M.coco_mask_ap([empty], [gt])["AP"])
    assert M.dsb_score_dataset([gt, empty], [gt, empty]) == 1.0
    assert M.dsb_score_dataset([gt, gt], [gt, empty]) == 0.5


def test_stack_input_and_to_label():
    gt = four_squares()
    stack = np.stack([gt == k for k in (1, 2, 3, 4)], axis=-1)
    np.testing.assert_array_equal(M.to_label(stack), gt)
    assert M.dsb_score(stack, gt) == 1.0
    over = np.zeros((5, 5, 2), bool)
    over[1:4, 1:4, 0] = True
    over[2:5, 2:5, 1] = True
    lab = M.to_label(over)
    # the package's one overlap rule (masks_to_label): the earlier channel wins
    assert lab[2, 2] == 1 and lab[1, 1] == 1 and lab[4, 4] == 2
    assert M.to_label(np.zeros((4, 4, 0), bool)).sum() == 0


def bf_first_wins(stack):
    """Pixel loop: each pixel to the first channel covering it (id = channel + 1)."""
    h, w, n = stack.shape
    out = np.zeros((h, w), np.int64)
    for y in range(h):
        for x in range(w):
            for k in range(n):
                if stack[y, x, k]:
                    out[y, x] = k + 1
                    break
    return out


def overlapping_stack(rng, size=48, n=9):
    """Random ellipse masks that overlap each other, as a stack [size, size, n] bool."""
    yy, xx = np.mgrid[:size, :size]
    stack = np.zeros((size, size, n), bool)
    for k in range(n):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(4, 12, 2)
        stack[..., k] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return stack


@pytest.mark.parametrize("seed", range(4))
def test_scoring_a_stack_equals_scoring_its_label_image(seed):
    """Every stack -> label conversion (metrics, postprocess, U-Net targets) follows one rule,
    so each metric scores an overlapping stack and its label image alike."""
    from mrcnn_nuclei import postprocess, unet

    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    gt = random_label(rng, 48, 8)
    # dilated ground-truth nuclei (they overlap their neighbours) and random overlapping blobs
    grown = [ndi.binary_dilation(gt == v, iterations=2) for v in np.unique(gt)[1:]]
    stack = np.concatenate([np.stack(grown, -1), overlapping_stack(rng, n=4)], axis=-1)
    stack = stack[..., rng.permutation(stack.shape[-1])]
    assert (stack.sum(-1) > 1).sum() > 20  # the masks really overlap
    expected = bf_first_wins(stack)
    np.testing.assert_array_equal(M.to_label(stack), expected)
    for label in (M.masks_to_label(stack), postprocess.masks_to_label(stack),
                  unet.masks_to_labels(stack)):
        np.testing.assert_array_equal(label, expected)
    scores = M.evaluate_all(gt, stack)
    assert scores["tp"] > 0  # a non-trivial comparison
    np.testing.assert_equal(scores, M.evaluate_all(gt, postprocess.masks_to_label(stack)))
    np.testing.assert_equal(M.evaluate_all(stack, gt),
                            M.evaluate_all(unet.masks_to_labels(stack), gt))


def test_stack_and_label_agree_on_hand_made_overlap():
    """A prediction that repeats a nucleus exactly, then a larger mask over it: the earlier
    (exact) mask keeps the nucleus in the stack and in its label image."""
    from mrcnn_nuclei import postprocess

    gt = np.zeros((8, 8), np.int32)
    gt[1:4, 1:4] = 1
    stack = np.zeros((8, 8, 2), bool)
    stack[1:4, 1:4, 0] = True
    stack[0:6, 0:6, 1] = True
    label = postprocess.masks_to_label(stack)
    assert M.dsb_score(gt, stack) == M.dsb_score(gt, label)
    assert M.matched_mean_iou(gt, stack) == M.matched_mean_iou(gt, label) == 1.0


def test_bad_input_errors():
    gt = four_squares()
    with pytest.raises(ValueError, match="same image"):
        M.dsb_score(gt, gt[:-1])
    with pytest.raises(TypeError, match="integer dtype"):
        M.aji(gt.astype(np.float32), gt)
    with pytest.raises(ValueError, match=">= 0"):
        M.panoptic_quality(gt, -gt)
    with pytest.raises(TypeError, match="foreground mask"):
        M.aji(gt > 0, gt)
    assert M.dice(gt > 0, gt) == 1.0  # dice alone takes bool foregrounds
    with pytest.raises(ValueError, match="label image"):
        M.dice(gt[None, None], gt)
    with pytest.raises(ValueError, match="scores"):
        M.coco_mask_ap([gt], [gt], scores=[[1.0]])
    with pytest.raises(TypeError, match="bool or 0/1"):
        M.coco_mask_ap([gt], [np.full(gt.shape + (2,), 0.7)])
    with pytest.raises(TypeError, match="0/1"):
        M.to_label(np.full((4, 4, 2), 0.7))


# --------------------------------------------------------------------------- COCO AP
def test_coco_ap_matches_cocoeval_run_directly():
    from pycocotools import mask as mu
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(7)
    gts, preds, scores = [], [], []
    for s in range(6):
        gt, pred = pairs(200 + s)
        gts.append(gt)
        preds.append(pred)
        scores.append(rng.random(len(np.unique(pred)) - 1))
    ours = M.coco_mask_ap(gts, preds, scores, max_dets=(1, 10, 100))

    images, anns, dets = [], [], []
    for i, (g, p, sc) in enumerate(zip(gts, preds, scores)):
        images.append({"id": i + 1, "height": 64, "width": 64})
        for v in np.unique(g)[1:]:
            rle = mu.encode(np.asfortranarray((g == v).astype(np.uint8)))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1,
                         "segmentation": rle, "area": float(mu.area(rle)),
                         "bbox": list(mu.toBbox(rle)), "iscrowd": 0})
        for v, score in zip(np.unique(p)[1:], sc):
            rle = mu.encode(np.asfortranarray((p == v).astype(np.uint8)))
            dets.append({"image_id": i + 1, "category_id": 1, "segmentation": rle,
                         "score": float(score)})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1}]}
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(dets), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ours["AP"] == pytest.approx(ev.stats[0], abs=1e-12)
    assert ours["AP50"] == pytest.approx(ev.stats[1], abs=1e-12)
    assert ours["AP75"] == pytest.approx(ev.stats[2], abs=1e-12)
    assert 0.05 < ours["AP"] < 0.95  # a non-trivial case


def cocoeval_direct(gts, preds, scores, max_dets):
    """AP, AP50, AP75 from pycocotools' COCOeval on label images or (overlapping) bool stacks."""
    from pycocotools import mask as mu
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def instances(x):
        if x.ndim == 3:
            return [x[..., k] for k in range(x.shape[-1])]
        return [x == v for v in np.unique(x)[1:]]

    images, anns, dets = [], [], []
    for i, (g, p, sc) in enumerate(zip(gts, preds, scores)):
        images.append({"id": i + 1, "height": g.shape[0], "width": g.shape[1]})
        for m in instances(g):
            rle = mu.encode(np.asfortranarray(m.astype(np.uint8)))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1,
                         "segmentation": rle, "area": float(mu.area(rle)),
                         "bbox": list(mu.toBbox(rle)), "iscrowd": 0})
        for m, score in zip(instances(p), sc):
            rle = mu.encode(np.asfortranarray(m.astype(np.uint8)))
            dets.append({"image_id": i + 1, "category_id": 1, "segmentation": rle,
                         "score": float(score)})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1}]}
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(dets), "segm")
    ev.params.maxDets = list(max_dets)
    ev.evaluate()
    ev.accumulate()
    if max(max_dets) == 100:  # summarize() reports at maxDets=100 only
        ev.summarize()
        return ev.stats[:3]
    prec = ev.eval["precision"][:, :, 0, 0, -1]  # [T, R] at area "all", the largest maxDets
    return [float(np.mean(p[p > -1])) for p in (prec, prec[0], prec[5])]


@pytest.mark.parametrize("seed", range(8))
def test_coco_ap_both_backends_match_cocoeval_run_directly(seed):
    """Many seeds: label images, overlapping duplicate stacks, tied scores, an empty image."""
    rng = np.random.default_rng(1000 + seed)
    gts, preds, scores = [], [], []
    for s in range(4):
        gt, pred = pairs(700 + 10 * seed + s)
        ids = np.unique(pred)[1:]
        if s % 2:  # a stack with shifted duplicates of some predictions (overlapping masks)
            stack = np.stack([pred == v for v in ids], axis=-1)
            dup = np.roll(stack[..., : max(1, ids.size // 3)], 1 + seed % 3, axis=0)
            pred = np.concatenate([stack, dup], axis=-1)
        n = pred.shape[-1] if pred.ndim == 3 else ids.size
        sc = rng.choice([0.2, 0.5, 0.8], n) if seed % 2 else rng.random(n)
        gts.append(gt)
        preds.append(pred)
        scores.append(sc)
    gts.append(np.zeros((64, 64), np.int32))  # no nuclei: its detections are false positives
    preds.append(pairs(900 + seed)[1])
    scores.append(rng.random(len(np.unique(preds[-1])) - 1))
    for md in ((1, 10, 6), (1, 10, 100)):  # 6: COCOeval keeps the 6 best detections per image
        expect = cocoeval_direct(gts, preds, scores, md)
        for backend in ("pycocotools", "numpy"):
            ours = M.coco_mask_ap(gts, preds, scores, max_dets=md, backend=backend)
            got = (ours["AP"], ours["AP50"], ours["AP75"])
            assert got == pytest.approx(tuple(expect), abs=1e-12), (backend, md)
    assert 0.01 < expect[0] < 0.95 and 0.1 < expect[1] < 1.0  # non-trivial


def test_coco_ap_stack_input_equals_label_input():
    gt, pred = pairs(3)
    ids = np.unique(pred)[1:]
    stack = np.stack([pred == v for v in ids], axis=-1)
    s = np.linspace(1, 0.1, ids.size)
    assert M.coco_mask_ap([gt], [stack], [s]) == M.coco_mask_ap([gt], [pred], [s])


# --------------------------------------------------------------------------- Matterport API
def bf_compute_ap(gt_masks, gt_cls, pred_masks, pred_cls, scores, thr):
    """Matterport's greedy matching and VOC AP, written as plain loops."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    ng = gt_masks.shape[-1]
    gt_used = [False] * ng
    hits = []
    for i in order:
        pm = pred_masks[..., i]
        ious = []
        for j in range(ng):
            gm = gt_masks[..., j]
            ious.append((pm & gm).sum() / (pm | gm).sum())
        matched = False
        for j in sorted(range(ng), key=lambda j: -ious[j]):
            if gt_used[j]:
                continue
            if ious[j] < thr:
                break
            if pred_cls[i] == gt_cls[j]:
                gt_used[j] = matched = True
                break
        hits.append(matched)
    tp = 0
    prec, rec = [0.0], [0.0]
    for k, h in enumerate(hits):
        tp += h
        prec.append(tp / (k + 1))
        rec.append(tp / ng)
    prec.append(0.0)
    rec.append(1.0)
    for k in range(len(prec) - 2, -1, -1):
        prec[k] = max(prec[k], prec[k + 1])
    ap = 0.0
    for k in range(1, len(rec)):
        if rec[k] != rec[k - 1]:
            ap += (rec[k] - rec[k - 1]) * prec[k]
    return ap


def boxes_of(masks):
    out = []
    for k in range(masks.shape[-1]):
        ys, xs = np.nonzero(masks[..., k])
        out.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
    return np.array(out).reshape(-1, 4)


@pytest.mark.parametrize("seed", range(8))
def test_compute_ap_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    gt, pred = pairs(seed)
    gm = np.stack([gt == v for v in np.unique(gt)[1:]], axis=-1)
    pm = np.stack([pred == v for v in np.unique(pred)[1:]], axis=-1)
    gc = rng.integers(1, 3, gm.shape[-1])
    pc = rng.integers(1, 3, pm.shape[-1]) if seed % 2 else np.ones(pm.shape[-1], int)
    gc = gc if seed % 2 else np.ones(gm.shape[-1], int)
    sc = rng.random(pm.shape[-1])
    for thr in (0.5, 0.75):
        ap, precisions, recalls, overlaps = M.compute_ap(
            boxes_of(gm), gc, gm, boxes_of(pm), pc, sc, pm, iou_threshold=thr)
        assert ap == pytest.approx(bf_compute_ap(gm, gc, pm, pc, sc, thr), abs=1e-6)
        assert overlaps.shape == (pm.shape[-1], gm.shape[-1])
        assert precisions.shape == recalls.shape == (pm.shape[-1] + 2,)
    rng_ap = M.compute_ap_range(boxes_of(gm), gc, gm, boxes_of(pm), pc, sc, pm, verbose=0)
    expect = np.mean([bf_compute_ap(gm, gc, pm, pc, sc, t) for t in np.arange(0.5, 1.0, 0.05)])
    assert rng_ap == pytest.approx(expect, abs=1e-6)


def test_compute_ap_drops_zero_padding_and_perfect_case():
    gt = four_squares()
    gm = np.stack([gt == k for k in (1, 2, 3, 4)], axis=-1)
    boxes = boxes_of(gm)
    padded_boxes = np.concatenate([boxes, np.zeros((2, 4), int)])
    padded_masks = np.concatenate([gm, np.zeros((40, 40, 2), bool)], axis=-1)
    ap, *_ = M.compute_ap(padded_boxes, [1, 1, 1, 1, 0, 0], padded_masks, boxes, [1] * 4,
                          [0.9, 0.8, 0.7, 0.6], gm)
    assert ap == pytest.approx(1.0)


def test_compute_recall():
    gt_boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    pred = np.array([[0, 0, 10, 10], [0, 1, 10, 11], [20, 25, 30, 35], [60, 60, 70, 70]])
    recall, pos = M.compute_recall(pred, gt_boxes, 0.5)
    # pred 0 (IoU 1), pred 1 (IoU 90/110) hit gt 0; pred 2 has IoU 50/150 with gt 1
    assert recall == pytest.approx(1 / 3)
    np.testing.assert_array_equal(pos, [0, 1])


def test_compute_overlaps_masks_brute_force():
    gt, pred = pairs(11)
    gm = np.stack([gt == v for v in np.unique(gt)[1:]], axis=-1)
    pm = np.stack([pred == v for v in np.unique(pred)[1:]], axis=-1)
    iou, *_ = bf_ious(gt, pred)
    np.testing.assert_allclose(M.compute_overlaps_masks(gm, pm), iou, atol=1e-12)
    assert M.compute_overlaps_masks(gm, pm[..., :0]).shape == (gm.shape[-1], 0)


# --------------------------------------------------------------------------- PanNuke
def bf_pannuke(per_image_pqs, tissues):
    groups = {}
    for v, t in zip(per_image_pqs, tissues):
        groups.setdefault(t, []).append(v)
    per_t = {}
    for t, vals in groups.items():
        vals = [v for v in vals if not np.isnan(v)]
        per_t[t] = sum(vals) / len(vals) if vals else np.nan
    vals = [v for v in per_t.values() if not np.isnan(v)]
    return sum(vals) / len(vals), per_t


def typed_pair(seed, n_classes=5):
    """PanNuke-like stacks [H, W, 6]: channel c holds the instances of class c + 1."""
    rng = np.random.default_rng(seed)
    gt, pred = pairs(seed)
    g_cls = rng.integers(1, n_classes + 1, gt.max() + 1)
    p_cls = g_cls.copy() if pred.max() <= gt.max() else rng.integers(1, n_classes + 1,
                                                                       pred.max() + 1)
    flip = rng.random(p_cls.size) < 0.2
    p_cls[flip] = rng.integers(1, n_classes + 1, flip.sum())
    gs = np.zeros(gt.shape + (6,), np.int32)
    ps = np.zeros(pred.shape + (6,), np.int32)
    for c in range(n_classes):
        gs[..., c] = np.where((gt > 0) & (g_cls[gt] == c + 1), gt, 0)
        ps[..., c] = np.where((pred > 0) & (p_cls[pred] == c + 1), pred, 0)
    gs[..., 5] = gt == 0
    ps[..., 5] = pred == 0
    return gs, ps


def test_pannuke_mpq_and_bpq_against_brute_force():
    tissues = ["Breast", "Colon", "Breast", "Lung", "Colon", "Lung", "Lung"]
    gts, preds, m_img, b_img = [], [], [], []
    for s, _ in enumerate(tissues):
        gs, ps = typed_pair(300 + s)
        if s == 6:
            gs[..., :5] = 0  # empty ground truth: skipped by both metrics
        gts.append(gs)
        preds.append(ps)
        pqs = []
        for c in range(5):
            if gs[..., c].max() == 0:
                pqs.append(np.nan)
            else:
                pqs.append(bf_pq(gs[..., c], ps[..., c])[0])
        valid = [v for v in pqs if not np.isnan(v)]
        m_img.append(sum(valid) / len(valid) if valid else np.nan)
        gb = np.zeros(gs.shape[:2], int)
        pb = np.zeros(gs.shape[:2], int)
        for c in range(5):  # later channels overwrite earlier ones, ids kept unique
            gb = np.where(gs[..., c] > 0, gs[..., c] + 1000 * (c + 1), gb)
            pb = np.where(ps[..., c] > 0, ps[..., c] + 1000 * (c + 1), pb)
        b_img.append(bf_pq(gb, pb)[0] if gb.max() else np.nan)
    mpq, per_t = M.pannuke_mpq(gts, preds, tissues)
    exp_m, exp_t = bf_pannuke(m_img, tissues)
    assert mpq == pytest.approx(exp_m)
    assert per_t == pytest.approx(exp_t)
    bpq, per_tb = M.pannuke_bpq(gts, preds, tissues)
    exp_b, exp_tb = bf_pannuke(b_img, tissues)
    assert bpq == pytest.approx(exp_b)
    assert per_tb == pytest.approx(exp_tb)
    assert 0.0 < mpq < bpq < 1.0  # random prediction classes: mPQ well below bPQ


def bf_pannuke_images(gts, preds):
    """Per-image mPQ (nan-mean over classes present in the ground truth) and bPQ, by loops."""
    m_img, b_img = [], []
    for gs, ps in zip(gts, preds):
        pqs = [bf_pq(gs[..., c], ps[..., c])[0] if gs[..., c].max() else np.nan
               for c in range(5)]
        valid = [v for v in pqs if not np.isnan(v)]
        m_img.append(sum(valid) / len(valid) if valid else np.nan)
        gb = np.zeros(gs.shape[:2], int)
        pb = np.zeros(gs.shape[:2], int)
        for c in range(5):
            gb = np.where(gs[..., c] > 0, gs[..., c] + 1000 * (c + 1), gb)
            pb = np.where(ps[..., c] > 0, ps[..., c] + 1000 * (c + 1), pb)
        b_img.append(bf_pq(gb, pb)[0] if gb.max() else np.nan)
    return m_img, b_img


@pytest.mark.parametrize("seed", range(6))
def test_pannuke_against_brute_force_many_seeds(seed):
    """Random tissues; some classes absent from the ground truth, some never predicted."""
    rng = np.random.default_rng(seed)
    n = 8
    tissues = [str(t) for t in rng.choice(["Breast", "Colon", "Lung", "Kidney"], n)]
    gts, preds = [], []
    for s in range(n):
        gs, ps = typed_pair(400 + 20 * seed + s)
        gone = rng.integers(0, 5)
        gs[..., gone] = 0          # a class absent from this ground truth: skipped (nan)
        ps[..., (gone + 1) % 5] = 0  # a class present but not predicted: PQ 0
        if s == 0 and seed % 2:
            gs[..., :5] = 0        # an image without nuclei: skipped by both
        gts.append(gs)
        preds.append(ps)
    m_img, b_img = bf_pannuke_images(gts, preds)
    mpq, per_t = M.pannuke_mpq(gts, preds, tissues)
    exp_m, exp_t = bf_pannuke(m_img, tissues)
    assert mpq == pytest.approx(exp_m, abs=1e-12)
    assert per_t == pytest.approx(exp_t, abs=1e-12, nan_ok=True)
    bpq, per_tb = M.pannuke_bpq(gts, preds, tissues)
    exp_b, exp_tb = bf_pannuke(b_img, tissues)
    assert bpq == pytest.approx(exp_b, abs=1e-12)
    assert per_tb == pytest.approx(exp_tb, abs=1e-12, nan_ok=True)


def test_pannuke_hand_made():
    gt = four_squares()
    cls = np.where(gt > 0, np.array([0, 1, 1, 2, 3])[gt], 0)  # classes 1, 1, 2, 3
    wrong = np.where(gt > 0, 5, 0)                            # every nucleus called class 5
    assert M.pannuke_bpq([gt], [gt * 3], ["A"]) == (1.0, {"A": 1.0})
    assert M.pannuke_mpq([(gt, cls)], [(gt * 3, cls)], ["A"]) == (1.0, {"A": 1.0})
    # right nuclei, wrong classes: binary PQ 1; classes 1..3 score 0, 4 and 5 absent from GT
    assert M.pannuke_bpq([(gt, cls)], [(gt, wrong)], ["A"])[0] == 1.0
    assert M.pannuke_mpq([(gt, cls)], [(gt, wrong)], ["A"])[0] == 0.0
    # one nucleus of class 1 missed: class 1 PQ = (1 / 1.5) * 1, classes 2, 3 = 1 -> mean
    missed = np.where(gt == 1, 0, gt)
    mpq = M.pannuke_mpq([(gt, cls)], [(missed, cls * (missed > 0))], ["A"])[0]
    assert mpq == pytest.approx((2 / 3 + 1 + 1) / 3)
    # tissue means: per tissue first, then over tissues (not over images)
    empty = np.zeros_like(gt)
    bpq, per_t = M.pannuke_bpq([gt, gt, missed, empty], [gt, empty, missed, gt],
                               ["A", "A", "B", "C"])
    assert per_t["A"] == 0.5 and per_t["B"] == 1.0 and np.isnan(per_t["C"])  # C: no GT
    assert bpq == pytest.approx((0.5 + 1.0) / 2)


def test_pannuke_label_class_map_pairs_equal_stacks():
    gs, ps = typed_pair(5)
    def to_pair(s):
        label = np.zeros(s.shape[:2], np.int64)
        cls = np.zeros(s.shape[:2], np.int64)
        for c in range(5):
            label = np.where(s[..., c] > 0, s[..., c] + 1000 * c, label)
            cls = np.where(s[..., c] > 0, c + 1, cls)
        return label, cls
    a = M.pannuke_mpq([gs], [ps], ["X"])
    b = M.pannuke_mpq([to_pair(gs)], [to_pair(ps)], ["X"])
    assert a[0] == pytest.approx(b[0])
    with pytest.raises(ValueError, match="one entry per image"):
        M.pannuke_mpq([gs], [ps], ["X", "Y"])


@pytest.mark.parametrize("seed", range(6))
def test_coco_numpy_backend_equals_pycocotools(seed):
    """The fast backend reproduces COCOeval, also with overlapping duplicate detections and ties."""
    rng = np.random.default_rng(seed)
    gts, preds, scores = [], [], []
    for s in range(4):
        gt, pred = pairs(50 * seed + s)
        ids = np.unique(pred)[1:]
        stack = np.stack([pred == v for v in ids], axis=-1)
        if s % 2:  # duplicates: shifted copies of some predictions (overlapping masks)
            dup = np.roll(stack[..., : max(1, ids.size // 3)], 1, axis=1)
            stack = np.concatenate([stack, dup], axis=-1)
        sc = rng.choice([0.3, 0.6, 0.9], stack.shape[-1]) if seed % 2 else rng.random(
            stack.shape[-1])
        gts.append(gt)
        preds.append(stack if s % 2 else pred)
        scores.append(sc[: ids.size] if not s % 2 else sc)
    gts.append(np.zeros((64, 64), np.int32))     # image without nuclei: its detections are FPs
    preds.append(pairs(999)[1])
    scores.append(rng.random(len(np.unique(preds[-1])) - 1))
    for md in ((1, 10, 100), (1, 10, 5)):
        a = M.coco_mask_ap(gts, preds, scores, max_dets=md)
        b = M.coco_mask_ap(gts, preds, scores, max_dets=md, backend="numpy")
        assert a == pytest.approx(b, abs=1e-12)
    with pytest.raises(ValueError, match="backend"):
        M.coco_mask_ap(gts, preds, scores, backend="torch")


def test_coco_numpy_backend_empty_cases():
    gt = four_squares()
    empty = np.zeros_like(gt)
    assert M.coco_mask_ap([gt], [empty], backend="numpy")["AP"] == 0.0
    assert np.isnan(M.coco_mask_ap([empty], [gt], backend="numpy")["AP"])
    assert M.coco_mask_ap([gt], [gt], backend="numpy")["AP"] == pytest.approx(1.0)


def test_huge_and_sparse_ids_and_match_instances():
    gt, pred = pairs(4)
    big_gt = np.where(gt > 0, gt.astype(np.int64) * 10 ** 9 + 7, 0)  # np.unique fallback path
    assert M.evaluate_all(big_gt, pred) == M.evaluate_all(gt, pred)
    lab, ids = M.relabel_sequential(big_gt)
    assert lab.max() == ids.size == len(np.unique(gt)) - 1
    np.testing.assert_array_equal(ids[lab[gt > 0] - 1], big_gt[gt > 0])
    g_ids, p_ids, ious = M.match_instances(big_gt, pred)
    iou, *_ = bf_ious(gt, pred)
    assert len(g_ids) == len(bf_match(iou, 0.5))
    for g, p, v in zip(g_ids, p_ids, ious):
        a, b = big_gt == g, pred == p
        assert v == pytest.approx((a & b).sum() / (a | b).sum()) and v > 0.5


def test_empty_vs_empty_is_perfect_in_every_score_and_every_mean():
    """An image with no nuclei and no prediction scores 1.0 in DSB, AJI, F1 and PQ alike, so a
    nan-skipping mean over a set gives every metric the same images."""
    empty = np.zeros((9, 9), np.int32)
    s = M.evaluate_all(empty, empty)
    for key in ("dsb", "aji", "aji_plus", "f1", "pq", "dq", "sq", "dice"):
        assert s[key] == 1.0, key
    gt = four_squares()
    bad = M.evaluate_all(gt, np.zeros_like(gt))
    pair = [M.evaluate_all(gt, gt), s]
    for key in ("dsb", "aji", "f1", "pq"):
        assert bad[key] == 0.0
        assert np.nanmean([p[key] for p in pair]) == 1.0, key   # no image dropped from any mean
