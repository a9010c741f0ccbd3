"""Names of the tensors that cross module boundaries, defined once (STYLE.md principle 7).

Model, losses, targets, pipeline, decode, evaluation, serving and callbacks import these;
this module imports nothing, so any of them (decode.py included) can use it without pulling
in the network.
"""

# Heads: one dict per stack, returned by `CornerNet.call`.
TL_HEATMAP = "tl_heatmap"  # [B, h, w, C] float32 logits (sigmoid in loss and decode)
BR_HEATMAP = "br_heatmap"  # [B, h, w, C] float32 logits
TL_EMBEDDING = "tl_embedding"  # [B, h, w, 1] float32
BR_EMBEDDING = "br_embedding"  # [B, h, w, 1] float32
TL_OFFSET = "tl_offset"  # [B, h, w, 2] float32, (x, y) in output-grid cells
BR_OFFSET = "br_offset"  # [B, h, w, 2] float32, (x, y) in output-grid cells
HEAD_KEYS = (TL_HEATMAP, BR_HEATMAP, TL_EMBEDDING, BR_EMBEDDING, TL_OFFSET, BR_OFFSET)

# Targets, built per image by `data.targets.encode_targets` (heatmaps and offsets share the
# heads' names: a target is compared with the head of the same key).
TL_INDEX = "tl_index"  # [M] int32, y * w + x of the object's TL corner cell
BR_INDEX = "br_index"  # [M] int32
MASK = "mask"  # [M] float32, 1 for a real object, 0 for padding
NUM_OBJECTS = "num_objects"  # [] int32, objects kept in this image
# Value of a heatmap target cell that gives no loss: inside an ignore region (e.g. a Pascal
# VOC "difficult" object), neither a corner nor background. Real targets are in [0, 1].
HEATMAP_IGNORE = -1.0
LOSS_TARGET_KEYS = (TL_HEATMAP, BR_HEATMAP, TL_INDEX, BR_INDEX, TL_OFFSET, BR_OFFSET, MASK)
TARGET_KEYS = LOSS_TARGET_KEYS + (NUM_OBJECTS,)

# Global normalisers of the loss (summed over replicas inside the train step).
TL_POSITIVES = "tl_positives"
BR_POSITIVES = "br_positives"
NUM_IMAGES = "num_images"
NORMALIZER_KEYS = (TL_POSITIVES, BR_POSITIVES, NUM_OBJECTS, NUM_IMAGES)

# Loss terms as logged.
FOCAL_LOSS = "focal_loss"
PULL_LOSS = "pull_loss"
PUSH_LOSS = "push_loss"
OFFSET_LOSS = "offset_loss"
TOTAL_LOSS = "total_loss"
LOSS_KEYS = (FOCAL_LOSS, PULL_LOSS, PUSH_LOSS, OFFSET_LOSS, TOTAL_LOSS)

# Decoded detections inside the package (`decode.decode`): boxes [B, N, 4] xyxy, scores
# [B, N], classes [B, N] int32 0-based, num_detections [B] int32.
BOXES = "boxes"
SCORES = "scores"
CLASSES = "classes"
NUM_DETECTIONS = "num_detections"

# The serving contract (TF Object Detection API names; DESIGN.md): what the SavedModel
# signatures and the TFLite file return.
DETECTION_BOXES = "detection_boxes"  # [B, N, 4] float32 normalised [ymin, xmin, ymax, xmax]
DETECTION_SCORES = "detection_scores"  # [B, N] float32
DETECTION_CLASSES = "detection_classes"  # [B, N] float32, 1-based label ids
DETECTION_OUTPUT_KEYS = (DETECTION_BOXES, DETECTION_SCORES, DETECTION_CLASSES, NUM_DETECTIONS)
