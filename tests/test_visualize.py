"""Pictures: overlay colours at known pixels, display_instances artists, curves from event files."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from mrcnn_nuclei import visualize as V  # noqa: E402


def scene():
    image = np.tile(np.linspace(20, 120, 50).astype(np.uint8), (40, 1))  # grey [40, 50]
    gt = np.zeros((40, 50), np.int32)
    gt[5:15, 5:15] = 1     # found exactly -> TP
    gt[5:15, 30:40] = 2    # missed -> FN
    pred = np.zeros_like(gt)
    pred[5:15, 5:15] = 7
    pred[25:35, 20:30] = 9  # nothing there -> FP
    return image, gt, pred


def test_overlay_png_size_and_colours(tmp_path):
    image, gt, pred = scene()
    path = tmp_path / "o" / "overlay.png"
    counts = V.save_tp_fp_fn_overlay(image, gt, pred, path)
    assert counts == {"tp": 1, "fp": 1, "fn": 1}
    png = np.array(Image.open(path))
    assert png.shape == (40, 50, 3) and png.dtype == np.uint8
    assert tuple(png[5, 10]) == V.TP_COLOR        # top edge of the matched nucleus
    assert tuple(png[10, 39]) == V.FN_COLOR       # right edge of the missed nucleus
    assert tuple(png[34, 25]) == V.FP_COLOR       # bottom edge of the false positive
    assert tuple(png[10, 10]) == (image[10, 10],) * 3   # interiors untouched
    assert tuple(png[0, 0]) == (image[0, 0],) * 3
    # every coloured pixel is on one of the three outlines
    for color, lab in ((V.TP_COLOR, pred == 7), (V.FP_COLOR, pred == 9), (V.FN_COLOR, gt == 2)):
        hit = np.all(png == color, axis=-1)
        assert hit.sum() == 36 and np.all(lab[hit])  # 10x10 square: 36 boundary pixels


def test_overlay_rgba_input_and_shape_error(tmp_path):
    image, gt, pred = scene()
    rgba = np.dstack([image] * 3 + [np.full_like(image, 255)])
    rgb, counts = V.outline_overlay(rgba, gt, pred, iou=0.5)
    assert rgb.shape == (40, 50, 3) and counts["tp"] == 1
    with pytest.raises(ValueError, match="same height and width"):
        V.outline_overlay(image[:-1], gt, pred)


def test_random_colors():
    c = V.random_colors(7, seed=3)
    assert len(c) == 7 and len(set(c)) == 7
    assert all(0 <= v <= 1 for col in c for v in col)
    assert c == V.random_colors(7, seed=3)
    assert max(V.random_colors(4, bright=False)[0]) == pytest.approx(0.7)


def test_display_instances_draws_every_instance(monkeypatch):
    image, gt, pred = scene()
    masks = np.stack([gt == 1, gt == 2], axis=-1)
    boxes = np.array([[5, 5, 15, 15], [5, 30, 15, 40]])
    monkeypatch.setattr(plt, "show", lambda *a, **k: pytest.fail("plt.show called under Agg"))
    fig, ax = plt.subplots()
    out = V.display_instances(np.dstack([image] * 3), boxes, masks, np.array([1, 1]),
                              ["BG", "nucleus"], scores=np.array([0.9, 0.5]), ax=ax,
                              colors=[(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)])
    assert out is ax
    assert len(ax.patches) == 4  # two dashed boxes + two outlines
    assert [t.get_text() for t in ax.texts] == ["nucleus 0.900", "nucleus 0.500"]
    shown = ax.images[0].get_array()
    assert shown.shape == (40, 50, 3)
    assert shown[10, 10, 0] > shown[10, 10, 2]    # red-tinted first mask
    assert shown[10, 35, 2] > shown[10, 35, 0]    # blue-tinted second mask
    assert tuple(shown[30, 5]) == (image[30, 5],) * 3
    ax2 = V.display_instances(image, boxes, masks, [1, 1], ["BG", "nucleus"],
                              captions=["a", "b"], show_bbox=False, show_mask=False)
    assert [t.get_text() for t in ax2.texts] == ["a", "b"] and len(ax2.patches) == 2
    plt.close("all")
    with pytest.raises(ValueError, match="same N instances"):
        V.display_instances(image, boxes[:1], masks, [1, 1], ["BG", "nucleus"])


def test_display_instances_has_matterports_signature():
    import inspect

    params = inspect.signature(V.display_instances).parameters
    assert list(params) == ["image", "boxes", "masks", "class_ids", "class_names", "scores",
                            "title", "figsize", "ax", "show_mask", "show_bbox", "colors",
                            "captions"]
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    assert defaults == {"scores": None, "title": "", "figsize": (16, 16), "ax": None,
                        "show_mask": True, "show_bbox": True, "colors": None, "captions": None}


def test_plot_training_curves_from_event_files(tmp_path):
    tf = pytest.importorskip("tensorflow")
    for run, values in (("train", [1.0, 0.6, 0.4]), ("validation", [1.2, 0.9, 0.8])):
        writer = tf.summary.create_file_writer(str(tmp_path / "logs" / run))
        with writer.as_default():
            for step, v in enumerate(values):
                # tf.summary.write is core TF (tf.summary.scalar needs the tensorboard package)
                tf.summary.write("epoch_loss", tf.constant(v), step=step)
                tf.summary.write("epoch_mrcnn_mask_loss", tf.constant(v / 2, tf.float64),
                                 step=step)
        writer.close()
    out = tmp_path / "curves.png"
    series = V.plot_training_curves(tmp_path / "logs", out)
    assert set(series) == {"loss", "val_loss", "mrcnn_mask_loss", "val_mrcnn_mask_loss"}
    np.testing.assert_allclose(series["val_loss"][1], [1.2, 0.9, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(series["loss"][0], [0, 1, 2])
    img = np.array(Image.open(out))
    assert img.shape[0] > 100 and img.shape[1] > 300 and img[..., :3].std() > 5
    with pytest.raises(FileNotFoundError, match="event files"):
        V.plot_training_curves(tmp_path / "nothing", tmp_path / "x.png")


def test_plot_training_curves_from_keras_csv_log(tmp_path):
    """Without tensorboard the model logs with keras.callbacks.CSVLogger: those files plot too."""
    log = tmp_path / "run" / "training_log.csv"
    log.parent.mkdir()
    log.write_text("epoch,loss,mrcnn_mask_loss,val_loss\n0,2.5,0.7,2.9\n1,1.5,0.5,\n"
                   "2,1.0,0.4,1.8\n")
    series = V.plot_training_curves(tmp_path / "run", tmp_path / "c.png")
    assert set(series) == {"loss", "mrcnn_mask_loss", "val_loss"}
    np.testing.assert_array_equal(series["val_loss"][0], [0, 2])  # the empty cell is skipped
    np.testing.assert_allclose(series["loss"][1], [2.5, 1.5, 1.0])
    assert np.array(Image.open(tmp_path / "c.png")).shape[1] > 300
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(FileNotFoundError, match="CSV"):
        V.plot_training_curves(tmp_path / "empty", tmp_path / "x.png")
