"""Find bad images before training or evaluation starts, and report them all at once.

:func:`check_dataset` runs ``dataset.check_image(image_id)`` (see
:meth:`mrcnn_nuclei.data.dataset.Dataset.check_image`: by default a full decode of the image and
its masks) for every image, in parallel threads (image decoding releases the GIL), and either

* raises :class:`BadImagesError` naming every bad file and what is wrong with it (unreadable,
  truncated, mask size differs from the image, wrong channel count, ...), or
* with ``skip_bad=True`` (``Config.SKIP_BAD_IMAGES``, ``--skip-bad-images``) logs how many were
  skipped and returns a shallow copy of the dataset whose ``image_ids`` leave them out (the
  caller's dataset is not changed).

``MaskRCNN.train`` calls it on its training and validation datasets before the model is
compiled; the evaluation loop calls it on the images it scores.  Cost on the 664 DSB2018
stage-1 training images (28,986 mask PNGs) with DSBDataset's hook (full image decode, mask PNG
headers and ends): 7.1 s with 2 threads on the 2-core machine while it ran other work (load 5;
serially 7.9 s of image decoding and 0.9 s of mask headers); the default hook (every mask
decoded and stacked) took 137 s serially.
"""

from __future__ import annotations

import copy
import logging
import os
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["BadImagesError", "check_dataset", "check_training_datasets", "find_bad_images",
           "default_check_image", "check_image_array", "check_image_and_labels", "png_header"]

logger = logging.getLogger(__name__)


class BadImagesError(ValueError):
    """Images of a dataset cannot be used; ``.bad`` lists (image_id, reference, problems)."""

    def __init__(self, message, bad):
        super().__init__(message)
        self.bad = bad


