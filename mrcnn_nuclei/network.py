"""The Mask R-CNN graph from a config: the stages of :mod:`mrcnn_nuclei.layers` wired into a
training and an inference Keras model (what :meth:`MaskRCNN.build` returns).

Both share :func:`_trunk` (backbone -> FPN -> anchors -> RPN -> proposals); then

* :func:`build_training_graph`: detection targets for the proposals, the classifier head on all
  sampled ROIs and the mask head on the positive slots.  Inputs: the training-batch dict
  (docs/INTERFACES.md); outputs: a dict of graph tensors (:data:`TRAINING_OUTPUTS`) that
  :func:`mrcnn_nuclei.training.mask_rcnn_losses` turns into the loss dict.
* :func:`build_inference_graph`: classifier head on the proposals, detection layer, mask head on
  the detections.  Inputs ``[input_image [B, H, W, C], input_image_meta [B, META]]``; outputs a
  dict by name in the order :data:`INFERENCE_OUTPUTS` (``keras_model.outputs`` and
  ``keras_model.output`` keep that order, so Matterport-style positional use, e.g.
  ``detections, mrcnn_class, ... = keras_model.outputs``, still holds).
"""

from __future__ import annotations

import collections

import keras

from .layers.backbone import build_backbone
from .layers.detection import DetectionLayer, PadDetections, TrimDetections, WindowFromMeta
from .layers.detection_targets import DetectionTargetLayer, NormBoxes
from .layers.fpn import fpn_graph
from .layers.heads import TakeFirst, build_fpn_mask_graph, fpn_classifier_graph
from .layers.proposals import ProposalLayer
from .layers.roi_align import PyramidROIAlign
from .layers.rpn import PyramidAnchors, build_rpn_model, rpn_on_pyramid

__all__ = ["INFERENCE_OUTPUTS", "TRAINING_INPUTS", "TRAINING_OUTPUTS", "build_graph",
           "build_training_graph", "build_inference_graph"]

#: Names of the inference model's outputs, in their positional (Matterport) order:
#: detections [B, DETECTION_MAX_INSTANCES, 6] (y1, x1, y2, x2 normalised, class_id, score),
#: mrcnn_class [B, R, NUM_CLASSES], mrcnn_bbox [B, R, NUM_CLASSES, 4],
#: mrcnn_mask [B, DETECTION_MAX_INSTANCES, h, w, NUM_CLASSES], rpn_rois [B, R, 4],
#: rpn_class [B, A, 2], rpn_bbox [B, A, 4]  (R = POST_NMS_ROIS_INFERENCE, A = anchors).
INFERENCE_OUTPUTS = ("detections", "mrcnn_class", "mrcnn_bbox", "mrcnn_mask", "rpn_rois",
                     "rpn_class", "rpn_bbox")
#: Inputs of the training model (the training-batch dict of docs/INTERFACES.md).
TRAINING_INPUTS = ("input_image", "input_image_meta", "input_rpn_match", "input_rpn_bbox",
                   "input_gt_class_ids", "input_gt_boxes", "input_gt_masks")
#: Outputs of the training model (what the losses read, and the heads for inspection).
TRAINING_OUTPUTS = ("rpn_class_logits", "rpn_class", "rpn_bbox", "rpn_rois", "rois",
                    "target_class_ids", "target_bbox", "target_mask", "mrcnn_class_logits",
                    "mrcnn_class", "mrcnn_bbox", "mrcnn_mask")


def build_graph(mode, config):
    """:func:`build_training_graph` (mode "training") or :func:`build_inference_graph`."""
    if mode == "training":
        return build_training_graph(config)
    if mode == "inference":
        return build_inference_graph(config)
    raise ValueError(f"build_graph: mode must be 'training' or 'inference', got {mode!r}")


