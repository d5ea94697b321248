"""CPU-sized torchvision detectors on the built-in data, with a stacked convolution tower replaced by one
of the three forms of ``ifr.deq.RefinementTower`` (explicit, weight sharing, IFR): the models, data,
training loop, evaluation and drawing shared by ``examples/keypoint_rcnn.py``,
``examples/faster_rcnn_box_head.py``, ``examples/one_stage_towers.py`` and ``benchmarks/heads_ablation.py``.

The detectors are torchvision's own classes (``KeypointRCNN``, ``FasterRCNN`` with the v2 conv box head,
``RetinaNet`` with the v2 GroupNorm head, ``FCOS``) with their heads' structure kept and everything made
small enough to train a few hundred iterations on one CPU thread in minutes: a 5-stage GroupNorm CNN of
at most 128 channels under an FPN of 32 channels (64 for the one-stage detectors), images at their 112-160 pixel size,
fewer proposals, sampled RoIs and detections than COCO's defaults, anchors for 10-60 pixel objects.
Nothing is downloaded and nothing is pretrained: the models train from scratch, so their AP says how the
forms compare in this small setting, not what they reach on COCO.
"""
from __future__ import annotations

import argparse
import os
import random
import time
from collections import OrderedDict
from functools import partial
from typing import Callable

import torch
from PIL import Image
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, KeypointRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.utils import draw_bounding_boxes, draw_keypoints, make_grid

from ifr.data import get_dataset_dicts, get_metadata
from ifr.data.mapper import DatasetMapper
from ifr.data.torchvision_format import as_torchvision_sample, keypoint_sample
from ifr.deq import EquilibriumRefinement
from ifr.evaluation import COCOEvaluator, COCOKeypointEvaluator
from ifr.integrations import torchvision as integrations
from ifr.paths import output_root
from ifr.utils.atomic import write_atomically

DETECTORS = ("keypoint_rcnn", "faster_rcnn_v2", "retinanet_v2", "fcos")
FORMS = ("explicit", "weight_sharing", "ifr")
# detector -> (training set, validation set)
DATASETS = {"keypoint_rcnn": ("synthetic_keypoints_train", "synthetic_keypoints_val"),
            **{d: ("synthetic_shapes_train", "synthetic_shapes_val") for d in DETECTORS[1:]}}
SIZES = dict(min_size=128, max_size=160)  # the built-in images' own sizes: no resizing
ROI_SIZES = dict(rpn_pre_nms_top_n_train=500, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=300,
                 rpn_post_nms_top_n_test=50, rpn_batch_size_per_image=128, box_batch_size_per_image=32)


