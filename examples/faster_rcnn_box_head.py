"""Train a torchvision Faster R-CNN whose v2 box head's conv tower is an IFR tower (or the explicit stack,
or the weight-sharing block) on the built-in shapes on the CPU, evaluate its box AP with pycocotools,
and draw its predictions.

    python examples/faster_rcnn_box_head.py [--form ifr|weight_sharing|explicit] [--max-iter 300]

The model is ``ifr.presets.torchvision_detectors``' CPU-sized ``FasterRCNN`` with
``fasterrcnn_resnet50_fpn_v2``'s heads (a 2-conv RPN head; the box head ``FastRCNNConvFCHead``: 4 x [conv,
BatchNorm, ReLU] then one FC layer) at 32 channels, on a small GroupNorm CNN trained from scratch, on
``synthetic_shapes_train``. ``replace_box_head`` replaces the 4 convs by the chosen form and keeps the
FC layer; the IFR form trains unrolled for the first 80% of the iterations, then with the implicit
solve. The drawing (``torchvision.utils.draw_bounding_boxes``) goes to
``output/examples/faster_rcnn_v2_<form>.png``.
"""
from __future__ import annotations

import torch

from ifr.integrations.torchvision import replace_box_head
from ifr.presets.torchvision_detectors import build_detector, class_names, example_arguments, run_example


def main() -> None:
    args = example_arguments(__doc__.split("\n\n")[0]).parse_args()
    torch.manual_seed(args.seed)
    model = build_detector("faster_rcnn_v2", num_classes=len(class_names("faster_rcnn_v2")))
    tower = replace_box_head(model, head=args.form, pretrained_steps=int(0.8 * args.max_iter))
    run_example(model, "faster_rcnn_v2", tower, args)


if __name__ == "__main__":
    main()
