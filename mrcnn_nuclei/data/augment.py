"""Training augmentation: albumentations pipelines, plus Matterport-style imgaug augmenters.

:func:`default_augmentation` builds an albumentations ``Compose``; :func:`apply_augmentation`
runs it (or a user's albumentations pipeline, or an imgaug augmenter) on one image and all of its
instance masks at once, so geometric transforms move every mask with the image and photometric
transforms never touch the masks.

Speed: with only mask-safe transforms (nearest-neighbour mask interpolation, zero mask fill,
value-free geometry such as flips, 90-degree turns, crops, affine warps) the [H, W, N] bool stack
is bit-packed to ceil(N / 8) uint8 channels before the pipeline and unpacked after, which is
exact for such transforms and about 8x cheaper than warping N separate masks.  Pipelines with
other transforms get the plain uint8 stack.

imgaug (not a dependency; nothing is imported from it): any object with ``to_deterministic`` is
treated as an imgaug augmenter, as in Matterport's nucleus sample.  The deterministic copy
augments the image, then the masks as one uint8 [H, W, N] image with a hook that only lets
geometric augmenters (``GEOMETRIC_IMGAUG``) act on the masks.
"""

from __future__ import annotations

import copy
import sys
import threading

import albumentations as A
import cv2
import numpy as np

__all__ = ["default_augmentation", "apply_augmentation", "augment_packed", "CropIfLarger",
           "GEOMETRIC_IMGAUG"]

# imgaug augmenter class names allowed to act on masks (containers and geometric ones)
GEOMETRIC_IMGAUG = ("Sequential", "SomeOf", "OneOf", "Sometimes", "Fliplr", "Flipud", "Rot90",
                    "CropAndPad", "Crop", "Pad", "Affine", "Rotate", "PiecewiseAffine",
                    "PerspectiveTransform", "ElasticTransformation", "ScaleX", "ScaleY",
                    "TranslateX", "TranslateY", "ShearX", "ShearY")

_STRENGTHS = ("light", "nucleus", "strong")


class CropIfLarger(A.RandomCrop):
    """Random crop of (height, width) along the sides where the image is larger; a side that is
    not larger than the crop is kept whole (never padded)."""

    def get_params_dependent_on_data(self, params, data):
        h, w = params["shape"][:2]
        ch, cw = min(self.height, h), min(self.width, w)
        y = int((h - ch + 1) * self.py_random.random())
        x = int((w - cw + 1) * self.py_random.random())
        return {"crop_coords": (x, y, x + cw, y + ch), "pad_params": None}


def default_augmentation(strength="nucleus", channels=3, crop_size=None):
    """An albumentations pipeline for nucleus images.

    strength: "light" (flips and 90-degree turns), "nucleus" (plus small rotations,
    brightness/contrast, blur, hue/saturation; close to Matterport's nucleus sample) or "strong"
    (wider ranges, more often).  channels: image channels; hue/saturation only for 3.
    crop_size: optional (h, w) random crop applied only where the image is larger; the loader
    needs augmentations that keep the shape, so use it with pipelines of your own or
    IMAGE_RESIZE_MODE "none".  Returns an ``albumentations.Compose``.
    """
    if strength not in _STRENGTHS:
        raise ValueError(f"default_augmentation: strength must be one of {_STRENGTHS}, got "
                         f"{strength!r}")
    strong = strength == "strong"
    ts = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
    if strength != "light":
        ts.append(A.Affine(rotate=(-30, 30) if strong else (-15, 15),
                           scale=(0.8, 1.25) if strong else (1.0, 1.0),
                           interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                           border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0,
                           p=0.5 if strong else 0.3))
    if crop_size is not None:
        ts.append(CropIfLarger(int(crop_size[0]), int(crop_size[1]), p=1.0))
    if strength != "light":
        lim = 0.3 if strong else 0.2
        ts.append(A.RandomBrightnessContrast(brightness_limit=lim, contrast_limit=lim,
                                             p=0.7 if strong else 0.5))
        ts.append(A.GaussianBlur(blur_limit=(3, 7) if strong else (3, 5),
                                 sigma_limit=(0.1, 2.0), p=0.3 if strong else 0.2))
        if int(channels) == 3:
            ts.append(A.HueSaturationValue(hue_shift_limit=20 if strong else 10,
                                           sat_shift_limit=30 if strong else 20,
                                           val_shift_limit=0, p=0.5 if strong else 0.3))
    return A.Compose(ts)


