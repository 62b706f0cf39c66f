"""The train/detect commands (mrcnn_nuclei.commands.nucleus; samples/nucleus/train.py wraps them):
help, argument errors, and a tiny synthetic train -> detect run of the script."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "samples" / "nucleus" / "train.py"

from mrcnn_nuclei.commands import nucleus as cli  # noqa: E402  (what the script runs)


def test_help_runs_as_a_script():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "train" in out.stdout and "detect" in out.stdout
    out = subprocess.run([sys.executable, str(SCRIPT), "train", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0
    for option in ("--dataset", "--weights", "--logs", "--schedule", "--epochs",
                   "--steps-per-epoch", "--lr", "--workers", "--synthetic-count", "--image-size",
                   "--backbone", "--subset"):
        assert option in out.stdout


def test_arguments_reach_the_config():
    args = cli.build_parser().parse_args(
        ["train", "--dataset=synthetic", "--weights=none", "--steps-per-epoch", "7", "--lr",
         "0.02", "--image-size", "192", "--backbone", "resnet34"])
    cfg = cli.make_config(args, inference=False)
    assert (cfg.STEPS_PER_EPOCH, cfg.LEARNING_RATE, cfg.BACKBONE) == (7, 0.02, "resnet34")
    assert tuple(cfg.IMAGE_SHAPE) == (192, 192, 3) and cfg.NAME == "synthetic_nuclei"
    inf = cli.make_config(args, inference=True)
    assert inf.BATCH_SIZE == 1 and inf.NAME == cfg.NAME  # so --weights=last finds the run
    args = cli.build_parser().parse_args(["train", "--dataset=/data/dsb", "--weights=coco",
                                          "--image-size", "256"])
    cfg = cli.make_config(args, inference=False)
    assert cfg.NAME == "nucleus" and cfg.IMAGE_RESIZE_MODE == "crop" and cfg.IMAGE_MIN_DIM == 256
    assert cli.make_config(args, inference=True).IMAGE_RESIZE_MODE == "pad64"


def test_synthetic_subsets_are_disjoint_and_seeded():
    args = cli.build_parser().parse_args(["train", "--dataset=synthetic", "--weights=none",
                                          "--synthetic-count", "8", "--image-size", "64"])
    train = cli.load_dataset(args, "train")
    val = cli.load_dataset(args, "val")
    assert len(train.image_ids) == 8 and len(val.image_ids) == 2
    assert not np.array_equal(train.load_image(0), val.load_image(0))
    assert np.array_equal(cli.load_dataset(args, "val").load_image(1), val.load_image(1))
    with pytest.raises(SystemExit, match="synthetic subsets are train, val, test"):
        cli.load_dataset(args, "stage2")


def test_missing_coco_weights_fail_fast_with_the_place_to_put_them(tmp_path, monkeypatch):
    from mrcnn_nuclei import weights

    monkeypatch.setattr(weights.registry, "_REPO_WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(weights.ENV_WEIGHTS_DIR, raising=False)
    with pytest.raises(SystemExit) as err:
        cli.main(["train", "--dataset=synthetic", "--weights=coco", "--logs", str(tmp_path)])
    msg = str(err.value)
    assert str(tmp_path / "weights" / "mask_rcnn_coco.h5") in msg and "v2.0" in msg
    with pytest.raises(SystemExit, match="no such file"):
        cli.main(["detect", "--dataset=synthetic", "--weights", str(tmp_path / "x.h5")])


def test_overlay_image_tints_only_mask_pixels():
    image = np.full((6, 5, 3), 100, np.uint8)
    masks = np.zeros((6, 5, 2), bool)
    masks[1:3, 1:3, 0] = True
    masks[4, 4, 1] = True
    out = cli.overlay_image(image, masks)
    changed = np.any(out != image, axis=2)
    np.testing.assert_array_equal(changed, masks.any(axis=2))
    assert np.all(out[1:3, 1:3] == out[1, 1])  # one colour per instance
    assert cli.overlay_image(image, masks[:, :, :0]).tolist() == image.tolist()


@pytest.mark.slow
def test_tiny_synthetic_train_then_detect_last(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "out"
    common = ["--dataset=synthetic", "--logs", str(logs), "--synthetic-count", "4",
              "--image-size", "64"]
    train = subprocess.run(
        [sys.executable, str(SCRIPT), "train", "--weights=none", "--schedule=scratch",
         "--epochs=1", "--steps-per-epoch=2", "--validation-steps=1", *common],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "Trained to epoch 1" in train.stdout
    runs = list(logs.glob("synthetic_nuclei*/mask_rcnn_synthetic_nuclei_0001.weights.h5"))
    assert len(runs) == 1
    detect = subprocess.run(
        [sys.executable, str(SCRIPT), "detect", "--weights=last", "--subset=val", "--out",
         str(out), *common], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert detect.returncode == 0, detect.stdout[-3000:] + detect.stderr[-3000:]
    assert str(runs[0]) in detect.stdout  # loaded the checkpoint just written
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["0.png", "1.png"]  # the two held-out synthetic images
    with open(out / "submit.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ImageId", "EncodedPixels"]
    assert {r[0] for r in rows[1:]} == {"0", "1"}
    assert "2 images" in detect.stdout


# ------------------------------------------------------------------ checks before the slow build
@pytest.fixture
def no_build(monkeypatch):
    """MaskRCNN replaced: a test fails if the CLI builds a model before its checks."""
    import mrcnn_nuclei.model

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the check failed")

    monkeypatch.setattr(mrcnn_nuclei.model, "MaskRCNN", refuse)


def _native_file(path):
    """A minimal Keras-3-layout weights file (enough for the cheap check)."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_group("layers")
    return path


