"""Distance U-Net: regresses a per-nucleus distance map (the Mask R-CNN+ extra channel).

Architecture (:func:`build_unet`): ``depth`` encoder levels, each two 3x3 ReLU convolutions with
dropout between them followed by 2x2 max pooling; a bottleneck of two convolutions; ``depth``
decoder levels, each a 2x2 stride-2 ``Conv2DTranspose`` upsampling, concatenation with the encoder
skip, and two convolutions with dropout between them; a linear 1x1 convolution to one channel.
Filters double per level from ``base_filters``.  He-normal initialisation, MSE loss, Adam(1e-3);
:func:`step_decay` divides the learning rate by 10 every 25 epochs.  Inputs: float32 images scaled
to 0..1 (``image / 255``), height and width multiples of ``2**depth`` (32 by default):
:func:`predict_distance` pads or tiles any other size and crops back.

Target (:func:`distance_target`): the Euclidean distance transform of each instance on its own (a
pixel's distance to the nearest pixel outside ITS nucleus or outside the image, so touching nuclei
keep separate maxima), normalised so that every instance's maximum is 1 (``"per_instance_max"``, the default),
or left in pixels (``"none"``).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from scipy import ndimage

from .metrics import masks_to_label

__all__ = ["build_unet", "step_decay", "lr_callback", "distance_target", "masks_to_labels",
           "DistanceSequence", "train_unet", "predict_distance"]


# ---------------------------------------------------------------------------- model
def build_unet(input_channels=3, base_filters=32, depth=5, dropout=0.1, learning_rate=1e-3,
               compile=True, name="distance_unet"):
    """Distance U-Net -> keras.Model mapping [B, H, W, input_channels] to [B, H, W, 1].

    H and W must be multiples of ``2**depth``.  Compiled with MSE and Adam(``learning_rate``)
    unless ``compile=False``.
    """
    from keras import layers

    if int(depth) < 1 or int(base_filters) < 1 or int(input_channels) < 1:
        raise ValueError(f"build_unet: depth={depth}, base_filters={base_filters}, "
                         f"input_channels={input_channels} must all be positive integers")
    init = "he_normal"

    def conv_pair(x, filters, tag):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                          kernel_initializer=init, name=f"{tag}_conv1")(x)
        x = layers.Dropout(dropout, name=f"{tag}_drop")(x)
        return layers.Conv2D(filters, 3, padding="same", activation="relu",
                             kernel_initializer=init, name=f"{tag}_conv2")(x)

    inputs = keras.Input((None, None, int(input_channels)), name="input_image")
    x = inputs
    skips = []
    for level in range(depth):
        x = conv_pair(x, base_filters * 2 ** level, f"enc{level + 1}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level + 1}_pool")(x)
    x = conv_pair(x, base_filters * 2 ** depth, "bottleneck")
    for level in reversed(range(depth)):
        filters = base_filters * 2 ** level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same",
                                   kernel_initializer=init, activation="relu",
                                   name=f"dec{level + 1}_up")(x)
        x = layers.Concatenate(name=f"dec{level + 1}_concat")([x, skips[level]])
        x = conv_pair(x, filters, f"dec{level + 1}")
    outputs = layers.Conv2D(1, 1, activation="linear", kernel_initializer=init,
                            name="distance")(x)
    model = keras.Model(inputs, outputs, name=name)
    if compile:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    return model


def step_decay(initial=1e-3, drop_every=25, factor=0.1):
    """Schedule f(epoch, lr=None) -> initial * factor ** (epoch // drop_every)."""
    def schedule(epoch, lr=None):
        return float(initial * factor ** (int(epoch) // int(drop_every)))
    return schedule


def lr_callback(initial=1e-3, drop_every=25, factor=0.1):
    """keras LearningRateScheduler applying :func:`step_decay`."""
    return keras.callbacks.LearningRateScheduler(step_decay(initial, drop_every, factor))


# ---------------------------------------------------------------------------- targets
def masks_to_labels(masks):
    """Instance stack [H, W, N] (nonzero = inside) -> label image [H, W] int32: the package's one
    conversion, :func:`mrcnn_nuclei.metrics.masks_to_label` (where masks overlap the earlier
    channel wins)."""
    return masks_to_label(np.asarray(masks) != 0)


def distance_target(label_image, normalise="per_instance_max"):
    """Per-instance Euclidean distance map: label image [H, W] int -> [H, W] float32.

    Each pixel gets its distance to the nearest pixel not in its own instance (pixels outside the
    image count as background, so a nucleus cut by the border peaks inside).  ``normalise``: ``"per_instance_max"`` (each instance's maximum is
    1) or ``"none"`` (pixels).  An instance stack [H, W, N] bool is accepted too.
    """
    labels = np.asarray(label_image)
    if labels.ndim == 3:
        labels = masks_to_labels(labels)
    if labels.ndim != 2:
        raise ValueError(f"label_image: expected [H, W] labels or [H, W, N] masks, got "
                         f"shape {labels.shape}")
    if normalise not in ("per_instance_max", "none"):
        raise ValueError(f"normalise={normalise!r}: use 'per_instance_max' or 'none'")
    labels = labels.astype(np.int64, copy=False)
    out = np.zeros(labels.shape, np.float32)
    # one EDT per instance on its bounding crop padded by one background pixel
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        crop = np.pad(labels[sl] == index, 1)
        dist = ndimage.distance_transform_edt(crop)[1:-1, 1:-1]
        inside = crop[1:-1, 1:-1]
        out[sl][inside] = dist[inside]
    if normalise == "per_instance_max" and labels.max() > 0:
        peaks = ndimage.maximum(out, labels, np.arange(labels.max() + 1))
        peaks = np.asarray(peaks, np.float32)
        peaks[peaks <= 0] = 1.0
        out = np.where(labels > 0, out / peaks[labels], 0.0).astype(np.float32)
    return out


# ---------------------------------------------------------------------------- data
def _load_pair(dataset, image_id, channels):
    """(image [H, W, channels] as stored (uint8 kept: 4x less memory), target [H, W] float32)."""
    image = np.asarray(dataset.load_image(image_id))
    if image.ndim == 2:
        image = image[..., None]
    image = image[..., :channels]
    if image.shape[-1] < channels:
        image = np.repeat(image[..., :1], channels, axis=-1)
    masks, _ = dataset.load_mask(image_id)
    if masks.shape[:2] != image.shape[:2]:
        raise ValueError(f"image {image_id} of {type(dataset).__name__}: masks {masks.shape[:2]} "
                         f"and image {image.shape[:2]} differ in size")
    return image, distance_target(masks_to_labels(masks))


def _pad_to(array, height, width):
    ph, pw = max(0, height - array.shape[0]), max(0, width - array.shape[1])
    if ph == 0 and pw == 0:
        return array
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode="reflect" if min(array.shape[:2]) > 1 else "edge")


class DistanceSequence(keras.utils.PyDataset):
    """keras PyDataset of (x [B, c, c, channels] float32 0..1, y [B, c, c, 1]) random crops.

    ``dataset`` is any Matterport-style Dataset (load_image, load_mask, image_ids); uint8 images
    are scaled by 1/255, float images are used as they are.  Pairs are loaded on first use and
    cached; crops, flips and 90-degree rotations are drawn from a generator seeded
    by (``seed``, epoch, batch index), so a run repeats exactly.  Images smaller than the crop are
    reflect-padded.
    """

    def __init__(self, dataset, image_ids=None, batch_size=2, crop_size=256, steps=None,
                 channels=3, seed=0, augment=True):
        super().__init__()
        if crop_size % 32:
            raise ValueError(f"crop_size={crop_size}: must be a multiple of 32 for the U-Net")
        ids = list(dataset.image_ids if image_ids is None else image_ids)
        if not ids:
            raise ValueError("DistanceSequence: the dataset has no images (call prepare()?)")
        self.dataset, self.ids, self.channels = dataset, ids, int(channels)
        self._cache = {}
        self.batch_size, self.crop_size = int(batch_size), int(crop_size)
        self.seed, self.augment = seed, augment
        self.steps = int(steps or max(1, math.ceil(len(ids) / batch_size)))
        self.epoch = 0

    def pair(self, index):
        """(image, distance target) of ``ids[index]``, loaded on first use and cached."""
        if index not in self._cache:
            self._cache[index] = _load_pair(self.dataset, self.ids[index], self.channels)
        return self._cache[index]

    def __len__(self):
        return self.steps

    def on_epoch_end(self):
        self.epoch += 1

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        c = self.crop_size
        xs, ys = [], []
        for _ in range(self.batch_size):
            image, target = self.pair(int(rng.integers(len(self.ids))))
            image, target = _pad_to(image, c, c), _pad_to(target, c, c)
            y0 = rng.integers(image.shape[0] - c + 1)
            x0 = rng.integers(image.shape[1] - c + 1)
            x, y = image[y0:y0 + c, x0:x0 + c], target[y0:y0 + c, x0:x0 + c]
            if self.augment:
                k = rng.integers(4)
                x, y = np.rot90(x, k), np.rot90(y, k)
                if rng.random() < 0.5:
                    x, y = x[:, ::-1], y[:, ::-1]
            xs.append(x)
            ys.append(y[..., None])
        x = np.stack(xs)
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        return x, np.stack(ys).astype(np.float32)


def train_unet(model, dataset, epochs=80, batch_size=2, crop_size=256, steps_per_epoch=None,
               val_dataset=None, seed=0, initial_lr=1e-3, callbacks=(), verbose=1):
    """Fit ``model`` on distance targets of ``dataset``; LR / 10 every 25 epochs. -> History."""
    channels = int(model.input_shape[-1])
    train = DistanceSequence(dataset, batch_size=batch_size, crop_size=crop_size,
                             steps=steps_per_epoch, channels=channels, seed=seed)
    val = None
    if val_dataset is not None:
        val = DistanceSequence(val_dataset, batch_size=batch_size, crop_size=crop_size,
                               channels=channels, seed=seed + 1, augment=False)
    return model.fit(train, validation_data=val, epochs=int(epochs), verbose=verbose,
                     callbacks=[lr_callback(initial_lr)] + list(callbacks))


# ---------------------------------------------------------------------------- inference
def _as_input(image, channels):
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"image: expected [H, W, C], got shape {image.shape}")
    if image.shape[-1] < channels:
        image = np.repeat(image[..., :1], channels, axis=-1)
    image = image[..., :channels]
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return image.astype(np.float32)


def _run(model, x, multiple):
    """Reflect-pad [h, w, c] up to multiples of ``multiple``, predict, crop -> [h, w]."""
    h, w = x.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if min(h, w) > 1 else "edge"
        x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode=mode)
    y = model.predict(x[None], verbose=0)
    return np.asarray(y)[0, :h, :w, 0]


