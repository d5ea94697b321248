"""Train a torchvision Mask R-CNN whose mask head is IFR on the built-in synthetic shapes, with
torchvision's own conventions (a list of image tensors, target dicts, a dict of losses), on the CPU,
then evaluate it with the project's COCO evaluator.

    python examples/torchvision_finetune.py [--iterations 300] [--head ifr|weight_sharing|conv]
        [--weights maskrcnn_resnet50_fpn_coco.pth]    # fine-tune torchvision's COCO model (a local file)

Without ``--weights`` (nothing is downloaded) the model is torchvision's ``MaskRCNN`` on a ResNet-18
FPN trained from scratch with GroupNorm, small enough for a few CPU minutes; with ``--weights`` it is
``maskrcnn_resnet50_fpn`` loaded from the file, its box and mask predictors resized to the 3 classes.
The IFR head trains unrolled for the first 80% of the iterations, then with the implicit solve.
"""
from __future__ import annotations

import argparse
import time
from functools import partial

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

from ifr.data import get_dataset_dicts
from ifr.data.mapper import DatasetMapper
from ifr.data.torchvision_format import as_torchvision_sample
from ifr.evaluation import COCOEvaluator
from ifr.integrations.torchvision import replace_mask_head

NUM_CLASSES = 3  # the synthetic shapes (torchvision counts the background too)


def build_model(weights: str | None) -> nn.Module:
    # CPU-sized, as the quickstart: small images, fewer proposals and sampled RoIs than COCO's defaults.
    sizes = dict(min_size=128, max_size=240, box_detections_per_img=50, rpn_pre_nms_top_n_train=1000,
                 rpn_post_nms_top_n_train=500, rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300,
                 rpn_batch_size_per_image=128, box_batch_size_per_image=64)
    if weights is None:
        backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                       norm_layer=partial(nn.GroupNorm, 32))
        return MaskRCNN(backbone, num_classes=NUM_CLASSES + 1, **sizes)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **sizes)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.roi_heads.box_predictor = FastRCNNPredictor(1024, NUM_CLASSES + 1)
    model.roi_heads.mask_predictor = MaskRCNNPredictor(256, 256, NUM_CLASSES + 1)
    return model


def evaluate(model: nn.Module, dataset: str = "synthetic_shapes_val") -> dict:
    """COCO box and mask AP (through the project's evaluator) of torchvision outputs."""
    evaluator = COCOEvaluator(dataset, output_dir=None)
    mapper = DatasetMapper([], "BGR", is_train=False)
    model.eval()
    with torch.no_grad():
        for record in get_dataset_dicts(dataset):
            image, _ = as_torchvision_sample(mapper(record))
            out = model([image])[0]
            instances = {"boxes": out["boxes"], "scores": out["scores"], "classes": out["labels"] - 1,
                         "masks": out["masks"][:, 0] > 0.5}
            evaluator.process([record], [{"instances": instances}])
    return evaluator.evaluate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--head", default="ifr", choices=("ifr", "weight_sharing", "conv"))
    parser.add_argument("--weights", default=None, help="torchvision maskrcnn_resnet50_fpn COCO weights (a local file)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = build_model(args.weights)
    head = replace_mask_head(model, args.head, pretrained_steps=int(0.8 * args.iterations)) \
        if args.head != "conv" else None
    records = get_dataset_dicts("synthetic_shapes_train")
    mapper = DatasetMapper([("RandomFlip", {})], "BGR", is_train=True)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=0.02, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.02, total_steps=args.iterations,
                                                    pct_start=0.1)
    order = torch.randperm(len(records) * (args.iterations * args.batch_size // len(records) + 1))
    start = time.perf_counter()
    model.train()
    for it in range(args.iterations):
        batch = [as_torchvision_sample(mapper(records[int(i) % len(records)]))
                 for i in order[it * args.batch_size:(it + 1) * args.batch_size]]
        loss_dict = model([image for image, _ in batch], [target for _, target in batch])
        loss = sum(loss_dict.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 5.0)  # trained from scratch: keep the first steps sane
        optimizer.step()
        scheduler.step()
        if (it + 1) % 50 == 0 or it == 0:
            solver = head.solver_stats() if head is not None else {}
            steps = f"  forward solve {solver['forward_iterations']:.0f} steps" if solver else ""
            print(f"iter {it + 1}/{args.iterations}  loss {loss.item():.3f}  "
                  f"({', '.join(f'{k} {v.item():.3f}' for k, v in loss_dict.items())}){steps}", flush=True)
    print(f"trained {args.iterations} iterations in {time.perf_counter() - start:.0f} s")
    results = evaluate(model)
    for task in ("bbox", "segm"):
        print(f"{task}: AP {results[task]['AP']:.1f}  AP50 {results[task]['AP50']:.1f}  AP75 {results[task]['AP75']:.1f}")


if __name__ == "__main__":
    main()
