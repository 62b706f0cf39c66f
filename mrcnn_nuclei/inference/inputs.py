"""Check what a caller hands to ``MaskRCNN.detect`` / ``detect_soft`` / ``detect_molded``.

``detect`` takes a LIST of images, each ``[H, W]`` or ``[H, W, C]`` (channels last).  Two easy
mistakes used to give wrong results silently:

* one bare image ``detect(image)``: iterating a ``[H, W, C]`` array yields its H rows, so detect
  returned H results for "images" of one row each;
* a channels-first image ``[C, H, W]`` (PyTorch / tifffile order): read as an image of C rows.

Both now raise a ``ValueError`` that says what to pass.  A 4-D array ``[N, H, W, C]`` is taken as a
batch of N images (as a list of them would be).  An image is "channels-first" when its first axis
has a channel count (1-4 or ``IMAGE_CHANNEL_COUNT``) and its last axis does not.
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_detect_images", "check_molded_images"]


def _channel_counts(channels):
    return {1, 2, 3, 4, int(channels)}


def _looks_channels_first(shape, channels):
    counts = _channel_counts(channels)
    return len(shape) == 3 and shape[0] in counts and shape[2] not in counts


def check_detect_images(images, channels, fn="detect"):
    """``images`` as given to ``fn()`` -> list of arrays, each ``[H, W]`` or ``[H, W, C]``.

    Raises ValueError for one bare image, a channels-first image, or an image that is not 2-D
    or 3-D, naming the fix.
    """
    shape = getattr(images, "shape", None)
    if shape is not None and not isinstance(images, (list, tuple)):
        shape = tuple(int(s) for s in shape)
        if len(shape) in (2, 3):
            hint = ""
            if _looks_channels_first(shape, channels):
                hint = (f"; it also looks channels-first {shape}: pass "
                        "[np.moveaxis(image, 0, -1)]")
            raise ValueError(f"{fn}() takes a list of images; got one array of shape {shape}: "
                             f"pass [image]{hint}")
        if len(shape) != 4:
            raise ValueError(f"{fn}() takes a list of [H, W] or [H, W, C] images (or one "
                             f"[N, H, W, C] batch); got an array of shape {shape}")
    try:
        images = list(images)
    except TypeError:
        raise ValueError(f"{fn}() takes a list of images, got {type(images).__name__}") from None
    for i, image in enumerate(images):
        shape = tuple(np.shape(image))
        if len(shape) not in (2, 3):
            raise ValueError(f"{fn}(): image #{i} has shape {shape}; each image must be [H, W] or "
                             "[H, W, C] (pass a list of images, e.g. [image])")
        if _looks_channels_first(shape, channels):
            raise ValueError(f"{fn}(): image #{i} of shape {shape} looks channels-first "
                             f"(C, H, W): pass np.moveaxis(image, 0, -1) (shape "
                             f"{shape[1:] + shape[:1]})")
    return images


def check_molded_images(molded_images, channels, fn="detect_molded"):
    """``molded_images`` ([N, H, W, C] array or list of [H, W, C]) -> list of float32 arrays."""
    shape = getattr(molded_images, "shape", None)
    if shape is not None and not isinstance(molded_images, (list, tuple)):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 4:
            raise ValueError(f"{fn}() takes molded images [N, H, W, C] (from mold_inputs); got "
                             f"one array of shape {shape}: pass molded[np.newaxis] (and its "
                             "image_meta as [1, META])")
    molded = [np.asarray(m, np.float32) for m in molded_images]
    for i, m in enumerate(molded):
        if m.ndim != 3:
            raise ValueError(f"{fn}(): molded image #{i} has shape {m.shape}; each must be "
                             f"[H, W, {int(channels)}] (IMAGE_CHANNEL_COUNT)")
        if m.shape[0] == int(channels) and m.shape[2] != int(channels):
            raise ValueError(f"{fn}(): molded image #{i} of shape {m.shape} looks channels-first "
                             "(C, H, W): pass np.moveaxis(image, 0, -1)")
    return molded
