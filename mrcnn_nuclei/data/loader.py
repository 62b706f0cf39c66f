"""Training data: :func:`load_image_gt` (one image) and :class:`TrainingLoader` (Keras PyDataset).

Order of operations per image (Matterport's): load image and masks -> resize by
IMAGE_RESIZE_MODE (crop mode: random crop) -> augment -> drop masks that became empty ->
boxes from masks -> RPN targets (with all GT instances) -> keep at most MAX_GT_INSTANCES ->
mini-masks -> mold (minus MEAN_PIXEL).

Differences from Matterport's generator, on purpose:

* Images without nuclei are kept (Matterport skipped them): their anchors are all negative
  candidates, so the RPN learns empty background; gt arrays are zero padding.
* More than MAX_GT_INSTANCES nuclei: with ``config.GT_OVERFLOW == "largest"`` (default) the
  largest by mask area are kept, with ``"random"`` a seeded random subset (Matterport); logged
  once per loader with the count.  RPN targets still use every nucleus.
* Every random choice (crop, augmentation, anchor sampling, overflow subset) is drawn from
  ``np.random.default_rng([seed, epoch, batch, slot])``, so a batch is the same whichever worker
  (thread or process) builds it.

Speed (measured by benchmarks/data_pipeline.py):

* the mask stack stays bit-packed (8 instances per uint8 channel) from loading to the mini-masks:
  it is only moved by nearest-neighbour geometry, and emptiness, boxes and mini-masks are read
  from the packed bits (a full [H, W, N] bool stack is only built when USE_MINI_MASK is off or
  for GT_OVERFLOW "largest");
* in crop mode only the crop's pixels are computed (image: its source region is resized; masks:
  its rows and columns are gathered).  Masks come out identical to resize_image/resize_mask on
  the whole image; images too with ``RESIZE_SEMANTICS = "matterport"`` (the same float64
  arithmetic), within +-1 grey level with "project" (float32 arithmetic; tests/test_loader.py);
* ``config.RESIZE_SEMANTICS`` is passed to every resize and mini-mask call;
* RPN targets enumerate only intersecting (anchor, box) pairs on the anchor grids;
* ``cache=True`` keeps decoded images and packed masks for later epochs.
"""

from __future__ import annotations

import logging
import threading

import keras
import numpy as np

from mrcnn_nuclei.boxes import get_anchors
from mrcnn_nuclei.data import image_ops as IO
from mrcnn_nuclei.data.augment import apply_augmentation, augment_packed
from mrcnn_nuclei.data.convert import invert_bright
from mrcnn_nuclei.data.targets import build_rpn_targets

__all__ = ["load_image_gt", "TrainingLoader", "select_gt"]

logger = logging.getLogger(__name__)


def _reference(dataset, image_id):
    try:
        return dataset.image_reference(image_id)
    except Exception:  # noqa: BLE001 - only used in error messages
        return f"image_id {image_id}"


def _load(dataset, config, image_id):
    ref = _reference(dataset, image_id)
    try:
        image = dataset.load_image(image_id)
        mask, class_ids = dataset.load_mask(image_id)
    except Exception as exc:
        raise RuntimeError(f"load_image_gt: failed to load image {image_id} ({ref}): "
                           f"{type(exc).__name__}: {exc}") from exc
    image = np.asarray(image)
    mask = np.asarray(mask)
    class_ids = np.asarray(class_ids, np.int32).reshape(-1)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"load_image_gt: image {image_id} ({ref}) must be [H, W, C] uint8, got "
                         f"{image.shape} {image.dtype}; convert it in load_image() "
                         "(mrcnn_nuclei.data.convert.to_uint8)")
    if image.shape[-1] != config.IMAGE_CHANNEL_COUNT:
        raise ValueError(f"load_image_gt: image {image_id} ({ref}) has {image.shape[-1]} channels "
                         f"but config.IMAGE_CHANNEL_COUNT is {config.IMAGE_CHANNEL_COUNT}")
    if mask.ndim != 3 or mask.shape[:2] != image.shape[:2] or mask.shape[-1] != len(class_ids):
        raise ValueError(f"load_image_gt: load_mask({image_id}) ({ref}) must return [H, W, N] "
                         f"masks of the image's size {image.shape[:2]} and N class ids; got "
                         f"masks {mask.shape} and {len(class_ids)} class ids")
    image = invert_bright(image, config.IMAGE_INVERT_BRIGHT)
    return image, mask.astype(bool, copy=False), class_ids


