"""Bring any microscopy image to the model's input format: ``[H, W, C]`` uint8.

Rules of :func:`to_uint8` (one place, so every dataset behaves the same):

* **dtype**

  - ``uint8``: kept as is.
  - ``bool``: ``False -> 0``, ``True -> 255``.
  - other integers (``uint16``, ``int32``, ...): values already inside ``0..255`` are cast unchanged
    (8-bit data in a wider container, e.g. Pillow's mode ``"I"``); otherwise the image is stretched
    linearly from its own 0.5th to its 99.5th percentile (computed over all kept channels together,
    so the colour balance is preserved) onto ``0..255`` and clipped. A percentile stretch rather
    than ``>> 8`` or min-max: 16-bit fluorescence often uses only a few hundred grey levels
    (``>> 8`` would make faint nuclei black) and a single hot pixel would compress a min-max
    stretch. A flat image (no spread between the percentiles) becomes all zeros.
  - floats: if the maximum is ``<= 1`` the image is taken as ``0..1`` and multiplied by 255,
    otherwise it is clipped to ``0..255``. NaN becomes 0.

* **channels** (the requested ``channels``; the input channel count is ``c``)

  - ``c == 1`` (or a 2-D image) is grey: replicated to 3 channels for ``channels=3``.
  - ``c == 2`` is grey + alpha and ``c == 4`` is RGBA: the alpha channel is dropped unless the
    caller asks for all channels (``channels == c``).
  - ``channels == 1`` takes the luminance ``0.299 R + 0.587 G + 0.114 B`` of a colour image.
  - ``channels <= c`` keeps the first ``channels`` channels (extra channels of a multi-channel
    stack are kept only when asked for); ``channels > 3`` with fewer input channels raises a
    ``ValueError`` naming ``path``: compute the extra channels (e.g. hematoxylin) and stack them.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["to_uint8", "read_image", "LUMA_WEIGHTS", "invert_bright"]

#: ITU-R BT.601 luma weights used for ``channels=1``.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

_PERCENTILES = (0.5, 99.5)


def _where(path):
    return f" ({path})" if path is not None else ""


def _to_float255(image, path=None):
    """Any dtype -> float32 array on the 0..255 scale (see the module docstring)."""
    dtype = image.dtype
    if dtype == np.uint8:
        return image.astype(np.float32)
    if dtype == np.bool_:
        return image.astype(np.float32) * 255.0
    if np.issubdtype(dtype, np.integer):
        if image.size == 0:
            return image.astype(np.float32)
        lo_val, hi_val = image.min(), image.max()
        if lo_val >= 0 and hi_val <= 255:
            return image.astype(np.float32)
        lo, hi = np.percentile(image, _PERCENTILES)
        if hi <= lo:
            lo, hi = float(lo_val), float(hi_val)
        if hi <= lo:
            return np.zeros(image.shape, np.float32)
        out = (image.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
        return np.clip(out, 0.0, 255.0)
    if np.issubdtype(dtype, np.floating):
        out = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if out.size and out.max() <= 1.0:
            out = out * 255.0
        return np.clip(out, 0.0, 255.0)
    raise TypeError(f"cannot convert an image of dtype {dtype}{_where(path)} to uint8; "
                    "pass an integer, float or bool array")


def to_uint8(image, channels=3, path=None):
    """Convert an image to ``[H, W, channels]`` uint8 (rules in the module docstring).

    image: ``[H, W]`` or ``[H, W, C]`` array of any integer, float or bool dtype.
    channels: wanted channel count (``1``, ``3`` or more when the input has them).
    path: only used in error messages, to name the offending file.
    Returns ``[H, W, channels]`` uint8.
    """
    image = np.asarray(image)
    channels = int(channels)
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}{_where(path)}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected an image of shape [H, W] or [H, W, C], got {image.shape}"
                         f"{_where(path)}; for a stack or a volume pass one 2-D plane at a time")
    c = image.shape[2]
    if c == 0:
        raise ValueError(f"image{_where(path)} has no channels (shape {image.shape})")
    # Drop alpha (grey+alpha, RGBA) unless all channels are explicitly wanted.
    if c in (2, 4) and channels != c:
        image = image[:, :, :c - 1]
        c -= 1
    if channels > c and not (c == 1 and channels == 3):
        raise ValueError(
            f"image{_where(path)} has {c} channel(s) but {channels} were asked for; extra channels "
            "are only kept when the input has them. Use channels=3 (IMAGE_CHANNEL_COUNT = 3), or "
            "compute the extra channels (e.g. a hematoxylin map) and stack them onto the image "
            "before converting")
    if channels == 1 and c >= 3:
        image = image[:, :, :3]
    elif channels <= c:
        image = image[:, :, :channels]
    out = _to_float255(image, path)
    if channels == 1 and out.shape[2] == 3:
        out = out @ LUMA_WEIGHTS
        out = out[:, :, None]
    elif out.shape[2] == 1 and channels == 3:
        out = np.repeat(out, 3, axis=2)
    return np.rint(out).astype(np.uint8)


def read_image(path):
    """Read an image file into a NumPy array, unchanged in dtype and channels.

    TIFF files go through ``tifffile`` (Pillow as fall-back, e.g. for LZW without imagecodecs);
    everything else through Pillow. Returns ``[H, W]`` or ``[H, W, C]``. Raises
    ``FileNotFoundError`` or ``ValueError`` naming ``path``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    errors = []
    if ext in (".tif", ".tiff"):
        try:
            import tifffile

            array = tifffile.imread(path)
            if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
                array = np.moveaxis(array, 0, -1)  # planar (C, H, W) -> (H, W, C)
            return array
        except Exception as exc:  # noqa: BLE001 - fall back to Pillow (LZW without imagecodecs)
            errors.append(f"tifffile: {exc}")
    try:
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            return np.asarray(im)
    except Exception as exc:  # noqa: BLE001
        errors.append(f"Pillow: {exc}")
    raise ValueError(f"cannot read image file {path}: {'; '.join(errors)}. Check that the file "
                     "is a complete PNG/TIFF/JPEG (re-download or re-export it)")


def invert_bright(image, threshold):
    """``255 - image`` if the uint8 ``image``'s mean (all pixels and channels) exceeds
    ``threshold``, else ``image`` itself; ``threshold`` None: no change.

    Brightfield and H&E images show dark nuclei on a bright background, fluorescence images bright
    nuclei on a dark one; inverting the bright ones gives a detector one appearance to learn
    (``Config.IMAGE_INVERT_BRIGHT``, applied alike by the training loader and ``mold_inputs``).
    The decision is per image: tiles of a whole slide are judged one by one.
    """
    if threshold is None:
        return image
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"invert_bright: needs a uint8 image, got {image.dtype} "
                         "(convert it with mrcnn_nuclei.data.convert.to_uint8)")
    if image.size and float(image.mean()) > float(threshold):
        return 255 - image
    return image