def _conv_stage(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 convs with GroupNorm and ReLU, the first of stride 2."""
    layers = []
    for cin, stride in ((in_channels, 2), (out_channels, 1)):
        layers += [nn.Conv2d(cin, out_channels, 3, stride, 1, bias=False), nn.GroupNorm(8, out_channels), nn.ReLU()]
    return nn.Sequential(*layers)


def small_backbone(channels: int, one_stage: bool) -> BackboneWithFPN:
    """A 5-stage CNN (strides 2-32, widths 16-128) under an FPN of ``channels`` channels on strides 8,
    16 and 32, plus max-pooled stride 64 (two-stage) or P6, P7 (one-stage, RetinaNet's 5 levels)."""
    body = nn.Sequential(OrderedDict(stem=nn.Sequential(_conv_stage(3, 16), _conv_stage(16, 32)),
                                     layer2=_conv_stage(32, 64), layer3=_conv_stage(64, 96),
                                     layer4=_conv_stage(96, 128)))
    extra = LastLevelP6P7(channels, channels) if one_stage else LastLevelMaxPool()
    return BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [64, 96, 128], channels,
                           extra_blocks=extra)


def build_detector(detector: str, num_classes: int) -> nn.Module:
    """The CPU-sized torchvision ``detector`` for ``num_classes`` foreground classes (labels 1..K): FPN
    width 32, or 64 for the one-stage detectors, whose GroupNorm(32) towers also run on the 1 x 1 P7 of a
    128-pixel image (one value per group at width 32 cannot be normalised in training)."""
    one_stage = detector in ("retinanet_v2", "fcos")
    channels = 64 if one_stage else 32
    backbone = small_backbone(channels, one_stage)
    if detector == "keypoint_rcnn":  # Keypoint R-CNN's 8-conv head, its first conv widening 2x
        keypoints = len(get_metadata(DATASETS[detector][1])["keypoint_names"])
        anchors = AnchorGenerator(((16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 4)
        return KeypointRCNN(backbone, None, rpn_anchor_generator=anchors, box_detections_per_img=8,
                            box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 7, 2),
                            box_head=TwoMLPHead(channels * 49, 128),
                            box_predictor=FastRCNNPredictor(128, num_classes + 1),
                            keypoint_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 14, 2),
                            keypoint_head=KeypointRCNNHeads(channels, (2 * channels,) * 8),
                            keypoint_predictor=KeypointRCNNPredictor(2 * channels, keypoints), **SIZES, **ROI_SIZES)
    if detector == "faster_rcnn_v2":  # fasterrcnn_resnet50_fpn_v2's heads: 2-conv RPN, 4 x [conv, BN, ReLU] + FC
        anchors = AnchorGenerator(((16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 4)
        return FasterRCNN(backbone, None, rpn_anchor_generator=anchors, rpn_head=RPNHead(channels, 3, conv_depth=2),
                          box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 7, 2),
                          box_head=FastRCNNConvFCHead((channels, 7, 7), [channels] * 4, [128],
                                                      norm_layer=nn.BatchNorm2d),
                          box_predictor=FastRCNNPredictor(128, num_classes + 1), box_detections_per_img=50,
                          **SIZES, **ROI_SIZES)
    if detector == "retinanet_v2":  # retinanet_resnet50_fpn_v2's head: GroupNorm(32) towers, GIoU box loss
        octaves = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (8, 16, 32, 64, 128))
        anchors = AnchorGenerator(octaves, ((0.5, 1.0, 2.0),) * 5)
        head = RetinaNetHead(channels, anchors.num_anchors_per_location()[0], num_classes + 1,
                             norm_layer=partial(nn.GroupNorm, 32))
        head.regression_head._loss_type = "giou"
        return RetinaNet(backbone, num_classes + 1, anchor_generator=anchors, head=head, detections_per_img=50,
                         **SIZES)
    if detector == "fcos":  # FCOS's head: GroupNorm(32) towers
        anchors = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)
        return FCOS(backbone, num_classes + 1, anchor_generator=anchors, detections_per_img=50, **SIZES)
    raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")


def replace_tower(model: nn.Module, detector: str, form: str, pretrained_steps: int):
    """Replaces the detector's tower(s) by ``form`` through ``ifr.integrations.torchvision``; returns
    what the integration returns: the keypoint or box head, or the one-stage head's two towers by name
    (the stock modules for ``"explicit"``)."""
    if detector == "keypoint_rcnn":
        return integrations.replace_keypoint_head(model, head=form, pretrained_steps=pretrained_steps)
    if detector == "faster_rcnn_v2":
        return integrations.replace_box_head(model, head=form, pretrained_steps=pretrained_steps)
    return integrations.replace_dense_head_towers(model, head=form, pretrained_steps=pretrained_steps)


def replaced_modules(replaced) -> list[nn.Module]:
    """The modules an integration returned (one module, or several in a dict)."""
    return list(replaced.values()) if isinstance(replaced, dict) else [replaced]


def refinements(replaced) -> list[EquilibriumRefinement]:
    """The ``EquilibriumRefinement`` modules inside what an integration returned (none for the explicit form)."""
    return [m for module in replaced_modules(replaced) for m in module.modules()
            if isinstance(m, EquilibriumRefinement)]