def _problem(what, exc):
    text = str(exc) or type(exc).__name__
    kind = "truncated" if "truncated" in text.lower() else "unreadable"
    return f"{what} {kind}: {text}"


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def png_header(path):
    """(height, width, complete) of a PNG file from its first 24 and last 12 bytes (nothing is
    decoded): the IHDR size, and whether the file ends with its IEND chunk (a truncated file
    does not). Raises ValueError when ``path`` is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
            raise ValueError(f"{path} is not a PNG file (bad signature or header)")
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - len(_PNG_END)))
        complete = f.read() == _PNG_END
    width, height = struct.unpack(">II", head[16:24])
    return height, width, complete


def check_image_array(image, channels, height=None, width=None):
    """Problems of a loaded image [H, W, C]: channel count, and size when height/width given."""
    image = np.asarray(image)
    problems = []
    if image.ndim != 3 or image.shape[2] != int(channels):
        got = image.shape[2] if image.ndim == 3 else (1 if image.ndim == 2 else image.shape)
        problems.append(f"wrong channel count: load_image gives {got} channel(s) (shape "
                        f"{image.shape}), expected {int(channels)} (IMAGE_CHANNEL_COUNT)")
    if height is not None and image.shape[:2] != (int(height), int(width)):
        problems.append(f"image is {image.shape[0]}x{image.shape[1]} but was registered as "
                        f"{height}x{width}")
    return problems


def default_check_image(dataset, image_id, channels=None):
    """Problems of one image as a list of strings (empty when it is fine): load_image and
    load_mask must succeed, the image must be ``[H, W, channels]`` (``channels`` defaults to
    ``dataset.channel_count``), the masks ``[H, W, N]`` with N class ids."""
    want = int(channels if channels is not None else getattr(dataset, "channel_count", 3))
    try:
        image = np.asarray(dataset.load_image(image_id))
    except Exception as exc:  # noqa: BLE001 - every failure is reported
        return [_problem("image", exc)]
    problems = check_image_array(image, want)
    try:
        masks, class_ids = dataset.load_mask(image_id)
    except Exception as exc:  # noqa: BLE001
        return problems + [_problem("masks", exc)]
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[:2] != image.shape[:2]:
        problems.append(f"mask size differs from image: masks {masks.shape} for an image of "
                        f"{image.shape[0]}x{image.shape[1]}")
    elif len(np.atleast_1d(class_ids)) != masks.shape[2]:
        problems.append(f"{masks.shape[2]} masks but {len(np.atleast_1d(class_ids))} class ids")
    return problems


def check_image_and_labels(dataset, image_id, channels, load_labels, source=None):
    """Problems of one image whose instances come as a label map: decodes the image
    (``dataset.load_image``) and ``load_labels(image_id)`` (``[H, W]`` or ``[H, W, K]``) and
    compares their sizes, without building the ``[H, W, N]`` mask stack. With ``source``, an
    image registered under another source gets :func:`default_check_image` instead."""
    if source is not None and dataset.image_info[int(image_id)]["source"] != source:
        return default_check_image(dataset, image_id, channels)
    want = int(channels if channels is not None else getattr(dataset, "channel_count", 3))
    try:
        image = np.asarray(dataset.load_image(image_id))
    except Exception as exc:  # noqa: BLE001
        return [_problem("image", exc)]
    problems = check_image_array(image, want)
    try:
        labels = np.asarray(load_labels(image_id))
    except Exception as exc:  # noqa: BLE001
        return problems + [_problem("labels", exc)]
    if labels.shape[:2] != image.shape[:2]:
        problems.append(f"mask size differs from image: labels {labels.shape[:2]} for an image "
                        f"of {image.shape[0]}x{image.shape[1]}")
    return problems


def _check_one(dataset, image_id, channels):
    hook = getattr(dataset, "check_image", None)
    try:
        if hook is None:
            return default_check_image(dataset, image_id, channels)
        return list(hook(image_id, channels=channels))
    except Exception as exc:  # noqa: BLE001 - a failing hook is a bad image too
        return [_problem("check_image", exc)]


def _reference(dataset, image_id):
    try:
        ref = dataset.image_reference(image_id)
    except Exception:  # noqa: BLE001
        ref = ""
    return ref or str(dataset.image_info[image_id].get("id", image_id))


def find_bad_images(dataset, config=None, image_ids=None, workers=None):
    """[(image_id, reference, [problem, ...]), ...] for the bad images among ``image_ids``
    (default: all of ``dataset.image_ids``), in id order. ``config`` gives the expected channel
    count (``IMAGE_CHANNEL_COUNT``); ``workers``: threads (default min(8, CPU count)). The
    result is cached on the dataset (``_check_cache``) per id list and channel count, so
    repeated train() calls check once."""
    ids = [int(i) for i in (dataset.image_ids if image_ids is None else image_ids)]
    channels = None if config is None else int(config.IMAGE_CHANNEL_COUNT)
    # one check per dataset and id list: staged / time-budgeted training calls train() often
    cache = getattr(dataset, "_check_cache", None)
    key = (hash(tuple(ids)), len(ids), channels)
    if isinstance(cache, dict) and key in cache:
        return list(cache[key])
    workers = int(workers or min(8, os.cpu_count() or 1))
    if workers > 1 and len(ids) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda i: _check_one(dataset, i, channels), ids))
    else:
        results = [_check_one(dataset, i, channels) for i in ids]
    bad = [(i, _reference(dataset, i), problems) for i, problems in zip(ids, results) if problems]
    try:
        if not isinstance(cache, dict):
            cache = dataset._check_cache = {}
        cache[key] = list(bad)
    except (AttributeError, TypeError):  # a dataset that takes no attributes: no cache
        pass
    return bad


def check_dataset(dataset, config=None, skip_bad=None, image_ids=None, workers=None,
                  what=None):
    """Check every image (and its masks) of ``dataset`` before the first step.

    skip_bad: None -> ``config.SKIP_BAD_IMAGES`` (False without a config). image_ids: the ids
    to check (default all). what: name used in messages (default the dataset's class name).
    Returns ``dataset`` itself when nothing is skipped, else a shallow copy whose ``image_ids``
    are the checked ids without the bad ones. Raises :class:`BadImagesError` listing every bad
    file (or, when skipping, when no good image is left).
    """
    if skip_bad is None:
        skip_bad = bool(getattr(config, "SKIP_BAD_IMAGES", False))
    what = what or type(dataset).__name__
    ids = list(dataset.image_ids if image_ids is None else image_ids)
    bad = find_bad_images(dataset, config, ids, workers)
    if not bad:
        return dataset
    lines = "\n".join(f"  - image {i} ({ref}): {'; '.join(problems)}"
                      for i, ref, problems in bad)
    if not skip_bad:
        raise BadImagesError(
            f"{what}: {len(bad)} of {len(ids)} images are bad; fix or remove them, or skip them "
            "with check_dataset(..., skip_bad=True) / Config.SKIP_BAD_IMAGES = True / "
            f"--skip-bad-images:\n{lines}", bad)
    bad_ids = {i for i, _, _ in bad}
    good = np.array([i for i in ids if int(i) not in bad_ids], dtype=np.int64)
    if len(good) == 0:
        raise BadImagesError(f"{what}: all {len(ids)} images are bad:\n{lines}", bad)
    logger.warning("%s: skipping %d bad image(s) of %d (SKIP_BAD_IMAGES):\n%s", what, len(bad),
                   len(ids), lines)
    view = copy.copy(dataset)
    view._image_ids = good
    return view


def check_training_datasets(config, train_dataset, val_dataset=None):
    """:func:`check_dataset` on the training and (if given) validation datasets of
    ``MaskRCNN.train``; returns both (copies without the bad images when skipping)."""
    train_dataset = check_dataset(train_dataset, config, what="training dataset")
    if val_dataset is not None:
        val_dataset = check_dataset(val_dataset, config, what="validation dataset")
    return train_dataset, val_dataset
