"""Mask R-CNN+ inputs: RGB + hematoxylin channel + distance map (5 channels).

:class:`PlusDataset` wraps any Dataset.  ``load_image`` returns ``[H, W, 5]`` uint8:

* channels 0-2: the base dataset's RGB image;
* channel 3: :func:`mrcnn_nuclei.stain.hematoxylin_channel` (fixed H range 0..0.25 -> 0..255);
* channel 4: a per-instance distance map scaled to 0..255 (each nucleus peaks at 255): from the
  ground-truth masks (``distance_source="gt"``, training) or from a callable
  ``f(rgb [H, W, 3] uint8) -> [H, W] float`` in 0..1 (inference), e.g.
  :func:`unet_distance_source` around a trained distance U-Net.

``load_mask`` and all the bookkeeping (``image_ids``, ``image_info``, ``class_names``, ...) are
the base dataset's.  Augment with ``mrcnn_nuclei.data.augment.default_augmentation(channels=5)``
(hue/saturation jitter needs 3 channels and is left out); its brightness/contrast/blur act on all
five channels, so the H channel is not recomputed from the jittered colours (a known
simplification).

:func:`plus_config` / :class:`PlusConfig` turn a config into the Mask R-CNN+ one:
``IMAGE_CHANNEL_COUNT = 5``, ``PREPROC_CONV = True`` (a 1x1 ``PREPROC`` convolution maps the 5
channels to 3 before ``conv1``, so RGB weights load into everything else) and ``MEAN_PIXEL`` = the
base RGB means + :data:`PLUS_MEAN_H` and :data:`PLUS_MEAN_DISTANCE`.  These two defaults are the
means over the 13 MoNuSeg H&E training tiles of ../shared (H channel 33.5, ground-truth distance
channel 20.9).  On DSB2018 (mostly dark-background fluorescence, where dark pixels read as
"hematoxylin") the means are about 195 and 14: pass ``h_mean``/``distance_mean`` for such data.
"""

from __future__ import annotations

import numpy as np

from ..data.dataset import Dataset
from ..stain import hematoxylin_channel
from ..unet import distance_target, masks_to_labels

__all__ = ["PlusDataset", "PlusConfig", "plus_config", "unet_distance_source", "plus_channels",
           "PLUS_MEAN_H", "PLUS_MEAN_DISTANCE"]

PLUS_MEAN_H = 33.5
PLUS_MEAN_DISTANCE = 20.9


