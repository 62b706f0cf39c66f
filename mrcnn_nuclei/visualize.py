"""Pictures: Matterport's ``display_instances``, a TP/FP/FN outline overlay, training curves.

Files are drawn with matplotlib's Agg canvas (no window, no display needed).  ``display_instances``
draws into a given ``ax`` or a new pyplot figure and calls ``plt.show()`` only when an interactive
backend is active.

Overlay colours of :func:`save_tp_fp_fn_overlay` (RGB):

* ``TP_COLOR`` green ``(0, 255, 0)``: outline of a predicted nucleus matched to a ground-truth one;
* ``FP_COLOR`` red ``(255, 0, 0)``: outline of a prediction with no match (false positive);
* ``FN_COLOR`` yellow ``(255, 255, 0)``: outline of a ground-truth nucleus nobody found (missed).
"""

from __future__ import annotations

import colorsys
import glob
import os

import numpy as np

from .data.convert import to_uint8
from .metrics import Contingency, to_label
from .postprocess import masks_to_label

__all__ = ["display_instances", "random_colors", "apply_mask", "save_tp_fp_fn_overlay",
           "outline_overlay", "read_scalars", "plot_training_curves",
           "TP_COLOR", "FP_COLOR", "FN_COLOR"]

TP_COLOR = (0, 255, 0)
FP_COLOR = (255, 0, 0)
FN_COLOR = (255, 255, 0)
_NON_INTERACTIVE = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}


def random_colors(N, bright=True, seed=None):
    """``N`` distinct RGB colours in ``[0, 1]``: evenly spaced hues, shuffled (seeded)."""
    brightness = 1.0 if bright else 0.7
    colors = [colorsys.hsv_to_rgb(i / max(N, 1), 1.0, brightness) for i in range(N)]
    order = np.random.default_rng(seed).permutation(N)
    return [colors[i] for i in order]


def apply_mask(image, mask, color, alpha=0.5):
    """Blend ``color`` (RGB, 0..1) into ``image [H, W, 3]`` where ``mask [H, W]``; returns it."""
    m = np.asarray(mask) > 0
    col = np.asarray(color, np.float64)[:3] * 255
    image[m] = (image[m] * (1 - alpha) + alpha * col).astype(image.dtype)
    return image


def _check_detections(boxes, masks, class_ids):
    boxes = np.asarray(boxes).reshape(-1, 4)
    masks = np.asarray(masks)
    class_ids = np.asarray(class_ids).ravel()
    n = boxes.shape[0]
    if masks.ndim != 3 or masks.shape[-1] != n or class_ids.size != n:
        raise ValueError(f"display_instances: boxes [{n}, 4], masks {masks.shape} and class_ids "
                         f"[{class_ids.size}] must describe the same N instances (masks [H, W, N])")
    return boxes, masks, class_ids


