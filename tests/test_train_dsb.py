"""Short from-scratch run of the DSB recipe code (mrcnn_nuclei.recipes / benchmarks/train_dsb.py).

A few dozen real DSB2018 256x256 grey images, 128 px crops, ResNet-18 + GroupNorm, a fixed number
of steps: the loss must fall and the DSB score on held-out val images must rise above that of the
untrained model.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from mrcnn_nuclei.config import Config
from mrcnn_nuclei.datasets import DSBDataset
from mrcnn_nuclei.recipes import (BudgetCallback, DSBScratchConfig, config_with, format_curve,
                                  holdout_ids, inference_twin, read_image_groups,
                                  train_budgeted)

REPO = Path(__file__).resolve().parents[1]


def _ids(root, group, subset, n):
    val = set((Path(root) / "val_ids.txt").read_text().split())
    rows = [line.split("\t") for line in (Path(root) / "image_groups.tsv").read_text().splitlines()[1:]]
    ids = sorted(r[0] for r in rows if r[1] == group and (r[0] in val) == (subset == "val")
                 and 5 <= int(r[2]) <= 60)
    return ids[:n]


def test_recipe_is_a_valid_config_with_matterport_defaults_untouched():
    c = DSBScratchConfig()
    assert (c.BACKBONE, c.NORM, c.IMAGE_RESIZE_MODE, c.IMAGE_MIN_SCALE) == ("resnet18", "gn",
                                                                             "crop", 2.0)
    assert list(c.IMAGE_SHAPE) == [256, 256, 3]
    assert (c.MASK_HEAD_CHANNELS, c.IMAGE_INVERT_BRIGHT, c.WEIGHTS_EMA) == (128, 127, 0.99)
    assert (Config.MASK_HEAD_CHANNELS, Config.IMAGE_INVERT_BRIGHT, Config.WEIGHTS_EMA) == \
        (256, None, 0.0)
    assert Config.NORM == "bn" and Config.BACKBONE == "resnet101"
    inf = inference_twin(config_with(DSBScratchConfig, TOP_DOWN_PYRAMID_SIZE=64))
    assert inf.IMAGE_RESIZE_MODE == "pad64" and inf.BATCH_SIZE == 1
    assert inf.TOP_DOWN_PYRAMID_SIZE == 64 and inf.IMAGE_MIN_SCALE == 2.0
    with pytest.raises(ValueError, match="NOT_AN_OPTION"):
        config_with(DSBScratchConfig, NOT_AN_OPTION=1)


def test_budget_callback_excludes_evaluation_time_and_stops():
    class FakeClock:  # seconds, advanced by hand: exact and independent of machine load
        now = 1000.0

        def __call__(self):
            return self.now

    class FakeModel:
        stop_training = False

    clock = FakeClock()
    calls = []

    def evaluate():
        clock.now += 100.0  # evaluation must not eat the training budget
        calls.append(1)
        return {"dsb": 0.5}

    cb = BudgetCallback(minutes=1, eval_at=[0.25], evaluate=evaluate, verbose=0, clock=clock)
    cb.set_model(FakeModel())
    cb.on_train_begin()
    steps = 0
    while not cb.model.stop_training and steps < 10000:
        cb.on_train_batch_begin(steps)
        clock.now += 0.5  # one training step: 0.5 s (exact in binary floating point)
        cb.on_train_batch_end(steps, {"loss": 1.0})
        steps += 1
    assert cb.model.stop_training and len(calls) == 2
    assert steps == 120 and cb.steps == 120  # 1 min of training = 120 steps of 0.5 s
    assert cb.trained == 60.0 and cb.fraction() == 1.0  # the 200 s of evaluation are excluded
    assert cb.eval_seconds == 200.0
    assert [row["dsb"] for row in cb.curve] == [0.5, 0.5]
    assert [row["minutes"] for row in cb.curve] == [0.25, 1.0]
    assert [row["steps"] for row in cb.curve] == [30, 120]
    assert [row["eval_seconds"] for row in cb.curve] == [100.0, 100.0]
    assert "dsb" in format_curve(cb.curve).splitlines()[0]


def test_holdout_split_is_stratified_fixed_and_disjoint(tmp_path):
    groups = {f"a{i:02d}": "small" for i in range(30)}
    groups.update({f"b{i:02d}": "large" for i in range(10)})
    groups.update({f"c{i:02d}": "colour" for i in range(5)})
    tsv = tmp_path / "image_groups.tsv"
    tsv.write_text("image_id\tgroup\tn_masks\n"
                   + "".join(f"{k}\t{v}\t3\n" for k, v in groups.items()))
    assert read_image_groups(tsv) == groups
    ids = list(groups) + ["x"]  # one id without a group
    train, held = holdout_ids(ids, 9, read_image_groups(tsv))
    assert len(held) == 9 and sorted(train + held) == sorted(ids) and not set(train) & set(held)
    # shares 30:10:5:1 of 46 -> 5.87, 1.96, 0.98, 0.20 -> 5, 1, 0, 0 plus 3 largest remainders
    counts = {g: sum(groups.get(i, "?") == g for i in held) for g in ("small", "large", "colour")}
    assert counts == {"small": 6, "large": 2, "colour": 1}, counts
    assert holdout_ids(list(reversed(ids)), 9, groups) == (train, held)  # order-independent
    assert holdout_ids(ids, 9, groups, seed=1)[1] != held
    with pytest.raises(ValueError, match="between 1 and"):
        holdout_ids(ids, len(ids), groups)
    with open(tsv, "w") as f:
        f.write("id,group\n")
    with pytest.raises(ValueError, match="header"):
        read_image_groups(tsv)


@pytest.mark.slow
def test_short_scratch_run_learns_real_nuclei(dsb_root, tmp_path):
    train_ds = DSBDataset().load(dsb_root, ids=_ids(dsb_root, "256x256_gray", "train", 40))
    train_ds.prepare()
    val_ds = DSBDataset().load(dsb_root, ids=_ids(dsb_root, "256x256_gray", "val", 4))
    val_ds.prepare()
    config = config_with(
        DSBScratchConfig, NAME="dsb_test", IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128,
        IMAGE_MIN_SCALE=1.0, TOP_DOWN_PYRAMID_SIZE=64, GN_GROUPS=8,
        FPN_CLASSIF_FC_LAYERS_SIZE=128, STEPS_PER_EPOCH=20, POST_NMS_ROIS_TRAINING=256,
        TRAIN_ROIS_PER_IMAGE=64, RPN_TRAIN_ANCHORS_PER_IMAGE=64, LEARNING_RATE_WARMUP_STEPS=20,
        DETECTION_MIN_CONFIDENCE=0.3, WEIGHTS_EMA=0.9, SEED=0)
    model, curve = train_budgeted(config, train_ds, val_ds, minutes=20, model_dir=str(tmp_path),
                                  eval_at=[], eval_untrained=True, max_steps=150, workers=1,
                                  verbose=0)
    print("\n" + format_curve(curve))
    untrained, trained = curve[0], curve[-1]
    assert trained["steps"] == 150
    hist = model.epoch_losses  # mean loss of each 20-step epoch (noisy: ~0.3 either way)
    assert len(hist) >= 4 and all(math.isfinite(v) for v in hist)
    # measured: first two epochs ~2.93, last ~2.15-2.3; a model that does not learn stays ~2.9
    assert np.mean(hist[-2:]) < 0.85 * np.mean(hist[:2]), hist
    assert trained["dsb"] > untrained["dsb"] + 0.02, curve
    assert trained["n_pred"] > 0
    # the recipe averages its weights: the last point also scores the raw last-step weights
    raw = trained["raw_weights"]
    assert raw["n_gt"] == trained["n_gt"] and raw["dsb"] > untrained["dsb"], curve


def test_no_val_needs_a_holdout(capsys):
    """--no-val (holdout-only ablations) without --holdout would score nothing: refused."""
    with pytest.raises(SystemExit):
        _train_dsb_module().main(["--minutes", "1", "--no-val"])
    assert "--no-val needs --holdout" in capsys.readouterr().err


def _train_dsb_module():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import train_dsb
    finally:
        sys.path.pop(0)
    return train_dsb


def test_tune_needs_a_holdout(capsys):
    """--tune picks post-processing on held-out training ids; without --holdout it would have to
    pick it on val: refused."""
    with pytest.raises(SystemExit):
        _train_dsb_module().main(["--minutes", "1", "--tune"])
    assert "--tune needs --holdout" in capsys.readouterr().err


@pytest.mark.slow
def test_tune_writes_the_held_out_choice_into_the_folder_and_scores_val_with_it(dsb_root,
                                                                                 tmp_path):
    """``train_dsb.py --holdout N --tune``: one command gives the shipped folder. The sweep's
    choice (made on the held-out ids) lands in postprocess.json, and the tuned val row is what
    evaluate_dataset gives for the loaded folder with exactly that setting."""
    from mrcnn_nuclei.evaluation import evaluate_dataset
    from mrcnn_nuclei.modelfolder import PostProcess, load_model

    root = tmp_path / "dsb"  # a small DSB folder: links to 8 train and 2 val 256x256 images
    (root / "stage1_train").mkdir(parents=True)
    train = _ids(dsb_root, "256x256_gray", "train", 8)
    val = _ids(dsb_root, "256x256_gray", "val", 2)
    for i in train + val:
        (root / "stage1_train" / i).symlink_to(Path(dsb_root) / "stage1_train" / i)
    (root / "val_ids.txt").write_text("\n".join(val) + "\n")
    (root / "image_groups.tsv").write_text(
        "image_id\tgroup\tn_masks\n" + "".join(f"{i}\t256x256_gray\t10\n" for i in train + val))
    out = tmp_path / "run"
    _train_dsb_module().main([
        "--minutes", "5", "--max-steps", "4", "--eval-every", "0", "--holdout", "3", "--tune",
        "--workers", "1", "--augment", "none", "--dataset", str(root), "--out", str(out),
        "--set", "IMAGE_MIN_DIM=128", "IMAGE_MAX_DIM=128", "IMAGE_MIN_SCALE=1.0",
        "TOP_DOWN_PYRAMID_SIZE=64", "GN_GROUPS=8", "FPN_CLASSIF_FC_LAYERS_SIZE=128",
        "POST_NMS_ROIS_TRAINING=128", "TRAIN_ROIS_PER_IMAGE=32", "RPN_TRAIN_ANCHORS_PER_IMAGE=32",
        "DETECTION_MAX_INSTANCES=40", "LEARNING_RATE_WARMUP_STEPS=2"])
    import json

    saved = json.loads((out / "curve.json").read_text())
    tuned = saved["tuned"]
    sweep = json.loads((out / "model" / "diagnostics" / "holdout" / "sweep.json").read_text())
    held = (out / "holdout_ids.txt").read_text().split()
    assert sorted(sweep["image_ids"]) == sorted(held) and len(held) == 3
    assert not set(held) & set(val)
    chosen = {k: sweep["writable"][k] for k in ("mask_threshold", "score_threshold", "min_size")}
    model = load_model(str(out / "model"))
    assert {k: model.postprocess.to_dict()[k] for k in chosen} == chosen
    assert tuned["postprocess"] == model.postprocess.to_dict()
    assert tuned["holdout"]["after"] >= tuned["holdout"]["before"]
    from mrcnn_nuclei.datasets import DSBDataset

    ds = DSBDataset().load(str(root), ids=val)
    ds.prepare()
    ref = evaluate_dataset(model, ds, postprocess=PostProcess(**model.postprocess.to_dict()),
                           coco_backend="numpy", pannuke=False, verbose=0)
    assert tuned["val"]["dsb"] == pytest.approx(float(ref["means"]["dsb"]), abs=1e-12)
    # (a 4-step model detects nothing: the scores are checked with detections below)
    assert tuned["val"]["n_pred"] == int(ref["totals"]["n_pred"])


def test_tune_folder_scores_val_with_the_setting_chosen_on_the_held_out_ids(dsb_root, tmp_path):
    """train_dsb.tune_folder on a folder that detects: the sweep runs on the ids of
    holdout_ids.txt beside the folder, its choice is written, and the val row is evaluate_dataset
    of the reloaded folder."""
    import argparse
    import json

    from mrcnn_nuclei.datasets import DSBDataset
    from mrcnn_nuclei.evaluation import evaluate_dataset
    from mrcnn_nuclei.modelfolder import PostProcess, load_model, save_model
    from tiny_model import tiny_inference_model

    model = tiny_inference_model(tmp_path, seed=0, DETECTION_MIN_CONFIDENCE=0.0,
                                 DETECTION_MAX_INSTANCES=30)
    cls = model.keras_model.get_layer("mrcnn_class_logits")  # random weights: give detections
    cls.set_weights([cls.get_weights()[0], np.array([0.0, 2.0], np.float32)])
    folder = tmp_path / "run" / "model"
    save_model(model, str(folder), PostProcess())
    held = _ids(dsb_root, "256x256_gray", "train", 2)
    val = _ids(dsb_root, "256x256_gray", "val", 2)
    (tmp_path / "run" / "holdout_ids.txt").write_text("\n".join(held) + "\n")
    args = argparse.Namespace(dataset=str(dsb_root), tune_min_confidence=0.0)
    tuned = _train_dsb_module().tune_folder(str(folder), args, val)

    sweep = json.loads((folder / "diagnostics" / "holdout" / "sweep.json").read_text())
    assert sweep["image_ids"] == held
    loaded = load_model(str(folder))
    for k in ("mask_threshold", "score_threshold", "min_size"):
        assert getattr(loaded.postprocess, k) == sweep["writable"][k] == tuned["postprocess"][k]
    assert tuned["holdout"] == {"before": sweep["current"]["dsb"],
                                "after": sweep["writable"]["dsb"]}
    ds = DSBDataset().load(str(dsb_root), ids=val)
    ds.prepare()
    ref = evaluate_dataset(loaded, ds, postprocess=loaded.postprocess, coco_backend="numpy",
                           pannuke=False, verbose=0)
    assert tuned["val"]["n_pred"] == int(ref["totals"]["n_pred"]) > 0
    assert tuned["val"]["dsb"] == pytest.approx(float(ref["means"]["dsb"]), abs=1e-12)
    assert tuned["val"]["AP"] == pytest.approx(float(ref["coco"]["AP"]), abs=1e-12)