def _trunk(c, mode):
    """Inputs and the shared stages: backbone, FPN, anchors, RPN, proposals, mask head."""
    channels = int(c.IMAGE_CHANNEL_COUNT)
    if mode == "training":
        h, w = int(c.IMAGE_SHAPE[0]), int(c.IMAGE_SHAPE[1])
        if h % 64 or w % 64:
            raise ValueError(f"training image size {h}x{w} must be divisible by 64 "
                             "(Config.IMAGE_MAX_DIM / IMAGE_MIN_DIM)")
        input_image = keras.Input((h, w, channels), name="input_image")
    else:
        input_image = keras.Input((None, None, channels), name="input_image")
    input_meta = keras.Input((c.IMAGE_META_SIZE,), name="input_image_meta")

    c2, c3, c4, c5 = build_backbone(input_image, c)
    p2, p3, p4, p5, p6 = fpn_graph(c2, c3, c4, c5, c.TOP_DOWN_PYRAMID_SIZE)
    anchors = PyramidAnchors(c.RPN_ANCHOR_SCALES, c.RPN_ANCHOR_RATIOS, c.BACKBONE_STRIDES,
                             c.RPN_ANCHOR_STRIDE, name="anchors")(input_image)
    rpn = build_rpn_model(c.RPN_ANCHOR_STRIDE, len(c.RPN_ANCHOR_RATIOS), c.TOP_DOWN_PYRAMID_SIZE)
    rpn_class_logits, rpn_class, rpn_bbox = rpn_on_pyramid(rpn, [p2, p3, p4, p5, p6])
    count = c.POST_NMS_ROIS_TRAINING if mode == "training" else c.POST_NMS_ROIS_INFERENCE
    rpn_rois = ProposalLayer(count, c.RPN_NMS_THRESHOLD, c.PRE_NMS_LIMIT, c.RPN_BBOX_STD_DEV,
                             name="ROI")(rpn_class, rpn_bbox, anchors)
    head_args = dict(norm=c.NORM, train_bn=c.TRAIN_BN, gn_groups=c.GN_GROUPS)
    return dict(input_image=input_image, input_meta=input_meta, mrcnn_maps=[p2, p3, p4, p5],
                rpn_class_logits=rpn_class_logits, rpn_class=rpn_class, rpn_bbox=rpn_bbox,
                rpn_rois=rpn_rois, head_args=head_args,
                mask_head=build_fpn_mask_graph(c.NUM_CLASSES, channels=c.MASK_HEAD_CHANNELS,
                                               **head_args))


def _classifier(c, t, rois):
    """Classifier head on ``rois``: (logits, probs, bbox deltas)."""
    pooled = PyramidROIAlign((c.POOL_SIZE, c.POOL_SIZE), name="roi_align_classifier")(
        rois, t["input_image"], t["mrcnn_maps"])
    return fpn_classifier_graph(pooled, c.NUM_CLASSES, c.FPN_CLASSIF_FC_LAYERS_SIZE, c.POOL_SIZE,
                                **t["head_args"])


def _masks(c, t, rois):
    """Mask head on ``rois``: [B, n, h, w, NUM_CLASSES] probabilities."""
    pooled = PyramidROIAlign((c.MASK_POOL_SIZE, c.MASK_POOL_SIZE), name="roi_align_mask")(
        rois, t["input_image"], t["mrcnn_maps"])
    return t["mask_head"](pooled)