def display_instances(image, boxes, masks, class_ids, class_names, scores=None, title="",
                      figsize=(16, 16), ax=None, show_mask=True, show_bbox=True, colors=None,
                      captions=None):
    """Draw instances on an image (Matterport's ``visualize.display_instances``). Returns the ax.

    Args:
        image: ``[H, W, C]`` image (any dtype; shown as RGB uint8).
        boxes: ``[N, 4]`` (y1, x1, y2, x2) pixel boxes. masks: ``[H, W, N]`` bool.
        class_ids: ``[N]`` ints indexing ``class_names``. scores: optional ``[N]``.
        title, figsize: figure title and size (a new figure is made when ``ax`` is None).
        show_mask, show_bbox: draw filled masks / dashed boxes. colors: ``N`` RGB tuples in
        [0, 1]. captions: ``N`` strings replacing "class score".
    """
    import matplotlib.pyplot as plt
    from matplotlib import patches
    from skimage.measure import find_contours

    boxes, masks, class_ids = _check_detections(boxes, masks, class_ids)
    n = boxes.shape[0]
    own_figure = ax is None
    if own_figure:
        _, ax = plt.subplots(1, figsize=figsize)
    rgb = to_uint8(image, 3)
    height, width = rgb.shape[:2]
    colors = colors or random_colors(n)
    ax.set_ylim(height + 10, -10)
    ax.set_xlim(-10, width + 10)
    ax.axis("off")
    ax.set_title(title)
    canvas = rgb.astype(np.float64)
    if n and show_mask:
        # one blend for all masks: every pixel takes the colour of its top instance
        label = masks_to_label(masks)
        lut = np.concatenate([np.zeros((1, 3)), np.asarray(colors, np.float64)[:, :3] * 255])
        on = label > 0
        canvas[on] = 0.5 * canvas[on] + 0.5 * lut[label[on]]
    for i in range(n):  # matplotlib artists are made one by one
        color = colors[i]
        y1, x1, y2, x2 = boxes[i]
        if not np.any(boxes[i]):
            continue  # zero padding
        if show_bbox:
            ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2, alpha=0.7,
                                           linestyle="dashed", edgecolor=color, facecolor="none"))
        if captions is not None:
            caption = captions[i]
        else:
            name = class_names[class_ids[i]] if class_ids[i] < len(class_names) else \
                str(class_ids[i])
            caption = f"{name} {scores[i]:.3f}" if scores is not None else name
        ax.text(x1, y1 + 8, caption, color="w", size=11, backgroundcolor="none")
        padded = np.pad(masks[:, :, i].astype(np.uint8), 1)
        for verts in find_contours(padded, 0.5):
            ax.add_patch(patches.Polygon(np.fliplr(verts) - 1, facecolor="none",
                                         edgecolor=color))
    ax.imshow(np.clip(canvas, 0, 255).astype(np.uint8))
    if own_figure and plt.get_backend().lower() not in _NON_INTERACTIVE:
        plt.show()
    return ax


def _outline(label):
    from skimage.segmentation import find_boundaries

    return find_boundaries(label, mode="inner") & (label > 0)


def outline_overlay(image, gt, pred, iou=0.5):
    """RGB ``[H, W, 3]`` uint8 image with TP (green), FP (red) and FN (yellow) outlines drawn in.

    Args: ``image`` ``[H, W]`` or ``[H, W, C]``; ``gt``, ``pred`` label images ``[H, W]`` or stacks.
    Matching: unique pairs with IoU > ``iou``. Returns ``(rgb, counts)`` with
    ``counts = {"tp", "fp", "fn"}``.
    """
    gt, pred = to_label(gt, "gt"), to_label(pred, "pred")
    rgb = to_uint8(image, 3).copy()
    if rgb.shape[:2] != gt.shape or gt.shape != pred.shape:
        raise ValueError(f"image {rgb.shape[:2]}, gt {gt.shape} and pred {pred.shape} must have "
                         "the same height and width")
    c = Contingency(gt, pred)
    gi, pi, _ = c.match(iou)
    tp_ids, gt_hit = c.pred_ids[pi], c.gt_ids[gi]
    fn_lab = np.where(np.isin(gt, gt_hit), 0, gt)
    tp_lab = np.where(np.isin(pred, tp_ids), pred, 0)
    fp_lab = np.where(tp_lab > 0, 0, pred)
    for lab, color in ((fn_lab, FN_COLOR), (fp_lab, FP_COLOR), (tp_lab, TP_COLOR)):
        rgb[_outline(lab)] = color  # predictions are drawn over missed ground truth
    counts = {"tp": int(gi.size), "fp": int(c.n_pred - gi.size), "fn": int(c.n_gt - gi.size)}
    return rgb, counts