def _crop_region(n_in, n_full, start, count):
    """Source rows [lo, hi) that feed output rows start..start+count of an n_in -> n_full resize
    (bilinear neighbours and nearest rows both lie inside)."""
    f = n_in / n_full
    lo = max(0, int(np.floor((start + 0.5) * f - 0.5)) - 1)
    hi = min(n_in, int(np.floor((start + count - 0.5) * f + 0.5)) + 2)
    return lo, hi


def _resize_and_crop(image, config, rng):
    """resize_image() for config's mode; in crop mode only the needed region is resized (the same
    pixels as resizing everything, within +-1 grey level, since the bilinear map is local)."""
    mode = config.IMAGE_RESIZE_MODE
    semantics = config.RESIZE_SEMANTICS
    if mode != "crop":
        return IO.resize_image(image, min_dim=config.IMAGE_MIN_DIM, max_dim=config.IMAGE_MAX_DIM,
                               min_scale=config.IMAGE_MIN_SCALE, mode=mode, rng=rng,
                               semantics=semantics), None
    h, w = image.shape[:2]
    d = int(config.IMAGE_MIN_DIM)
    scale = max(1.0, d / min(h, w))
    if config.IMAGE_MIN_SCALE and scale < config.IMAGE_MIN_SCALE:
        scale = float(config.IMAGE_MIN_SCALE)
    nh, nw = int(round(h * scale)), int(round(w * scale))
    if nh < d or nw < d or scale == 1:
        return IO.resize_image(image, min_dim=d, max_dim=config.IMAGE_MAX_DIM,
                               min_scale=config.IMAGE_MIN_SCALE, mode="crop", rng=rng,
                               semantics=semantics), None
    y = int(rng.integers(0, nh - d + 1))
    x = int(rng.integers(0, nw - d + 1))
    ylo, yhi = _crop_region(h, nh, y, d)
    xlo, xhi = _crop_region(w, nw, x, d)
    if semantics == "matterport":  # the crop's window of Matterport's resize, bit for bit
        out = IO.resize_linear(image, (nh, nw), rows=(y, d), cols=(x, d)).astype(image.dtype)
    else:
        out = _resize_window(image, (nh, nw), (y, x, d, d), (ylo, yhi, xlo, xhi))
    window = (0, 0, d, d)
    padding = [(0, 0), (0, 0), (0, 0)]
    return (out, window, scale, padding, (y, x, d, d)), (ylo, yhi, xlo, xhi)


def _resize_window(image, full_shape, crop, region):
    """Bilinear resize of image to full_shape, evaluated only on the crop (y, x, h, w).

    Same sample positions as skimage's resize (pixel-centre aligned, order 1); the crop's source
    region is sliced first, so the cost is that of the crop, not of the full resized image.
    """
    h, w = image.shape[:2]
    nh, nw = full_shape
    y, x, ch, cw = crop
    ylo, yhi, xlo, xhi = region
    py = np.clip((np.arange(y, y + ch) + 0.5) * (h / nh) - 0.5, 0, h - 1)
    px = np.clip((np.arange(x, x + cw) + 0.5) * (w / nw) - 0.5, 0, w - 1)
    y0 = np.floor(py).astype(np.int64)
    x0 = np.floor(px).astype(np.int64)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    fy = (py - y0).astype(np.float32)[:, None, None]
    fx = (px - x0).astype(np.float32)[None, :, None]
    src = image[ylo:yhi, xlo:xhi].astype(np.float32)
    # separable: rows, then columns (np.take is much faster than fancy indexing on axis 1)
    top = np.take(src, y0 - ylo, axis=0)
    rows = top + (np.take(src, y1 - ylo, axis=0) - top) * fy
    left = np.take(rows, x0 - xlo, axis=1)
    out = left + (np.take(rows, x1 - xlo, axis=1) - left) * fx
    out += 0.5  # round half up, then truncate
    np.clip(out, 0, 255, out=out)
    return out.astype(image.dtype)


def select_gt(n, max_instances, mode, rng, areas=None):
    """Indices of the instances kept when there are more than ``max_instances``.

    n: instance count; mode: "largest" (needs ``areas`` [N], ties by lower index) or "random"
    (``rng``).  Returns sorted int64 indices ([N] of all when n <= max_instances).
    """
    if n <= max_instances:
        return np.arange(n)
    if mode == "largest":
        if areas is None or len(areas) != n:
            raise ValueError("select_gt: mode 'largest' needs the N instance areas")
        return np.sort(np.argsort(-np.asarray(areas), kind="stable")[:max_instances])
    return np.sort(rng.choice(n, max_instances, replace=False))


