"""COCO evaluation of a detector over a split: dataset -> inference graph -> pycocotools.

Follows facebookresearch/detr ``engine.evaluate`` (post-process to original-image pixels, COCO bbox
evaluation), with the post-process compiled into the same graph as the network.
"""

from __future__ import annotations

from pathlib import Path

import mindspore as ms
from mindspore import nn

from src.data.coco import annotation_file
from src.data.dataset import create_coco_dataset
from src.evaluation.coco_evaluator import CocoEvaluator

EVAL_COLUMNS = ["image", "mask", "image_id", "orig_size"]


class InferenceNet(nn.Cell):
    """Network and post-process as one graph: what eval, infer and export run.

    ``postprocess(*network(image, mask), orig_size)`` is the contract every model of the zoo follows.

    Inputs:
        image: float32 [B, 3, H, W], normalized, zero-padded; mask: bool [B, H, W], True on padding;
        orig_size: int32 or float32 [B, 2], (height, width) of the original images in pixels.

    Outputs:
        scores float32 [B, Q]; labels int32 [B, Q] (category ids); boxes float32 [B, Q, 4], xyxy in
        original-image pixels.
    """

    def __init__(self, network: nn.Cell, postprocess: nn.Cell):
        super().__init__(auto_prefix=False)
        self.network = network
        self.postprocess = postprocess

    def construct(self, image, mask, orig_size):
        outputs = self.network(image, mask)
        return self.postprocess(*outputs, orig_size.astype(ms.float32))


def evaluate_coco(net: InferenceNet, cfg: dict, coco_path: str, split: str, mindrecord_dir: str,
                  output_dir: str | Path | None = None, max_images: int | None = None,
                  logger=None) -> dict:
    """Run ``net`` over a COCO split and return the 12 COCOeval bbox stats by name.

    Writes ``bbox_results.json`` (COCO results format) and ``metrics.json`` into ``output_dir`` when given.

    Args:
        net: the inference graph, weights loaded, set to eval mode here.
        cfg: the config (``data`` and ``eval`` sections are used).
        coco_path, split: the ground truth is ``coco_path/annotations/instances_{split}.json``.
        mindrecord_dir: MindRecord cache (built on first use).
        max_images: evaluate only the first N images (the ground truth is restricted to them too).

    Returns:
        dict stat name -> float (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl).
    """
    net.set_train(False)
    dataset = create_coco_dataset(coco_path, split, mindrecord_dir, is_training=False,
                                  batch_size=cfg["eval"]["batch_size"], data_cfg=cfg["data"],
                                  max_images=max_images)
    evaluator = CocoEvaluator(annotation_file(coco_path, split))
    for image, mask, image_id, orig_size in dataset.create_tuple_iterator(columns=EVAL_COLUMNS, num_epochs=1):
        scores, labels, boxes = net(image, mask, orig_size)
        evaluator.update(image_id.asnumpy(), scores.asnumpy(), labels.asnumpy(), boxes.asnumpy())
    if logger is not None:
        logger.info("evaluated %d images of %s", len(evaluator.image_ids), split)
    stats = evaluator.evaluate()
    if output_dir is not None:
        evaluator.write_results(Path(output_dir) / "bbox_results.json")
        evaluator.write_metrics(Path(output_dir) / "metrics.json")
    return stats
