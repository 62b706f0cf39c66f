"""Memory needed by one ``MaskRCNN.detect`` image, checked before the graph runs.

:func:`estimate_detect_memory` adds up, in bytes, for one image molded to ``Hm x Wm``
(``A = Hm * Wm`` pixels) whose original size is ``H x W``::

    features = K_FEAT * 4 * A * (sum_l C_l / s_l**2                 backbone conv1 + C2..C5
                                 + 2 * F * sum_k 1 / s_k**2          FPN lateral + P2..P6
                                 + (512 + 12 * R) * sum_k 1 / s_k**2)  RPN conv, logits/probs/
                                                                       deltas/anchors per anchor
    rois     = K_ROI * 4 * POST_NMS_ROIS_INFERENCE * (POOL_SIZE**2 * F + 2 * FC)
    mask_head= K_ROI * 4 * DETECTION_MAX_INSTANCES * (MASK_POOL_SIZE**2 * M * 2
                                                      + MASK_SHAPE**2 * (M + NUM_CLASSES))
               (M = MASK_HEAD_CHANNELS)
    unmold   = H * W * DETECTION_MAX_INSTANCES * (1 + 4 * soft)   the full-size mask stack (bool,
                                                                  plus float32 soft masks)

with ``C_l / s_l`` the backbone's channels and strides (ResNet-50/101: 64/2, 256/4, 512/8,
1024/16, 2048/32; ResNet-18/34: 64/2, 64/4, 128/8, 256/16, 512/32; a callable backbone is
counted as ResNet-50), ``F = TOP_DOWN_PYRAMID_SIZE``, ``R = len(RPN_ANCHOR_RATIOS) /
RPN_ANCHOR_STRIDE**2``, ``FC = FPN_CLASSIF_FC_LAYERS_SIZE``, ``s_k = BACKBONE_STRIDES``.
The total is the memory one detect() call adds on top of the built model (TensorFlow runtime
and weights: about 1.05 GB RSS for ResNet-50).  ``K_FEAT = 0.41`` (the share of those feature
maps alive at the peak) and ``K_ROI = 1.16`` were fitted to the peak-RSS increase of one detect()
call measured in a fresh process (CPU, TensorFlow 2.21, NucleusInferenceConfig: ResNet-50,
POST_NMS_ROIS_INFERENCE 2000, DETECTION_MAX_INSTANCES 400; noise images that fill all detection
slots; ``python benchmarks/detect_memory.py 256 512 1024`` and ``... 256 --dmi 100
--post-nms 500``); K_ROI from the two 256 px runs, K_FEAT through the 256 and 1024 px runs, so
that the estimate never fell below a measurement (it overestimates small images: there the
features are freed before the heads peak):

    =========================================  =====================  ========
    image (NucleusInferenceConfig doubles it)  measured increase (*)  estimate
    =========================================  =====================  ========
    256 x 256 (molded 512 x 512)               0.70 / 0.66 GB         0.78 GB
    512 x 512 (molded 1024 x 1024)             0.84 / 0.88 GB         1.03 GB
    768 x 768 (molded 1536 x 1536)             - / 0.96 GB            1.45 GB
    1024 x 1024 (molded 2048 x 2048)           1.96 / 1.64 GB         2.04 GB
    256 x 256, DMI 100, POST_NMS_ROIS 500      0.16 / - GB            0.24 GB
    =========================================  =====================  ========

(*) two series of fresh processes: random mask heads / mask heads biased to fill every box (the
benchmark's current setting); they differ by up to 0.3 GB, so the estimate is a bound, not a
prediction.

At 3000 x 3000 (IMAGE_MIN_SCALE 2: molded 6016 x 6016) it gives about 12.3 GB (8.0 GB features,
3.6 GB mask stack), over the "auto" bound of a 24 GB machine.

The estimate is for host memory (CPU inference); on a GPU the ``features``, ``rois`` and
``mask_head`` parts live in GPU memory, the ``unmold`` part in host memory.

:func:`memory_limit_bytes` turns ``Config.DETECT_MEMORY_LIMIT_GB`` into bytes: a number of GB,
``"auto"`` (half of the machine's physical memory, or of a smaller container limit) or ``None``
(no check).
"""

from __future__ import annotations

import os

__all__ = ["DetectMemoryError", "DetectionLimitWarning", "estimate_detect_memory",
           "memory_limit_bytes", "over_limit", "over_limit_message", "physical_memory_bytes",
           "warn_if_full", "K_FEAT", "K_ROI"]

#: calibrated multipliers (see the module docstring)
K_FEAT = 0.41
K_ROI = 1.16

_RESNET_WIDE = ((64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32))
_RESNET_NARROW = ((64, 2), (64, 4), (128, 8), (256, 16), (512, 32))


class DetectMemoryError(MemoryError):
    """detect() would need more memory than ``Config.DETECT_MEMORY_LIMIT_GB`` allows."""


class DetectionLimitWarning(UserWarning):
    """An image's detections filled all ``Config.DETECTION_MAX_INSTANCES`` slots: nuclei may be
    missing from the result."""


def _backbone_channels(config):
    if config.BACKBONE in ("resnet18", "resnet34"):
        return _RESNET_NARROW
    return _RESNET_WIDE