def solver_stats(replaced) -> dict[str, float]:
    """The last forward solve's statistics of the (first) refinement an integration put in, for logging
    (empty when it has not solved: explicit and weight-sharing forms, the unrolled phase)."""
    records = [r.last_stats for r in refinements(replaced) if r.last_stats is not None]
    return records[0].summary() if records else {}


def class_names(detector: str) -> tuple[str, ...]:
    return tuple(get_metadata(DATASETS[detector][0])["thing_classes"])


def training_sampler(detector: str) -> Callable[[dict, random.Random], tuple[torch.Tensor, dict]]:
    """record, rng -> a training sample (image, target) in torchvision's format, flipped horizontally
    with probability 1/2 (keypoints with the set's flip pairs; boxes by the mapper's RandomFlip)."""
    if detector == "keypoint_rcnn":
        flip_pairs = get_metadata(DATASETS[detector][0])["keypoint_flip_pairs"]
        return lambda record, rng: keypoint_sample(record, rng.random() < 0.5, flip_pairs)
    mapper = DatasetMapper([("RandomFlip", {})], "BGR", is_train=True, mask_on=False)  # torch's random state
    return lambda record, rng: as_torchvision_sample(mapper(record))


def test_image(detector: str, record: dict) -> torch.Tensor:
    """A validation record's image as torchvision's detectors take it: (3, H, W) float RGB in [0, 1]."""
    if detector == "keypoint_rcnn":
        return keypoint_sample(record, False, ())[0]
    return as_torchvision_sample(DatasetMapper([], "BGR", is_train=False)(record))[0]


def train(model: nn.Module, detector: str, iterations: int, batch_size: int = 2, lr: float = 0.02, seed: int = 0,
          log: Callable[[int, torch.Tensor, dict], None] | None = None) -> float:
    """Trains ``model`` (torchvision's conventions: ``model(images, targets)`` -> loss dict) for
    ``iterations`` SGD steps on the detector's training set (one-cycle lr, gradient norm clipped at 5,
    as trained from scratch); ``log(iteration, loss, loss_dict)`` every 20 iterations. Returns the CPU
    seconds the process spent (``time.process_time``)."""
    records = get_dataset_dicts(DATASETS[detector][0])
    sample = training_sampler(detector)
    rng = random.Random(seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=iterations, pct_start=0.1)
    start = time.process_time()
    model.train()
    for it in range(iterations):
        batch = [sample(records[rng.randrange(len(records))], rng) for _ in range(batch_size)]
        loss_dict = model([image for image, _ in batch], [target for _, target in batch])
        loss = sum(loss_dict.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 5.0)
        optimizer.step()
        scheduler.step()
        if log is not None and ((it + 1) % 20 == 0 or it == 0):
            log(it + 1, loss.detach(), {k: v.detach() for k, v in loss_dict.items()})
    return time.process_time() - start


@torch.no_grad()
def evaluate(model: nn.Module, detector: str, images: int | None = None) -> dict:
    """Box AP (and keypoint AP for Keypoint R-CNN) with pycocotools on the first ``images`` validation
    images (default all), and the model's CPU seconds per image (``time.process_time`` around the
    forward passes only, so reading images is not counted): ``{"bbox": {...}, ["keypoints": {...}],
    "cpu_seconds_per_image": s}``."""
    val = DATASETS[detector][1]
    records = get_dataset_dicts(val)[:images]
    boxes = COCOEvaluator(val, output_dir=None, tasks=("bbox",))
    keypoints = COCOKeypointEvaluator(val) if detector == "keypoint_rcnn" else None
    model.eval()
    seconds = 0.0
    for record in records:
        image = test_image(detector, record)
        start = time.process_time()
        out = model([image])[0]
        seconds += time.process_time() - start
        foreground = out["labels"] > 0  # a one-stage detector may score its unused background slot
        out = {k: v[foreground] for k, v in out.items()}
        boxes.process([record], [{"instances": {"boxes": out["boxes"], "scores": out["scores"],
                                                "classes": out["labels"] - 1}}])
        if keypoints is not None:
            keypoints.process(record["image_id"], out)
    results = {"bbox": boxes.evaluate()["bbox"], "cpu_seconds_per_image": seconds / max(len(records), 1)}
    if keypoints is not None:
        results["keypoints"] = keypoints.evaluate()
    return results


