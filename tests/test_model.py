"""MaskRCNN facade: build (names reachable), detect() on awkward inputs, detect_soft,
detect_molded, staged training with layer selection, atomic checkpoints, find_last."""

import os
import re

import numpy as np
import pytest

import mrcnn_nuclei  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
import keras
from mrcnn_nuclei.config import Config
from mrcnn_nuclei.model import LAYER_REGEX, MaskRCNN


class TinyConfig(Config):
    NAME = "tiny"
    NUM_CLASSES = 2
    BACKBONE = "resnet18"
    IMAGES_PER_GPU = 2
    IMAGE_RESIZE_MODE = "pad64"
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 128
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    POST_NMS_ROIS_INFERENCE = 64
    POST_NMS_ROIS_TRAINING = 64
    TRAIN_ROIS_PER_IMAGE = 16
    RPN_TRAIN_ANCHORS_PER_IMAGE = 32
    MAX_GT_INSTANCES = 20
    DETECTION_MAX_INSTANCES = 20
    DETECTION_MIN_CONFIDENCE = 0.0
    TOP_DOWN_PYRAMID_SIZE = 64
    FPN_CLASSIF_FC_LAYERS_SIZE = 128
    MINI_MASK_SHAPE = (28, 28)
    STEPS_PER_EPOCH = 2
    VALIDATION_STEPS = 1
    SEED = 3


class TrainConfig(TinyConfig):
    IMAGES_PER_GPU = 1
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128


@pytest.fixture(scope="module")
def infer_model(tmp_path_factory):
    return MaskRCNN("inference", TinyConfig(), tmp_path_factory.mktemp("logs"))


def test_layer_names_reachable(infer_model):
    km = infer_model.keras_model
    for name in ("rpn_model", "conv1", "bn_conv1", "res2a_branch2a", "fpn_p2", "fpn_p6",
                 "mrcnn_class_conv1", "mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox",
                 "mrcnn_mask_conv1", "mrcnn_mask_deconv", "mrcnn_mask"):
        km.get_layer(name)
    assert km.get_layer("rpn_model").get_layer("rpn_conv_shared").kernel.shape == (3, 3, 64, 512)
    assert [o.shape[-1] for o in km.outputs[:1]] == [6]


def test_inference_outputs_are_named_in_matterport_order(infer_model):
    """The inference graph returns a dict by name; .outputs keeps Matterport's positional order."""
    from mrcnn_nuclei.data.image_ops import compose_image_meta
    from mrcnn_nuclei.network import INFERENCE_OUTPUTS

    km = infer_model.keras_model
    assert INFERENCE_OUTPUTS == ("detections", "mrcnn_class", "mrcnn_bbox", "mrcnn_mask",
                                 "rpn_rois", "rpn_class", "rpn_bbox")
    assert list(km.output) == list(INFERENCE_OUTPUTS)
    assert all(km.outputs[i] is km.output[name] for i, name in enumerate(INFERENCE_OUTPUTS))
    meta = compose_image_meta(0, (64, 64, 3), (64, 64, 3), (0, 0, 64, 64), 1.0, np.ones(2))
    res = km.predict_on_batch([np.zeros((1, 64, 64, 3), np.float32), meta[None]])
    assert list(res) == list(INFERENCE_OUTPUTS)
    assert res["detections"].shape == (1, 20, 6) and res["mrcnn_mask"].shape[:2] == (1, 20)
    assert res["mrcnn_class"].shape == (1, 64, 2) and res["rpn_rois"].shape == (1, 64, 4)