def test_truncated_weights_fail_before_the_build(tmp_path, no_build):
    good = _native_file(tmp_path / "w.weights.h5")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[:300])
    for command in ("train", "detect"):
        with pytest.raises(SystemExit, match=r"cut\.h5 .*truncated or damaged"):
            cli.main([command, "--dataset=synthetic", f"--weights={cut}", "--logs",
                      str(tmp_path / "logs")])


def test_unwritable_logs_fail_before_the_build(tmp_path, no_build):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit, match=r"--logs folder .*a_file/logs cannot be created"):
        cli.main(["train", "--dataset=synthetic", "--weights=none", "--logs",
                  str(tmp_path / "a_file" / "logs")])


def test_resuming_a_finished_run_says_what_to_pass(tmp_path, no_build, capsys):
    logs = tmp_path / "logs"
    ckpt = _native_file(logs / "synthetic_nuclei20260101T120000" /
                        "mask_rcnn_synthetic_nuclei_0006.weights.h5")
    for weights in ("last", str(ckpt)):
        with pytest.raises(SystemExit) as err:
            cli.main(["train", "--dataset=synthetic", f"--weights={weights}", "--epochs=1,6",
                      "--logs", str(logs)])
        msg = str(err.value)
        assert err.value.code not in (0, None)           # a failure exit status, not 0
        assert "nothing to train" in msg and str(ckpt) in msg and "epoch 6" in msg
        assert "--epochs=7,12" in msg
    assert "Trained to epoch" not in capsys.readouterr().out


def test_detect_refuses_partial_weights_unless_asked(tmp_path, monkeypatch):
    import mrcnn_nuclei.model
    from mrcnn_nuclei.weights import PartialWeightsError

    seen = []

    class FakeModel:  # stands for a ResNet-34 model given a ResNet-18 file
        def __init__(self, mode, config, model_dir):
            self.mode = mode

        def load_weights(self, path, by_name=False, exclude=None, allow_partial=None):
            seen.append(allow_partial)
            if not allow_partial:
                raise PartialWeightsError(f"{path} leaves 32 of the model's layers unfilled")
            raise RuntimeError("stop here: loaded")

    monkeypatch.setattr(mrcnn_nuclei.model, "MaskRCNN", FakeModel)
    w = _native_file(tmp_path / "r18.weights.h5")
    args = ["detect", "--dataset=synthetic", f"--weights={w}", "--limit=1", "--backbone=resnet34",
            "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="unfilled"):
        cli.main(args)
    with pytest.raises(RuntimeError, match="stop here"):
        cli.main(args + ["--allow-partial-weights"])
    assert seen == [False, True]