@torch.no_grad()
def draw_predictions(model: nn.Module, detector: str, images: int = 8, score_threshold: float = 0.5) -> torch.Tensor:
    """A (3, H, W) uint8 grid of the first ``images`` validation images with the detections scoring at
    least ``score_threshold``: boxes with class and score (``draw_bounding_boxes``) and, for Keypoint
    R-CNN, the keypoints joined by the set's skeleton (``draw_keypoints``)."""
    val = DATASETS[detector][1]
    metadata = get_metadata(val)
    names = class_names(detector)
    model.eval()
    drawn = []
    for record in get_dataset_dicts(val)[:images]:
        image = test_image(detector, record)
        out = model([image])[0]
        chosen = (out["scores"] >= score_threshold) & (out["labels"] > 0)
        canvas = (image * 255).to(torch.uint8)
        labels = [f"{names[int(c) - 1]} {s:.2f}" for c, s in zip(out["labels"][chosen], out["scores"][chosen])]
        if chosen.any():  # torchvision warns about drawing no box
            canvas = draw_bounding_boxes(canvas, out["boxes"][chosen], labels, colors="yellow")
        if "keypoints" in out and chosen.any():
            skeleton = [(a - 1, b - 1) for a, b in metadata["keypoint_skeleton"]]
            canvas = draw_keypoints(canvas, out["keypoints"][chosen][..., :2], connectivity=skeleton, colors="red",
                                    radius=2, width=1)
        drawn.append(nn.functional.pad(canvas, (0, 160 - canvas.shape[2], 0, 160 - canvas.shape[1])))
    return make_grid(torch.stack(drawn), nrow=4, padding=4)


def example_arguments(description: str, default_iterations: int = 300) -> argparse.ArgumentParser:
    """The options every example shares: ``--form``, ``--max-iter``, ``--batch-size``, ``--seed``,
    ``--val-images``, ``--output``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--form", default="ifr", choices=FORMS, help="the tower's form")
    parser.add_argument("--max-iter", type=int, default=default_iterations, help="training iterations")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-images", type=int, default=None,
                        help="evaluate on the first N validation images (default: all 100)")
    parser.add_argument("--output", default=None, help="the drawing of the predictions (default: "
                        "$IFR_OUTPUT_ROOT/examples/<detector>_<form>.png, else output/examples/...)")
    return parser


def run_example(model: nn.Module, detector: str, replaced, args: argparse.Namespace) -> dict:
    """Trains the model whose tower(s) ``replaced`` an integration put in, evaluates it, prints the
    losses, solver steps and APs, and draws its predictions on 8 validation images into ``args.output``.
    Returns ``evaluate``'s results."""
    def log(iteration, loss, losses):
        stats = solver_stats(replaced)
        steps = f"  forward solve {stats['iterations']:.0f} steps" if "iterations" in stats else ""
        print(f"iter {iteration}/{args.max_iter}  loss {loss.item():.3f}  "
              f"({', '.join(f'{k} {v.item():.3f}' for k, v in losses.items())}){steps}", flush=True)

    seconds = train(model, detector, args.max_iter, args.batch_size, seed=args.seed, log=log)
    print(f"trained {args.max_iter} iterations in {seconds:.0f} CPU seconds")
    results = evaluate(model, detector, args.val_images)
    for task in ("bbox", "keypoints"):
        if task in results:
            scores = results[task]
            print(f"{task}: AP {scores['AP']:.1f}  AP50 {scores['AP50']:.1f}  AP75 {scores['AP75']:.1f}")
    print(f"inference: {results['cpu_seconds_per_image']:.3f} CPU seconds per image")
    path = args.output or os.path.join(output_root(), "examples", f"{detector}_{args.form}.png")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid = draw_predictions(model, detector)
    write_atomically(path, lambda tmp: Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp))
    print(f"predictions drawn in {path}")
    return results