# ---------------------------------------------------------------------------------------- helpers
_PACK_SAFE = (A.HorizontalFlip, A.VerticalFlip, A.RandomRotate90, A.Transpose, A.D4,
              A.Affine, A.ShiftScaleRotate, A.Rotate, A.SafeRotate, A.RandomCrop, A.CenterCrop,
              A.Crop, A.PadIfNeeded, A.Perspective, A.ElasticTransform, A.GridDistortion,
              A.OpticalDistortion, A.PiecewiseAffine, A.RandomResizedCrop, A.RandomSizedCrop,
              A.Resize, A.LongestMaxSize, A.SmallestMaxSize, A.RandomScale)


def _transforms(t):
    yield t
    for child in getattr(t, "transforms", None) or []:
        yield from _transforms(child)


def _pack_safe(aug):
    """True when every transform handles masks by value-free nearest-neighbour geometry."""
    if getattr(aug, "mask_interpolation", None) not in (None, cv2.INTER_NEAREST):
        return False
    for t in _transforms(aug):
        if isinstance(t, (A.Compose, A.OneOf, A.SomeOf, A.Sequential)) or \
                isinstance(t, A.ImageOnlyTransform):
            continue
        if not isinstance(t, _PACK_SAFE):
            return False
        if getattr(t, "mask_interpolation", cv2.INTER_NEAREST) != cv2.INTER_NEAREST:
            return False
        fill = getattr(t, "fill_mask", 0)
        if fill is not None and np.any(np.asarray(fill) != 0):
            return False
    return True


_local = threading.local()


def _thread_copy(aug):
    """A per-thread deep copy of an albumentations pipeline (seeding is then thread-safe)."""
    cache = getattr(_local, "copies", None)
    if cache is None:
        cache = _local.copies = {}
    entry = cache.get(id(aug))
    if entry is None or entry[0] is not aug:
        entry = (aug, copy.deepcopy(aug), _pack_safe(aug))
        cache[id(aug)] = entry
    return entry[1], entry[2]


class _MaskHooks:
    """Duck-typed stand-in for ``imgaug.HooksImages`` (used when imgaug itself is not loaded)."""

    def __init__(self, activator):
        self.activator = activator

    def is_activated(self, images, augmenter, parents, default):
        return self.activator(images, augmenter, parents, default)

    def is_propagating(self, images, augmenter, parents, default):
        return default

    def preprocess(self, images, augmenter, parents):
        return images

    def postprocess(self, images, augmenter, parents):
        return images


def _geometric_only(images, augmenter, parents, default):
    return type(augmenter).__name__ in GEOMETRIC_IMGAUG


def _apply_imgaug(image, masks, augmenter, rng):
    det = augmenter.to_deterministic()
    if rng is not None:
        seed = int(rng.integers(0, 2**31 - 1))
        if hasattr(det, "seed_"):
            det.seed_(seed, deterministic_too=True)
        elif hasattr(det, "reseed"):
            det.reseed(seed, deterministic_too=True)
    imgaug = sys.modules.get("imgaug")
    hooks = imgaug.HooksImages(activator=_geometric_only) if imgaug is not None and \
        hasattr(imgaug, "HooksImages") else _MaskHooks(_geometric_only)
    out_image = det.augment_image(image)
    out_masks = det.augment_image(masks.astype(np.uint8), hooks=hooks)
    return out_image, np.asarray(out_masks).reshape(out_image.shape[:2] + (masks.shape[-1],)) > 0