def load_image_gt(dataset, config, image_id, augmentation=None, rng=None):
    """Load one training image with its ground truth (Matterport semantics).

    dataset: a prepared Dataset; config: Config; image_id: internal id; augmentation: an
    albumentations transform or imgaug augmenter (must keep the image shape); rng:
    ``np.random.Generator`` for the crop and the augmentation.
    Returns image [H, W, C] uint8, image_meta [IMAGE_META_SIZE] float32, class_ids [N] int32,
    bbox [N, 4] int32 (pixel boxes, y2/x2 exclusive), mask [h, w, N] bool (MINI_MASK_SHAPE when
    USE_MINI_MASK, else H, W).  N may be 0.
    """
    image, packed, n, channels, class_ids, info = _load_image_gt(dataset, config, image_id,
                                                                 augmentation, rng)
    bbox = IO.packed_bboxes(packed, channels)
    mask = _gt_masks(config, packed, n, channels, bbox)
    return image, _meta(dataset, config, image_id, info), class_ids, bbox, mask


def _meta(dataset, config, image_id, info):
    original_shape, image_shape, window, scale = info
    n = getattr(dataset, "num_classes", config.NUM_CLASSES)
    active = np.zeros([n], np.int32)
    source = dataset.image_info[image_id]["source"]
    active[dataset.source_class_ids[source]] = 1
    return IO.compose_image_meta(image_id, original_shape, image_shape, window, scale, active)


def _load_packed(dataset, config, image_id, cache=None):
    """(image, packed masks [H, W, ceil(N/8)] uint8, class_ids [N], N), from ``cache`` if given."""
    if cache is not None:
        item = cache.get(image_id)
        if item is not None:
            return item
    image, mask, class_ids = _load(dataset, config, image_id)
    n = mask.shape[-1]
    packed = np.packbits(mask, axis=-1) if n else np.zeros(mask.shape[:2] + (0,), np.uint8)
    item = (image, packed, class_ids, n)
    if cache is not None:
        for arr in item[:3]:
            arr.setflags(write=False)
        cache[image_id] = item
    return item


def _load_image_gt(dataset, config, image_id, augmentation, rng, cache=None):
    """Shared body of load_image_gt and TrainingLoader.

    Returns image [H, W, C] uint8, packed [H, W, ceil(n/8)] uint8 (bit-packed masks), n,
    channels [K] (indices of the non-empty instances in packed), class_ids [K], meta info.
    """
    rng = np.random.default_rng() if rng is None else rng
    image, packed, class_ids, n = _load_packed(dataset, config, image_id, cache)
    original_shape = image.shape
    (image, window, scale, padding, crop), _ = _resize_and_crop(image, config, rng)
    # nearest-neighbour resize/crop of 8 instances per byte; in crop mode only the crop's rows
    # and columns are gathered
    packed = IO.resize_mask(packed, scale, padding, crop, semantics=config.RESIZE_SEMANTICS)
    if packed.shape[:2] != image.shape[:2]:
        raise AssertionError("resized masks and image disagree in shape")
    if augmentation is not None:
        shape = image.shape
        done = augment_packed(image, packed, augmentation, rng=rng)
        if done is not None:  # mask-safe albumentations pipeline: stay packed
            image, packed = done
        else:
            mask = np.unpackbits(packed, axis=-1, count=n).view(bool)
            image, mask, kept = apply_augmentation(image, mask, augmentation, rng=rng)
            class_ids, n = class_ids[kept], len(kept)
            packed = np.packbits(mask, axis=-1) if n else np.zeros(mask.shape[:2] + (0,), np.uint8)
        if image.shape != shape:
            raise ValueError(f"load_image_gt: the augmentation changed the image shape from "
                             f"{shape} to {image.shape}; training batches need a fixed shape "
                             "(drop crops/resizes from it, e.g. "
                             "default_augmentation(crop_size=None))")
    # instances that the crop or the augmentation left empty are dropped
    channels = np.flatnonzero(IO.packed_nonempty(packed, n))
    return image, packed, n, channels, class_ids[channels], \
        (original_shape, image.shape, window, scale)