def estimate_detect_memory(config, molded_shape, original_shape, soft=False, parts=False):
    """Bytes one image needs in detect() (formula in the module docstring).

    molded_shape: ``(Hm, Wm[, C])`` after mold_inputs; original_shape: ``(H, W[, C])``.
    soft: also count the float32 soft-mask stack of detect_soft. parts: return the dict
    ``{"features", "rois", "mask_head", "unmold"}`` instead of the total.
    """
    c = config
    area = float(molded_shape[0]) * float(molded_shape[1])
    inv_sq = sum(1.0 / float(s) ** 2 for s in c.BACKBONE_STRIDES)
    anchors = len(c.RPN_ANCHOR_RATIOS) / float(c.RPN_ANCHOR_STRIDE) ** 2
    top = float(c.TOP_DOWN_PYRAMID_SIZE)
    per_px = (sum(ch / float(s) ** 2 for ch, s in _backbone_channels(c))
              + 2.0 * top * inv_sq + (512.0 + 12.0 * anchors) * inv_sq)
    dmi = float(c.DETECTION_MAX_INSTANCES)
    mask_px = float(c.MASK_SHAPE[0]) * float(c.MASK_SHAPE[1])
    mask_ch = float(getattr(c, "MASK_HEAD_CHANNELS", 256))
    out = {
        "features": K_FEAT * 4.0 * area * per_px,
        "rois": K_ROI * 4.0 * float(c.POST_NMS_ROIS_INFERENCE)
        * (float(c.POOL_SIZE) ** 2 * top + 2.0 * float(c.FPN_CLASSIF_FC_LAYERS_SIZE)),
        "mask_head": K_ROI * 4.0 * dmi * (float(c.MASK_POOL_SIZE) ** 2 * mask_ch * 2.0
                                          + mask_px * (mask_ch + float(c.NUM_CLASSES))),
        "unmold": float(original_shape[0]) * float(original_shape[1]) * dmi
        * (1.0 + (4.0 if soft else 0.0)),
    }
    return out if parts else sum(out.values())


_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def physical_memory_bytes():
    """Memory this process may use in bytes: the machine's physical memory, or a smaller
    container (cgroup) limit; None where the OS does not say."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = None
    for path in _CGROUP_LIMITS:
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue
        if value.isdigit() and (total is None or int(value) < total):
            total = int(value)
    return total


def memory_limit_bytes(config):
    """``Config.DETECT_MEMORY_LIMIT_GB`` in bytes: the number times 1e9, half the physical
    memory for ``"auto"``, None for ``None`` (or "auto" where the memory size is unknown)."""
    limit = getattr(config, "DETECT_MEMORY_LIMIT_GB", "auto")
    if limit is None:
        return None
    if limit == "auto":
        total = physical_memory_bytes()
        return None if total is None else total / 2.0
    return float(limit) * 1e9


def _gb(value):
    return f"{value / 1e9:.1f} GB"


def over_limit(config, molded_shapes, original_shapes, soft=False):
    """Indices of the images whose :func:`estimate_detect_memory` exceeds the bound, with their
    estimates: list of (index, bytes). Empty when DETECT_MEMORY_LIMIT_GB is None."""
    limit = memory_limit_bytes(config)
    if limit is None:
        return []
    out = []
    for i, (m, o) in enumerate(zip(molded_shapes, original_shapes)):
        need = estimate_detect_memory(config, m, o, soft=soft)
        if need > limit:
            out.append((i, need))
    return out


def over_limit_message(config, fn, index, need, molded_shape, original_shape):
    """The DetectMemoryError text: what, how much, and the three ways out."""
    limit = memory_limit_bytes(config)
    setting = config.DETECT_MEMORY_LIMIT_GB
    bound = (f"{_gb(limit)} (DETECT_MEMORY_LIMIT_GB = 'auto': half of this machine's "
             f"{_gb(physical_memory_bytes())})" if setting == "auto"
             else f"DETECT_MEMORY_LIMIT_GB = {setting}")
    return (f"{fn}(): image #{index} ({original_shape[0]}x{original_shape[1]}, molded to "
            f"{molded_shape[0]}x{molded_shape[1]}) needs about {_gb(need)} (estimate of "
            "mrcnn_nuclei.inference.memory.estimate_detect_memory, including its full-size mask "
            f"stack of DETECTION_MAX_INSTANCES = {config.DETECTION_MAX_INSTANCES}), over {bound}. "
            "Run it tile by tile: `from mrcnn_nuclei.inference.tiling import tiled_detect; "
            "labels = tiled_detect(lambda t: model.detect([t])[0], image, tile_size=512, "
            "overlap=64)`, or set Config.AUTO_TILE = True (detect() then does that itself), or "
            "raise Config.DETECT_MEMORY_LIMIT_GB (None: no check)")


def warn_if_full(config, detections, index, molded_shape, fn="detect"):
    """Warn (:class:`DetectionLimitWarning`) when ``detections`` [D, 6] fill all
    DETECTION_MAX_INSTANCES slots. Returns True when it warned."""
    import warnings

    import numpy as np

    limit = int(config.DETECTION_MAX_INSTANCES)
    n = int(np.sum(np.asarray(detections)[:, 4] > 0))
    if n < limit:
        return False
    warnings.warn(
        f"{fn}(): image #{index} (molded {molded_shape[0]}x{molded_shape[1]}) filled all "
        f"Config.DETECTION_MAX_INSTANCES = {limit} detection slots, so nuclei beyond the "
        f"{limit} best-scoring ones were dropped. Raise DETECTION_MAX_INSTANCES, or run "
        "mrcnn_nuclei.inference.tiling.tiled_detect on the image (each tile gets its own "
        f"{limit} slots)", DetectionLimitWarning, stacklevel=5)
    return True