def test_detect_awkward_inputs(infer_model):
    rng = np.random.default_rng(0)
    images = [
        (rng.random((70, 90)) * 255).astype(np.uint8),                   # grey
        (rng.random((64, 64, 4)) * 255).astype(np.uint8),                # RGBA
        (rng.random((77, 61, 3)) * 65535).astype(np.uint16),             # 16-bit, odd size
        rng.random((50, 130, 3)).astype(np.float32),                     # float
        (rng.random((70, 90, 3)) * 255).astype(np.uint8),                # same molded shape as #0
    ]
    results = infer_model.detect(images)
    assert len(results) == len(images)
    for img, r in zip(images, results):
        n = len(r["class_ids"])
        assert r["masks"].shape == img.shape[:2] + (n,) and r["masks"].dtype == bool
        assert r["rois"].shape == (n, 4) and r["rois"].dtype == np.int32
        assert r["class_ids"].dtype == np.int32 and r["scores"].dtype == np.float32
        if n:
            assert (r["rois"][:, 2] <= img.shape[0]).all() and (r["rois"][:, 3] <= img.shape[1]).all()
            assert (r["class_ids"] == 1).all()
            assert (np.diff(r["scores"]) <= 1e-6).all()
    assert sum(len(r["class_ids"]) for r in results) > 0  # confidence 0: something is found
    assert infer_model.detect([]) == []
    assert infer_model.detect_molded([], []) == []