def _gt_masks(config, packed, n, channels, bbox):
    if config.USE_MINI_MASK:
        return IO.packed_minimize_mask(bbox, packed, channels, config.MINI_MASK_SHAPE,
                                       semantics=config.RESIZE_SEMANTICS)
    return IO.packed_unpack(packed, channels, n)


class TrainingLoader(keras.utils.PyDataset):
    """Training batches for ``keras_model.fit`` (the dict of docs/INTERFACES.md).

    dataset: prepared Dataset; config: Config (BATCH_SIZE, shapes, anchors, MAX_GT_INSTANCES,
    GT_OVERFLOW, USE_MINI_MASK); shuffle: reshuffle the image order every epoch; augmentation:
    albumentations/imgaug pipeline or None; seed: int (default config.SEED, else random);
    workers / use_multiprocessing / max_queue_size: Keras PyDataset options; cache: keep every
    decoded image and its bit-packed masks in memory after the first load (original resolution;
    about 0.5 MB per 256x256 DSB image, tens of MB for the largest), so later epochs skip
    decoding.  The cache lives in this process: it serves workers=1 and thread workers; process
    workers (use_multiprocessing) start every epoch with an empty one.
    steps_per_epoch: batches per epoch (e.g. config.STEPS_PER_EPOCH); default
    max(1, num_images // (BATCH_SIZE * shard count)), one pass over the images.  Beyond one
    pass the images are reshuffled for each further pass, and every batch gets its own random
    draws.
    shard: ``(index, count)``: this loader yields slice ``index`` of ``count`` (BATCH_SIZE images
    each) of every global batch of ``count * BATCH_SIZE`` images, with the draws the whole-batch
    loader makes for them (multi-process data-parallel training: every process loads the same
    dataset with the same seed; :func:`mrcnn_nuclei.distribute.process_shard`); default (0, 1).
    ``len(loader)`` = steps per epoch; ``loader[i]`` is batch i of the current epoch (images
    wrap around when the dataset is smaller than a batch).
    """

    def __init__(self, dataset, config, shuffle=True, augmentation=None, seed=None, workers=1,
                 use_multiprocessing=False, max_queue_size=10, cache=False, steps_per_epoch=None,
                 shard=None):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing,
                         max_queue_size=max_queue_size)
        ids = np.asarray(getattr(dataset, "image_ids", []))
        if len(ids) == 0:
            raise ValueError("TrainingLoader: the dataset has no images; call dataset.load(...) "
                             "and dataset.prepare() first")
        n_classes = getattr(dataset, "num_classes", config.NUM_CLASSES)
        if n_classes != config.NUM_CLASSES:
            raise ValueError(f"TrainingLoader: the dataset has {n_classes} classes (with BG) but "
                             f"config.NUM_CLASSES is {config.NUM_CLASSES}; make them equal")
        self.dataset = dataset
        self.config = config
        self.shuffle = bool(shuffle)
        self.augmentation = augmentation
        if seed is None:
            seed = config.SEED
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        self.seed = int(seed)
        self.epoch = 0
        self.image_ids = ids
        if steps_per_epoch is not None and int(steps_per_epoch) < 1:
            raise ValueError(f"TrainingLoader: steps_per_epoch must be positive, got "
                             f"{steps_per_epoch}")
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        self.shard_index, self.shard_count = (int(v) for v in (shard or (0, 1)))
        if not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"TrainingLoader: shard must be (index, count) with 0 <= index < "
                             f"count, got {shard}")
        self._orders = {}
        self._overflow_logged = False
        self._lock = threading.Lock()
        self._cache = {} if cache else None

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_lock", None)
        if state.get("_cache") is not None:
            state["_cache"] = {}  # not shipped to worker processes
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _pass_length(self):
        return max(1, len(self.image_ids) // (self.config.BATCH_SIZE * self.shard_count))

    def _order(self, pass_index):
        """Image order of one pass over the dataset in the current epoch."""
        key = (self.epoch, pass_index)
        order = self._orders.get(key)
        if order is None:
            if not self.shuffle:
                order = self.image_ids.copy()
            else:
                order = np.random.default_rng([self.seed, self.epoch, pass_index, 0x5EED]) \
                    .permutation(self.image_ids)
            self._orders = {k: v for k, v in self._orders.items() if k[0] == self.epoch}
            self._orders[key] = order
        return order

    def __len__(self):
        return self.steps_per_epoch or self._pass_length()

    def on_epoch_end(self):
        """Advance the epoch counter (new order, new random draws)."""
        self.epoch += 1
        self._orders = {}

    def _log_overflow(self, image_id, n):
        with self._lock:
            if self._overflow_logged:
                return
            self._overflow_logged = True
        logger.warning("image %s (%s) has %d instances, more than MAX_GT_INSTANCES = %d: keeping "
                       "%s (GT_OVERFLOW); logged once per loader", image_id,
                       _reference(self.dataset, image_id), n, self.config.MAX_GT_INSTANCES,
                       "the largest" if self.config.GT_OVERFLOW == "largest" else "a random subset")

    def build_item(self, image_id, rng):
        """Arrays of one image: molded image, meta, rpn_match, rpn_bbox, gt ids/boxes/masks."""
        cfg = self.config
        image, packed, n, channels, class_ids, info = _load_image_gt(
            self.dataset, cfg, image_id, self.augmentation, rng, self._cache)
        bbox = IO.packed_bboxes(packed, channels)
        anchors = get_anchors(cfg, image.shape)
        rpn_match, rpn_bbox = build_rpn_targets(anchors, class_ids, bbox, cfg, rng=rng,
                                                image_shape=image.shape)
        if len(class_ids) > cfg.MAX_GT_INSTANCES:
            self._log_overflow(image_id, len(class_ids))
            areas = IO.packed_unpack(packed, channels, n).sum(axis=(0, 1)) \
                if cfg.GT_OVERFLOW == "largest" else None
            keep = select_gt(len(class_ids), cfg.MAX_GT_INSTANCES, cfg.GT_OVERFLOW, rng, areas)
            class_ids, bbox, channels = class_ids[keep], bbox[keep], channels[keep]
        mask = _gt_masks(cfg, packed, n, channels, bbox)
        meta = _meta(self.dataset, cfg, image_id, info)
        return image, meta, rpn_match, rpn_bbox, class_ids, bbox, mask

    def __getitem__(self, index):
        cfg = self.config
        if not 0 <= index < len(self):
            raise IndexError(f"TrainingLoader: batch {index} out of range (len {len(self)})")
        b = cfg.BATCH_SIZE
        pass_index, j = divmod(index, self._pass_length())
        order = self._order(pass_index)
        n = len(order)
        g = b * self.shard_count                               # the global batch
        ks = range(self.shard_index * b, (self.shard_index + 1) * b)   # this shard's positions
        ids = [int(order[(j * g + k) % n]) for k in ks]
        items = [self.build_item(image_id, np.random.default_rng([self.seed, self.epoch, index, k]))
                 for k, image_id in zip(ks, ids)]  # loop over the BATCH_SIZE images
        shapes = {it[0].shape for it in items}
        if len(shapes) > 1:
            raise ValueError(f"TrainingLoader: images of one batch differ in shape {sorted(shapes)}"
                             f" (IMAGE_RESIZE_MODE {cfg.IMAGE_RESIZE_MODE!r}); use 'crop' or "
                             "'square', or IMAGES_PER_GPU = 1")
        h, w, c = items[0][0].shape
        m = cfg.MAX_GT_INSTANCES
        mh, mw = (cfg.MINI_MASK_SHAPE if cfg.USE_MINI_MASK else (h, w))
        a = len(items[0][2])
        batch = {
            "input_image": np.zeros((b, h, w, c), np.float32),
            "input_image_meta": np.zeros((b, cfg.IMAGE_META_SIZE), np.float32),
            "input_rpn_match": np.zeros((b, a, 1), np.int32),
            "input_rpn_bbox": np.zeros((b, cfg.RPN_TRAIN_ANCHORS_PER_IMAGE, 4), np.float32),
            "input_gt_class_ids": np.zeros((b, m), np.int32),
            "input_gt_boxes": np.zeros((b, m, 4), np.float32),
            "input_gt_masks": np.zeros((b, mh, mw, m), bool),
        }
        for k, (image, meta, rpn_match, rpn_bbox, class_ids, bbox, mask) in enumerate(items):
            g = len(class_ids)
            batch["input_image"][k] = IO.mold_image(image, cfg)
            batch["input_image_meta"][k] = meta
            batch["input_rpn_match"][k, :, 0] = rpn_match
            batch["input_rpn_bbox"][k] = rpn_bbox
            batch["input_gt_class_ids"][k, :g] = class_ids
            batch["input_gt_boxes"][k, :g] = bbox
            batch["input_gt_masks"][k, :, :, :g] = mask
        return batch
