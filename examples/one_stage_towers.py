"""Train a torchvision RetinaNet (v2 head) or FCOS whose classification and regression towers are IFR
towers (or the explicit stacks, or weight-sharing blocks) on the built-in shapes on the CPU, evaluate its
box AP with pycocotools, and draw its predictions.

    python examples/one_stage_towers.py [--detector retinanet_v2|fcos] [--form ifr|weight_sharing|explicit]
                                        [--max-iter 300]

The model is ``ifr.presets.torchvision_detectors``' CPU-sized ``RetinaNet`` (``retinanet_resnet50_fpn_v2``'s
head: 4 x [conv, GroupNorm(32), ReLU] per tower, GIoU box loss) or ``FCOS`` (the same towers), at 64
channels over 5 FPN levels, on a small GroupNorm CNN trained from scratch, on ``synthetic_shapes_train``.
``replace_dense_head_towers`` replaces both towers by the chosen form, each injecting the level's FPN
features; the IFR form trains unrolled for the first 80% of the iterations, then with the implicit
solve. The drawing (``torchvision.utils.draw_bounding_boxes``) goes to
``output/examples/<detector>_<form>.png``.
"""
from __future__ import annotations

import torch

from ifr.integrations.torchvision import replace_dense_head_towers
from ifr.presets.torchvision_detectors import build_detector, class_names, example_arguments, run_example


def main() -> None:
    parser = example_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--detector", default="retinanet_v2", choices=("retinanet_v2", "fcos"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = build_detector(args.detector, num_classes=len(class_names(args.detector)))
    towers = replace_dense_head_towers(model, head=args.form, pretrained_steps=int(0.8 * args.max_iter))
    run_example(model, args.detector, towers, args)


if __name__ == "__main__":
    main()