def build_training_graph(config):
    """The training model: a :class:`mrcnn_nuclei.training.MaskRCNNTrainingModel` with the
    inputs :data:`TRAINING_INPUTS` and the dict outputs :data:`TRAINING_OUTPUTS`.

    Raises ValueError when IMAGE_SHAPE is not a multiple of 64, NotImplementedError for
    ``USE_RPN_ROIS = False``.
    """
    from .training import MaskRCNNTrainingModel, mask_slots

    c = config
    t = _trunk(c, "training")
    if not c.USE_RPN_ROIS:
        raise NotImplementedError("USE_RPN_ROIS = False (externally generated ROIs) is "
                                  "not supported; set Config.USE_RPN_ROIS = True")
    input_image = t["input_image"]
    mini = (tuple(c.MINI_MASK_SHAPE) if c.USE_MINI_MASK
            else (int(c.IMAGE_SHAPE[0]), int(c.IMAGE_SHAPE[1])))
    in_match = keras.Input((None, 1), dtype="int32", name="input_rpn_match")
    in_rpn_bbox = keras.Input((c.RPN_TRAIN_ANCHORS_PER_IMAGE, 4), name="input_rpn_bbox")
    in_gt_ids = keras.Input((c.MAX_GT_INSTANCES,), dtype="int32", name="input_gt_class_ids")
    in_gt_boxes = keras.Input((c.MAX_GT_INSTANCES, 4), name="input_gt_boxes")
    in_gt_masks = keras.Input(mini + (c.MAX_GT_INSTANCES,), dtype="bool", name="input_gt_masks")
    gt_boxes = NormBoxes(name="norm_gt_boxes")(in_gt_boxes, input_image)
    rois, t_ids, t_bbox, t_mask = DetectionTargetLayer(
        c.TRAIN_ROIS_PER_IMAGE, c.ROI_POSITIVE_RATIO, c.BBOX_STD_DEV, c.MASK_SHAPE,
        c.USE_MINI_MASK, seed=c.SEED, name="proposal_targets")(
        t["rpn_rois"], in_gt_ids, gt_boxes, in_gt_masks)
    logits, probs, bbox = _classifier(c, t, rois)
    # positives always occupy the first int(T * ratio) slots and only positives have a mask
    # loss, so the mask branch only runs on those slots
    masks = _masks(c, t, TakeFirst(mask_slots(c), name="positive_rois")(rois))
    inputs = dict(zip(TRAINING_INPUTS, (input_image, t["input_meta"], in_match, in_rpn_bbox,
                                        in_gt_ids, in_gt_boxes, in_gt_masks)))
    outputs = dict(zip(TRAINING_OUTPUTS, (
        t["rpn_class_logits"], t["rpn_class"], t["rpn_bbox"], t["rpn_rois"], rois, t_ids,
        t_bbox, t_mask, logits, probs, bbox, masks)))
    return MaskRCNNTrainingModel(inputs, outputs, loss_weights=c.LOSS_WEIGHTS,
                                 mask_slots=mask_slots(c), name="mask_rcnn")


def build_inference_graph(config):
    """The inference model: inputs ``[input_image, input_image_meta]``, outputs an ordered dict
    :data:`INFERENCE_OUTPUTS` -> tensor (``predict`` returns that dict of arrays)."""
    c = config
    t = _trunk(c, "inference")
    rpn_rois = t["rpn_rois"]
    _, probs, bbox = _classifier(c, t, rpn_rois)
    window = WindowFromMeta(name="window")(t["input_meta"], t["input_image"])
    detections = DetectionLayer(c.DETECTION_MAX_INSTANCES, c.DETECTION_MIN_CONFIDENCE,
                                c.DETECTION_NMS_THRESHOLD, c.BBOX_STD_DEV,
                                name="mrcnn_detection")(rpn_rois, probs, bbox, window)
    det_boxes = TrimDetections(name="detection_boxes")(detections)
    masks = PadDetections(c.DETECTION_MAX_INSTANCES, name="mrcnn_mask_padded")(
        _masks(c, t, det_boxes))
    # an OrderedDict: Keras keeps its order in .outputs (a plain dict is sorted by key)
    outputs = collections.OrderedDict(zip(INFERENCE_OUTPUTS, (
        detections, probs, bbox, masks, rpn_rois, t["rpn_class"], t["rpn_bbox"])))
    return keras.Model([t["input_image"], t["input_meta"]], outputs, name="mask_rcnn")