def _seeded_copy(aug, rng):
    pipeline, pack = _thread_copy(aug)
    if rng is not None:
        # one seed per transform: Compose.set_random_seed gives every child the same seed, which
        # makes their coin flips identical (all or none applied); pre-order so children win
        nodes = [t for t in _transforms(pipeline) if hasattr(t, "set_random_seed")]
        for t, seed in zip(nodes, rng.integers(0, 2**31 - 1, size=len(nodes))):
            t.set_random_seed(int(seed))
    return pipeline, pack


def augment_packed(image, packed, augmentation, rng=None):
    """Augment an image and a bit-packed mask stack (``np.packbits(masks, axis=-1)``) directly.

    Only for albumentations pipelines made of mask-safe transforms (see module docstring); returns
    None when that does not hold (the caller then unpacks and uses :func:`apply_augmentation`).
    image: [H, W, C]; packed: [H, W, P] uint8.  Returns (image, packed) after the same transform.
    """
    if hasattr(augmentation, "to_deterministic") or not callable(augmentation) or \
            packed.shape[-1] > 128:
        return None
    pipeline, pack = _seeded_copy(augmentation, rng)
    if not pack:
        return None
    if packed.shape[-1] == 0:
        out = pipeline(image=image)
        return out["image"], np.zeros(out["image"].shape[:2] + (0,), np.uint8)
    out = pipeline(image=image, mask=packed)
    res = np.asarray(out["mask"]).reshape(out["image"].shape[:2] + (packed.shape[-1],))
    return out["image"], res


def _apply_albumentations(image, masks, aug, rng):
    pipeline, pack = _seeded_copy(aug, rng)
    n = masks.shape[-1]
    if n == 0:
        out = pipeline(image=image)
        return out["image"], np.zeros(out["image"].shape[:2] + (0,), bool)
    if pack and (n + 7) // 8 <= 128:
        packed = np.packbits(masks, axis=-1)  # [H, W, ceil(N/8)] uint8, exact under nearest warps
        out = pipeline(image=image, mask=packed)
        res = np.asarray(out["mask"]).reshape(out["image"].shape[:2] + (packed.shape[-1],))
        return out["image"], np.unpackbits(res, axis=-1, count=n).view(bool)
    stack = np.ascontiguousarray(np.moveaxis(masks, -1, 0)).astype(np.uint8)  # [N, H, W]
    out = pipeline(image=image, masks=stack)
    res = np.asarray(out["masks"])
    return out["image"], np.moveaxis(res, 0, -1).reshape(out["image"].shape[:2] + (n,)) > 0


def apply_augmentation(image, masks, augmentation, rng=None):
    """Augment an image and its instance masks together.

    image: [H, W, C] uint8; masks: [H, W, N] bool; augmentation: an albumentations transform
    (e.g. :func:`default_augmentation`) or an imgaug augmenter; rng: ``np.random.Generator`` that
    seeds this call (None: unseeded).  Returns image [H', W', C], masks [H', W', K] bool and kept
    [K] int64, the indices of the input masks that are still non-empty (use them to select the
    class ids).
    """
    image = np.asarray(image)
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[:2] != image.shape[:2]:
        raise ValueError(f"apply_augmentation: masks must be [H, W, N] with the image's H, W "
                         f"{image.shape[:2]}, got {masks.shape}")
    masks = masks.astype(bool, copy=False)
    squeeze = image.ndim == 2
    if squeeze:
        image = image[..., None]
    if hasattr(augmentation, "to_deterministic"):
        out_image, out_masks = _apply_imgaug(image, masks, augmentation, rng)
    elif callable(augmentation):
        out_image, out_masks = _apply_albumentations(image, masks, augmentation, rng)
    else:
        raise TypeError("apply_augmentation: augmentation must be an albumentations transform "
                        "(e.g. default_augmentation()) or an imgaug augmenter, got "
                        f"{type(augmentation).__name__}")
    out_image = np.asarray(out_image)
    if out_image.ndim == 2:
        out_image = out_image[..., None]
    if squeeze:
        out_image = out_image[..., 0]
    n = out_masks.shape[-1]
    kept = np.flatnonzero(out_masks.any(axis=(0, 1))) if n else np.zeros(0, np.int64)
    if len(kept) < n:
        out_masks = out_masks[..., kept]
    return out_image, out_masks, kept
