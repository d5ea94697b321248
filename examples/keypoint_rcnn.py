"""Train a torchvision Keypoint R-CNN whose keypoint head is an IFR tower (or the explicit stack, or the
weight-sharing block) on the built-in keypoint set on the CPU, evaluate its keypoint AP and box AP with
pycocotools, and draw its predictions.

    python examples/keypoint_rcnn.py [--form ifr|weight_sharing|explicit] [--max-iter 300]

The model is ``ifr.presets.torchvision_detectors``' CPU-sized ``KeypointRCNN`` (a small GroupNorm CNN
under a 32-channel FPN, trained from scratch; its ``KeypointRCNNHeads`` is torchvision's 8 convs with the
first widening 32 -> 64) on ``synthetic_keypoints_train`` (houses with 6 named keypoints, generated on
first use). ``replace_keypoint_head`` keeps the widening conv explicit and replaces the other 7 by the
chosen form, injecting the widening conv's output; the IFR form trains unrolled for the first 80% of
the iterations, then with the implicit solve. The drawing (boxes and keypoints joined by the set's
skeleton, ``torchvision.utils.draw_keypoints``) goes to ``output/examples/keypoint_rcnn_<form>.png``.
"""
from __future__ import annotations

import torch

from ifr.integrations.torchvision import replace_keypoint_head
from ifr.presets.torchvision_detectors import build_detector, example_arguments, run_example


def main() -> None:
    args = example_arguments(__doc__.split("\n\n")[0]).parse_args()
    torch.manual_seed(args.seed)
    model = build_detector("keypoint_rcnn", num_classes=1)
    tower = replace_keypoint_head(model, head=args.form, pretrained_steps=int(0.8 * args.max_iter))
    run_example(model, "keypoint_rcnn", tower, args)


if __name__ == "__main__":
    main()