def _rgb(image, where):
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"{where}: expected an image [H, W, C], got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8, got {image.dtype}")
    if image.shape[-1] < 3:
        image = np.repeat(image[..., :1], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def plus_channels(rgb, distance):
    """Stack RGB [H, W, 3] uint8, its H channel and ``distance`` [H, W] float 0..1 -> [H, W, 5]."""
    rgb = _rgb(rgb, "plus_channels(rgb)")
    distance = np.asarray(distance, np.float32)
    if distance.shape != rgb.shape[:2]:
        raise ValueError(f"plus_channels: distance map {distance.shape} does not match the image "
                         f"{rgb.shape[:2]}")
    dist8 = np.clip(np.rint(np.nan_to_num(distance) * 255.0), 0, 255).astype(np.uint8)
    return np.concatenate([rgb, hematoxylin_channel(rgb)[..., None], dist8[..., None]], axis=-1)


def unet_distance_source(model, **predict_kwargs):
    """Callable rgb [H, W, 3] uint8 -> [H, W] float32 distance (0..1) from a distance U-Net."""
    from ..unet import predict_distance

    def source(rgb):
        return np.clip(predict_distance(model, rgb, **predict_kwargs), 0.0, 1.0)

    return source


class PlusDataset(Dataset):
    """Wrap ``base_dataset`` so that ``load_image`` returns the 5 Mask R-CNN+ channels.

    distance_source: ``"gt"`` (distance map of the ground-truth masks) or a callable
    ``f(rgb [H, W, 3] uint8) -> [H, W] float`` in 0..1.
    """

    channel_count = 5

    def __init__(self, base_dataset, distance_source="gt"):
        # no Dataset.__init__: the tables are the base dataset's (see __getattr__)
        if not (hasattr(base_dataset, "load_image") and hasattr(base_dataset, "load_mask")):
            raise TypeError(f"PlusDataset: base_dataset ({type(base_dataset).__name__}) needs "
                            "load_image() and load_mask()")
        if not (distance_source == "gt" or callable(distance_source)):
            raise ValueError(f"PlusDataset: distance_source={distance_source!r}; use 'gt' or a "
                             "callable rgb -> [H, W] float (e.g. unet_distance_source(model))")
        self.base = base_dataset
        self.distance_source = distance_source

    def __getattr__(self, name):
        # only called for attributes not found on the wrapper: image_info, class_info,
        # _image_ids, num_classes, class_names, ... live on the base dataset
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def prepare(self, class_map=None):
        """Prepare the base dataset (the wrapper shares its tables)."""
        self.base.prepare(class_map)

    def load_image(self, image_id):
        """[H, W, 5] uint8: RGB, H channel, distance map (0..255)."""
        rgb = _rgb(self.base.load_image(image_id), f"image {image_id} of {type(self.base).__name__}")
        if self.distance_source == "gt":
            masks, _ = self.base.load_mask(image_id)
            distance = distance_target(masks_to_labels(masks))
        else:
            distance = self.distance_source(rgb)
        return plus_channels(rgb, distance)

    def load_mask(self, image_id):
        """The base dataset's masks: ([H, W, N] bool, [N] int32)."""
        return self.base.load_mask(image_id)

    def check_image(self, image_id, channels=None):
        """The base dataset's check (its RGB files and masks); the two computed channels are
        not checked (a distance source is not run here)."""
        if channels is not None and int(channels) != 5:
            return [f"wrong channel count: PlusDataset gives 5 channels, expected {channels}"]
        from ..data.checks import _check_one

        return _check_one(self.base, image_id, None)

    def image_reference(self, image_id):
        """The base dataset's reference."""
        return self.base.image_reference(image_id)

    def source_image_link(self, image_id):
        """The base dataset's link."""
        return self.base.source_image_link(image_id)

    def __len__(self):
        return len(self.base)

    def __repr__(self):
        return f"<PlusDataset of {self.base!r}, distance={'gt' if self.distance_source == 'gt' else 'callable'}>"


class PlusConfig:
    """Mixin: ``class MyPlus(PlusConfig, NucleusConfig)`` -> 5 channels, PREPROC, 5 means.

    A 3-value MEAN_PIXEL of the other base is extended with ``PLUS_MEAN_H`` and
    ``PLUS_MEAN_DISTANCE`` (override the class attributes of the same names to change them).
    """

    IMAGE_CHANNEL_COUNT = 5
    PREPROC_CONV = True
    PLUS_MEAN_H = PLUS_MEAN_H
    PLUS_MEAN_DISTANCE = PLUS_MEAN_DISTANCE

    def __init__(self):
        mean = np.asarray(self.MEAN_PIXEL, np.float64).ravel()
        if len(mean) == 3:
            self.MEAN_PIXEL = np.concatenate([mean, [self.PLUS_MEAN_H, self.PLUS_MEAN_DISTANCE]])
        super().__init__()


def plus_config(base_config_class, h_mean=PLUS_MEAN_H, distance_mean=PLUS_MEAN_DISTANCE,
                name=None):
    """Subclass of ``base_config_class`` for Mask R-CNN+ (5 channels, PREPROC, 5 MEAN_PIXEL)."""
    rgb = np.asarray(base_config_class.MEAN_PIXEL, np.float64).ravel()[:3]
    if len(rgb) != 3:
        raise ValueError(f"plus_config: {base_config_class.__name__}.MEAN_PIXEL needs the 3 RGB "
                         "means first")
    attrs = {"IMAGE_CHANNEL_COUNT": 5, "PREPROC_CONV": True,
             "MEAN_PIXEL": np.concatenate([rgb, [float(h_mean), float(distance_mean)]])}
    return type(name or f"Plus{base_config_class.__name__}", (base_config_class,), attrs)