def save_tp_fp_fn_overlay(image, gt, pred, path, iou=0.5):
    """Write a PNG of exactly the image's size with TP/FP/FN outlines (see module colours).

    Args: ``image [H, W(, C)]``, ``gt``/``pred`` label images or stacks, ``path`` of the PNG,
    ``iou`` match threshold. Returns the counts dict ``{"tp", "fp", "fn"}``.
    """
    from PIL import Image

    from .fileio import atomic_write

    rgb, counts = outline_overlay(image, gt, pred, iou)
    atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))
    return counts


# --------------------------------------------------------------------------- training curves
def _read_csv_logs(files):
    """Series from Keras ``CSVLogger`` files (an ``epoch`` column and one column per quantity)."""
    import csv

    series = {}
    for f in files:
        with open(f, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or "epoch" not in rows[0]:
            continue
        for name in rows[0]:
            if name == "epoch":
                continue
            for row in rows:
                try:
                    series.setdefault(name, []).append((int(row["epoch"]), float(row[name])))
                except (TypeError, ValueError):
                    continue  # empty cell (e.g. a metric missing in one epoch)
    return series


def _read_event_files(files, log_dir):
    import tensorflow as tf

    series = {}
    for f in files:
        run = os.path.relpath(os.path.dirname(f), log_dir)
        run = "" if run in (".", "train") else run
        for event in tf.compat.v1.train.summary_iterator(f):
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    value = float(v.simple_value)
                elif v.HasField("tensor") and v.tensor.dtype in (tf.float32.as_datatype_enum,
                                                                 tf.float64.as_datatype_enum):
                    arr = tf.make_ndarray(v.tensor)
                    if arr.size != 1:
                        continue
                    value = float(arr.reshape(()))
                else:
                    continue
                tag = v.tag[6:] if v.tag.startswith("epoch_") else v.tag
                name = f"val_{tag}" if run == "validation" else (f"{run}/{tag}" if run else tag)
                series.setdefault(name, []).append((event.step, value))
    return series


def read_scalars(log_dir):
    """Every scalar logged under ``log_dir``: TensorBoard event files, else Keras CSV logs.

    Returns ``{name: (steps [K], values [K])}`` sorted by step. Event-file names are the tag with
    Keras' ``epoch_`` prefix removed, prefixed ``val_`` for the ``validation`` run and ``<run>/``
    for other sub-folders; CSV logs (``*.csv`` with an ``epoch`` column, as ``CSVLogger`` writes
    when tensorboard is not installed) give their column names. Raises FileNotFoundError when
    neither exists.
    """
    log_dir = os.fspath(log_dir)
    events = sorted(glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"),
                              recursive=True))
    csvs = sorted(glob.glob(os.path.join(log_dir, "**", "*.csv"), recursive=True))
    series = _read_event_files(events, log_dir) if events else {}
    if not series and csvs:
        series = _read_csv_logs(csvs)
    if not series:
        raise FileNotFoundError(f"no TensorBoard event files (events.out.tfevents.*) or CSV "
                                f"training logs with an 'epoch' column under {log_dir!r}; pass "
                                "the run folder written by training")
    out = {}
    for name, pts in series.items():
        pts.sort()
        out[name] = (np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
    return out


def plot_training_curves(log_dir, path):
    """Plot every scalar logged in ``log_dir`` (event files or CSV logs) to a PNG at ``path``.

    One panel per quantity; ``x`` and ``val_x`` share a panel. Returns the dict of
    :func:`read_scalars`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = read_scalars(log_dir)
    panels = {}
    for name in sorted(series):
        base = name[4:] if name.startswith("val_") else name
        panels.setdefault(base, []).append(name)
    n = len(panels)
    cols = min(3, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(5 * cols, 3.2 * rows))
    FigureCanvasAgg(fig)
    for k, (base, names) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, k + 1)
        for name in names:
            steps, values = series[name]
            ax.plot(steps, values, marker="." if len(steps) < 50 else None, label=name)
        ax.set_title(base)
        ax.set_xlabel("epoch / step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=100)
    return series
