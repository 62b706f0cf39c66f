"""The Mask R-CNN graph, one stage per module (all model math in keras.ops; NMS and
crop-and-resize in :mod:`.ops`)."""

from .backbone import FrozenBatchNorm, build_backbone, resnet_graph
from .detection import DetectionLayer
from .detection_targets import DetectionTargetLayer
from .fpn import fpn_graph
from .heads import build_fpn_mask_graph, fpn_classifier_graph
from .proposals import ProposalLayer
from .roi_align import PyramidROIAlign
from .rpn import PyramidAnchors, build_rpn_model

__all__ = ["FrozenBatchNorm", "build_backbone", "resnet_graph", "DetectionLayer",
           "DetectionTargetLayer", "fpn_graph", "build_fpn_mask_graph", "fpn_classifier_graph",
           "ProposalLayer", "PyramidROIAlign", "PyramidAnchors", "build_rpn_model"]