def predict_distance(model, image, tile_size=512, overlap=64, multiple=32):
    """Distance map of one image: [H, W, C] (uint8 -> /255, or float 0..1) -> [H, W] float32.

    Images up to ``tile_size`` on both sides are reflect-padded to a multiple of ``multiple`` and
    cropped back.  Larger ones are cut into ``tile_size`` tiles overlapping by ``overlap``
    (:func:`mrcnn_nuclei.inference.tiling.tile_grid`); each output pixel comes from the tile whose
    core holds it (cores end halfway through each overlap, away from the tiles' cut edges).
    """
    if tile_size % multiple:
        raise ValueError(f"tile_size={tile_size} must be a multiple of {multiple}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap={overlap} must be in [0, tile_size={tile_size})")
    x = _as_input(image, int(model.input_shape[-1]))
    h, w = x.shape[:2]
    if h <= tile_size and w <= tile_size:
        return _run(model, x, multiple).astype(np.float32)
    from .inference.tiling import tile_grid

    out = np.zeros((h, w), np.float32)
    for (y0, y1, cy0, cy1) in tile_grid(h, tile_size, overlap):
        for (x0, x1, cx0, cx1) in tile_grid(w, tile_size, overlap):
            pred = _run(model, x[y0:y1, x0:x1], multiple)
            out[cy0:cy1, cx0:cx1] = pred[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    return out