def test_detect_converts_inputs_as_documented(infer_model):
    """detect() molds through data.convert.to_uint8: grey is replicated to RGB, alpha dropped,
    floats in 0..1 scaled by 255, 16-bit data stretched over 0..255 (not shifted by 8 bits)."""
    rng = np.random.default_rng(2)

    def molded(image):
        images, metas, windows = infer_model.mold_inputs([image])
        y1, x1, y2, x2 = windows[0]
        raw = images[0] + np.asarray(infer_model.config.MEAN_PIXEL, np.float32)
        return images[0], raw[y1:y2, x1:x2], metas[0]

    grey = (rng.random((70, 90)) * 255).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(molded(grey)[0], molded(rgb)[0])
    np.testing.assert_array_equal(molded(grey[:, :, None])[0], molded(rgb)[0])
    rgba = (rng.random((64, 64, 4)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(molded(rgba)[0], molded(rgba[:, :, :3])[0])
    flt = rng.random((50, 130, 3)).astype(np.float32)
    np.testing.assert_array_equal(molded(flt)[0], molded(np.rint(flt * 255).astype(np.uint8))[0])
    faint = (1000 + rng.random((64, 64, 3)) * 400).astype(np.uint16)  # >> 8 would give 3..5
    _, inside, meta = molded(faint)
    assert inside.min() <= 5 and inside.max() >= 250
    assert tuple(meta[1:4]) == (64, 64, 3)
    odd = (rng.random((97, 83, 3)) * 255).astype(np.uint8)
    images, _, windows = infer_model.mold_inputs([odd])
    assert images[0].shape == (128, 128, 3)
    y1, x1, y2, x2 = windows[0]
    # pad64: zero-padded to multiples of 64, pixels unchanged (no scaling above IMAGE_MIN_DIM)
    assert (y2 - y1, x2 - x1) == (97, 83)
    # molded as Matterport's mold_image: minus the float64 MEAN_PIXEL, as float32
    mean = np.asarray(infer_model.config.MEAN_PIXEL, np.float64)
    np.testing.assert_array_equal(images[0][y1:y2, x1:x2],
                                  (odd.astype(np.float32) - mean).astype(np.float32))


def test_load_weights_missing_file_says_where_to_get_it(infer_model, tmp_path):
    missing = tmp_path / "weights" / "mask_rcnn_coco.h5"
    with pytest.raises(FileNotFoundError) as err:
        infer_model.load_weights(missing, by_name=True,
                                 exclude=["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox",
                                          "mrcnn_mask"])
    msg = str(err.value)
    assert str(missing) in msg and "releases/download/v2.0/mask_rcnn_coco.h5" in msg


def test_detect_soft_and_molded_agree(infer_model):
    rng = np.random.default_rng(1)
    img = (rng.random((96, 80, 3)) * 255).astype(np.uint8)
    hard = infer_model.detect([img])[0]
    soft = infer_model.detect_soft([img])[0]
    np.testing.assert_array_equal(hard["rois"], soft["rois"])
    sm = soft["soft_masks"]
    assert sm.shape == hard["masks"].shape and sm.dtype == np.float32
    assert sm.min() >= 0 and sm.max() <= 1
    if sm.size:
        agree = ((sm >= 0.5) == hard["masks"]).mean()
        assert agree > 0.99
    molded, metas, _ = infer_model.mold_inputs([img])
    again = infer_model.detect_molded(np.stack(molded), metas)[0]
    np.testing.assert_array_equal(again["rois"], hard["rois"])
    np.testing.assert_array_equal(again["masks"], hard["masks"])


def test_bad_mode_and_find_last_missing(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        MaskRCNN("train", TinyConfig(), tmp_path)
    m = MaskRCNN.__new__(MaskRCNN)
    m.config, m.model_dir = TinyConfig(), str(tmp_path)
    with pytest.raises(FileNotFoundError, match="tiny"):
        m.find_last()


def test_find_last_exact_name_and_newest_checkpoint(tmp_path):
    m = MaskRCNN.__new__(MaskRCNN)
    m.config, m.model_dir = TinyConfig(), str(tmp_path)
    run = tmp_path / "tiny20260101T0000"
    run.mkdir()
    for epoch in (1, 2, 10):
        (run / f"mask_rcnn_tiny_{epoch:04d}.weights.h5").write_bytes(b"x")
    (run / ".tmp_ab12.weights.h5").write_bytes(b"x")
    (run / "config.json").write_text("{}")
    other = tmp_path / "tinyx20270101T0000"       # another NAME that starts with "tiny"
    other.mkdir()
    (other / "mask_rcnn_tinyx_0005.weights.h5").write_bytes(b"x")
    stopped = tmp_path / "tiny20260102T0000"      # newer run stopped before its first epoch
    stopped.mkdir()
    (stopped / "config.json").write_text("{}")
    assert m.find_last() == str(run / "mask_rcnn_tiny_0010.weights.h5")
    m.set_log_dir(m.find_last())                 # resuming continues the numbering
    assert m.epoch == 10 and m.log_dir == str(run)
    assert m.checkpoint_path.format(epoch=11) == str(run / "mask_rcnn_tiny_0011.weights.h5")
    for f in run.glob("mask_rcnn_*"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="holds a checkpoint"):
        m.find_last()


def test_atomic_checkpoint_never_leaves_a_partial_file(tmp_path):
    from mrcnn_nuclei.model import AtomicCheckpoint

    class FakeModel:
        fail, payload = False, b"complete 1"

        def save_weights(self, path, overwrite=True):
            with open(path, "wb") as f:
                f.write(b"partial")
                if self.fail:
                    raise OSError("disk full")
            with open(path, "wb") as f:
                f.write(self.payload)

    cb = AtomicCheckpoint(str(tmp_path / "run" / "mask_rcnn_tiny_{epoch:04d}.weights.h5"))
    fake = FakeModel()
    cb.set_model(fake)
    cb.on_epoch_end(0)
    path = tmp_path / "run" / "mask_rcnn_tiny_0001.weights.h5"
    assert path.read_bytes() == b"complete 1"
    fake.fail, fake.payload = True, b"complete 2"
    with pytest.raises(OSError, match="disk full"):
        cb.on_epoch_end(0)                        # rewriting the same epoch fails midway
    assert path.read_bytes() == b"complete 1"     # the old file, whole
    assert os.listdir(tmp_path / "run") == ["mask_rcnn_tiny_0001.weights.h5"]
    fake.fail = False
    cb.on_epoch_end(1)
    assert (tmp_path / "run" / "mask_rcnn_tiny_0002.weights.h5").read_bytes() == b"complete 2"


def _synthetic(count, seed):
    from mrcnn_nuclei.datasets import SyntheticNucleiDataset

    ds = SyntheticNucleiDataset()
    ds.load(count, seed=seed, height=128, width=128)
    ds.prepare()
    return ds


def _weights(model, names):
    out = {}
    for n in names:
        layer = model.keras_model.get_layer(n)
        for w in layer.weights:
            out[f"{n}/{w.name}"] = w.numpy().copy()
    return out


@pytest.mark.slow
def test_heads_training_freezes_backbone_and_checkpoints(tmp_path):
    """~100 s on 2 cores: two training stages (each traces the train step once)."""
    cfg = TrainConfig()
    model = MaskRCNN("training", cfg, tmp_path)
    train, val = _synthetic(3, 0), _synthetic(1, 99)
    backbone = ["conv1", "bn_conv1", "res2a_branch2a", "res3a_branch1", "res5b_branch2b"]
    heads = ["fpn_p2", "mrcnn_class_logits", "mrcnn_mask"]
    before_b = _weights(model, backbone)
    before_h = _weights(model, heads)
    # every weighted layer outside the "heads" regex (the whole ResNet), not just a sample
    all_backbone = [l.name for l in model.keras_model.layers if l.weights
                    and not isinstance(l, keras.Model)
                    and not re.fullmatch(LAYER_REGEX["heads"], l.name)]
    assert len(all_backbone) >= 40 and set(backbone) <= set(all_backbone)
    before_all = _weights(model, all_backbone)
    rpn_before = model.keras_model.get_layer("rpn_model").weights[0].numpy().copy()
    hist = model.train(train, val, learning_rate=0.01, epochs=1, layers="heads", verbose=0)
    assert set(hist.history) >= {"loss", "rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss",
                                 "mrcnn_bbox_loss", "mrcnn_mask_loss", "val_loss"}
    assert np.isfinite(hist.history["loss"]).all()
    after_b = _weights(model, backbone)
    for k, v in before_b.items():
        np.testing.assert_array_equal(after_b[k], v, err_msg=k)   # bit-identical
    after_all = _weights(model, all_backbone)
    for k, v in before_all.items():
        np.testing.assert_array_equal(after_all[k], v, err_msg=k)
    logged = [f for _, _, files in os.walk(model.log_dir) for f in files]
    assert any(f.startswith("events.out.tfevents") for f in logged) or \
        "training_log.csv" in logged                              # TensorBoard (or CSV) logs
    after_h = _weights(model, heads)
    assert any(np.abs(after_h[k] - v).max() > 0 for k, v in before_h.items())
    assert np.abs(model.keras_model.get_layer("rpn_model").weights[0].numpy().copy()
                  - rpn_before).max() > 0                          # nested rpn_model trained
    ck1 = os.path.join(model.log_dir, "mask_rcnn_tiny_0001.weights.h5")
    assert os.path.exists(ck1)
    assert os.path.exists(os.path.join(model.log_dir, "config.json"))
    assert re.fullmatch(r"tiny\d{8}T\d{6}", os.path.basename(model.log_dir))  # + seconds
    assert not [f for f in os.listdir(model.log_dir) if f.startswith(".tmp")]
    assert model.find_last() == ck1
    # stage 2: re-compile with a new trainable set; numbering continues (epoch 2)
    res4_before = _weights(model, ["res4a_branch2a"])["res4a_branch2a/kernel"]
    model.train(train, None, learning_rate=0.005, epochs=2, layers="4+", verbose=0)
    assert np.abs(_weights(model, ["res4a_branch2a"])["res4a_branch2a/kernel"]
                  - res4_before).max() > 0
    assert model.find_last().endswith("mask_rcnn_tiny_0002.weights.h5")
    assert np.array_equal(_weights(model, ["conv1"])["conv1/kernel"], before_b["conv1/kernel"])
    # a new model resumes the count from the checkpoint name
    other = MaskRCNN("training", cfg, tmp_path)
    other.set_log_dir(model.find_last())
    assert other.epoch == 2 and other.log_dir == model.log_dir
    assert model.train(train, None, 0.01, epochs=2, layers="heads", verbose=0) is None


def test_layer_regex_presets():
    names = ["conv1", "bn_conv1", "res2a_branch2a", "res3b_branch1", "bn4c_branch2b",
             "res5a_branch2c", "fpn_c5p5", "rpn_conv_shared", "mrcnn_mask", "PREPROC"]

    def sel(key):
        return [n for n in names if re.fullmatch(LAYER_REGEX[key], n)]

    assert sel("heads") == ["fpn_c5p5", "rpn_conv_shared", "mrcnn_mask", "PREPROC"]
    assert sel("3+") == names[3:]
    assert sel("4+") == names[4:]
    assert sel("5+") == names[5:]
    assert sel("all") == names


@pytest.mark.parametrize("arch", ["resnet50", "resnet101"])
def test_inference_graph_stage_shapes(tmp_path, arch):
    """Symbolic shapes and dtypes of every stage of the full inference graph (build only)."""

    class C(TinyConfig):
        BACKBONE = arch
        TOP_DOWN_PYRAMID_SIZE = 256
        FPN_CLASSIF_FC_LAYERS_SIZE = 1024
        POST_NMS_ROIS_INFERENCE = 1000
        DETECTION_MAX_INSTANCES = 100

    km = MaskRCNN("inference", C(), tmp_path).keras_model
    det, cls, bbox, mask, rois, rpn_class, rpn_bbox = km.outputs
    assert tuple(det.shape) == (None, 100, 6)
    assert tuple(cls.shape) == (None, 1000, 2) and tuple(bbox.shape) == (None, 1000, 2, 4)
    assert tuple(mask.shape) == (None, 100, 28, 28, 2)
    assert tuple(rois.shape) == (None, 1000, 4)
    assert tuple(rpn_class.shape) == (None, None, 2) and tuple(rpn_bbox.shape) == (None, None, 4)
    assert all(o.dtype == "float32" for o in km.outputs)
    assert km.get_layer("res5c_branch2c").output.shape[-1] == 2048
    assert km.get_layer("fpn_p2").output.shape[-1] == 256
    n4 = len([l for l in km.layers if l.name.startswith("res4") and l.name.endswith("branch2a")])
    assert n4 == (6 if arch == "resnet50" else 23)


@pytest.mark.parametrize("arch", ["resnet50", "resnet101"])
def test_inference_stage_outputs_at_256_and_512(tmp_path, arch):
    """Every stage of the inference graph run on 256x256 and 512x512 inputs: concrete shapes
    and dtypes of C2..C5, P2..P6, anchors, RPN, proposals, ROIAlign, heads, detections, masks."""
    from mrcnn_nuclei.data.image_ops import compose_image_meta

    class C(TinyConfig):
        BACKBONE = arch
        IMAGES_PER_GPU = 1
        TOP_DOWN_PYRAMID_SIZE = 256
        FPN_CLASSIF_FC_LAYERS_SIZE = 1024
        POST_NMS_ROIS_INFERENCE = 1000
        DETECTION_MAX_INSTANCES = 100

    km = MaskRCNN("inference", C(), tmp_path).keras_model
    g = km.get_layer
    stages = {f"C{i}": g(f"fpn_c{i}p{i}").input for i in (2, 3, 4, 5)}
    stages.update({f"P{i}": g(f"fpn_p{i}").output for i in (2, 3, 4, 5, 6)})
    for name in ("anchors", "rpn_class", "rpn_bbox", "ROI",
                 "roi_align_classifier", "mrcnn_class", "mrcnn_bbox", "mrcnn_detection",
                 "roi_align_mask"):
        stages[name] = g(name).output
    stages["mrcnn_mask"] = km.outputs[3]
    probe = keras.Model(km.inputs, stages)
    rng = np.random.default_rng(0)
    for size in (256, 512):
        x = rng.normal(0, 40, (1, size, size, 3)).astype(np.float32)
        meta = compose_image_meta(0, (size, size, 3), (size, size, 3), (0, 0, size, size), 1.0,
                                  np.zeros(2))[None].astype(np.float32)
        out = probe.predict_on_batch([x, meta])
        assert set(out) == set(stages)
        for name, value in out.items():
            assert value.dtype == np.float32, (size, name)
            if name[0] in "CP" or name.startswith("rpn") or name == "anchors":
                assert np.isfinite(value).all(), (size, name)  # (later stages: random heads)
        for i, ch in zip((2, 3, 4, 5), (256, 512, 1024, 2048)):
            assert out[f"C{i}"].shape == (1, size >> i, size >> i, ch), (size, i)
        for i in (2, 3, 4, 5, 6):
            assert out[f"P{i}"].shape == (1, size >> i, size >> i, 256), (size, i)
        a = 3 * sum((size >> i) ** 2 for i in (2, 3, 4, 5, 6))
        assert out["anchors"].shape == (a, 4)
        assert out["rpn_class"].shape == (1, a, 2)
        assert out["rpn_bbox"].shape == (1, a, 4)
        np.testing.assert_allclose(out["rpn_class"].sum(-1), 1.0, atol=1e-4)
        assert out["ROI"].shape == (1, 1000, 4)
        assert out["ROI"].min() >= 0.0 and out["ROI"].max() <= 1.0
        assert out["roi_align_classifier"].shape == (1, 1000, 7, 7, 256)
        assert out["mrcnn_class"].shape == (1, 1000, 2)
        assert out["mrcnn_bbox"].shape == (1, 1000, 2, 4)
        det = out["mrcnn_detection"]
        assert det.shape == (1, 100, 6)
        n = max(1, int((det[0, :, 4] > 0).sum()))  # the mask head runs on the real detections
        assert out["roi_align_mask"].shape == (1, n, 14, 14, 256)
        assert out["mrcnn_mask"].shape == (1, 100, 28, 28, 2)


# ------------------------------------------------------------------ run folders, resume, safety
def _bare(tmp_path, config=None, mode="training"):
    """A MaskRCNN without its (slow) graph: enough for log dirs, find_last and train checks."""
    m = MaskRCNN.__new__(MaskRCNN)
    m.config, m.model_dir, m.mode = config or TinyConfig(), str(tmp_path), mode
    m.set_log_dir()
    return m


def test_two_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    a, b = _bare(tmp_path), _bare(tmp_path)
    b.log_dir, b.checkpoint_path = a.log_dir, a.checkpoint_path    # same second, same name
    assert re.fullmatch(r"tiny\d{8}T\d{6}", os.path.basename(a.log_dir))  # Matterport + seconds
    assert a._claim_log_dir() == a.log_dir
    b._claim_log_dir()
    assert b.log_dir == a.log_dir + "_2" and os.path.isdir(b.log_dir)
    assert b.checkpoint_path.startswith(b.log_dir + os.sep)
    # nothing of one overwrites the other
    TinyConfig().save_json(os.path.join(a.log_dir, "config.json"))
    assert not os.path.exists(os.path.join(b.log_dir, "config.json"))
    for m, payload in ((a, b"run a"), (b, b"run b")):
        with open(m.checkpoint_path.format(epoch=1), "wb") as f:
            f.write(payload)
    assert open(a.checkpoint_path.format(epoch=1), "rb").read() == b"run a"
    # find_last: the newest run is the later-claimed one; resuming stays in its folder
    assert a.find_last() == b.checkpoint_path.format(epoch=1)
    c = _bare(tmp_path)
    c.set_log_dir(a.checkpoint_path.format(epoch=1))
    assert c.log_dir == a.log_dir and c.epoch == 1
    assert c._claim_log_dir() == a.log_dir                           # no new folder on resume
    assert sorted(os.listdir(tmp_path)) == sorted({os.path.basename(a.log_dir),
                                                   os.path.basename(b.log_dir)})


def test_find_last_orders_old_and_new_folder_names_and_any_name(tmp_path):
    from mrcnn_nuclei.model import find_last_checkpoint

    def run(folder, name, epoch):
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / f"mask_rcnn_{name}_{epoch:04d}.weights.h5"
        path.write_bytes(b"x")
        return str(path)

    run("tiny20260101T1200", "tiny", 3)              # Matterport's minute-only name
    run("tiny20260101T120030", "tiny", 1)            # same minute, 30 s later
    newest = run("tiny20260101T120030_2", "tiny", 9)  # same second, claimed second: newest
    assert _bare(tmp_path).find_last() == newest
    other = run("nucleus20260102T000000", "nucleus", 2)
    assert find_last_checkpoint(tmp_path, "tiny") == newest
    assert find_last_checkpoint(tmp_path, None) == other             # any NAME: the newest run
    assert _bare(tmp_path).find_last(any_name=True) == other
    (tmp_path / "tiny20260101T120030_2" / "mask_rcnn_tiny_0010.weights.h5").write_bytes(b"x")
    assert find_last_checkpoint(tmp_path, "tiny").endswith("_2/mask_rcnn_tiny_0010.weights.h5")


def test_train_with_nothing_left_says_what_to_pass(tmp_path, caplog):
    m = _bare(tmp_path)
    m.epoch = 4                                          # as after loading a checkpoint of epoch 4
    with caplog.at_level("WARNING", logger="mrcnn_nuclei.model"):
        assert m.train(None, None, 0.01, epochs=4, layers="heads") is None
    assert "nothing to train" in caplog.text and "pass epochs=5 or more" in caplog.text
    assert os.listdir(tmp_path) == []                    # no (empty) run folder was created


def test_checkpoint_save_checks_space_and_keeps_the_umask(tmp_path, monkeypatch):
    from collections import namedtuple

    from mrcnn_nuclei import fileio
    from mrcnn_nuclei.model import AtomicCheckpoint

    class FakeModel:
        weights = [np.zeros((1000, 1000), np.float32)]   # ~4 MB of weights
        calls = 0

        def save_weights(self, path, overwrite=True):
            FakeModel.calls += 1
            with open(path, "wb") as f:
                f.write(b"weights")

    cb = AtomicCheckpoint(str(tmp_path / "run" / "mask_rcnn_tiny_{epoch:04d}.weights.h5"))
    cb.set_model(FakeModel())
    old = os.umask(0o022)
    try:
        cb.on_epoch_end(0)
    finally:
        os.umask(old)
    first = tmp_path / "run" / "mask_rcnn_tiny_0001.weights.h5"
    assert oct(os.stat(first).st_mode & 0o777) == oct(0o644)     # mkstemp alone gives 0600
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9, 10 ** 6))
    with pytest.raises(OSError, match=r"cannot write .*mask_rcnn_tiny_0002.*disk is full"):
        cb.on_epoch_end(1)                                       # 1 MB free < ~5 MB needed
    assert FakeModel.calls == 1 and os.listdir(tmp_path / "run") == [first.name]
    assert first.read_bytes() == b"weights"


def test_partial_weights_are_an_error_for_inference(infer_model, tmp_path):
    """A ResNet-18 file into a ResNet-34 model leaves the extra blocks random: inference refuses
    (naming them and the backbone as the cause) unless allow_partial=True."""
    from mrcnn_nuclei.weights import PartialWeightsError

    path = infer_model.save_weights(tmp_path / "r18.weights.h5")
    deeper = MaskRCNN("inference", type("R34", (TinyConfig,), {"BACKBONE": "resnet34"})(),
                      tmp_path)
    conv1 = deeper.keras_model.get_layer("conv1").kernel.numpy().copy()
    with pytest.raises(PartialWeightsError, match=r"unfilled.*res3d_branch2a.*backbone depth"
                                                  r".*allow_partial=True") as err:
        deeper.load_weights(path, by_name=True)
    assert "res4f_branch2b" in err.value.report.unfilled
    np.testing.assert_array_equal(deeper.keras_model.get_layer("conv1").kernel.numpy(), conv1)
    report = deeper.load_weights(path, by_name=True, allow_partial=True)
    assert report.unfilled == err.value.report.unfilled and len(report.loaded) > 50
    np.testing.assert_array_equal(deeper.keras_model.get_layer("conv1").kernel.numpy(),
                                  infer_model.keras_model.get_layer("conv1").kernel.numpy())
    # into the architecture it came from, nothing is left unfilled
    assert infer_model.load_weights(path, by_name=True).unfilled == []
