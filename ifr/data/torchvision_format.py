"""Records in torchvision's detection format (for ``ifr.integrations.torchvision``)."""
from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as F

from .image_reader import read_image


def as_torchvision_sample(mapped: dict, image_format: str = "BGR") -> tuple[torch.Tensor, dict]:
    """A ``DatasetMapper`` output -> (image (3, H, W) float RGB in [0, 1], target) as torchvision's
    detection models take them: ``boxes`` (N, 4) xyxy, ``labels`` (N,) with 0 for the background (so
    contiguous class k is label k + 1), ``masks`` (N, H, W) uint8."""
    image = mapped["image"].flip(0) if image_format == "BGR" else mapped["image"]
    instances = mapped.get("instances", {})
    target = {"boxes": instances.get("boxes", torch.zeros((0, 4))).float(),
              "labels": instances.get("classes", torch.zeros((0,), dtype=torch.int64)) + 1}
    if "masks" in instances:
        target["masks"] = instances["masks"].to(torch.uint8)
    return image.float() / 255.0, target


def flip_keypoints(keypoints: torch.Tensor, width: int, flip_pairs) -> torch.Tensor:
    """(N, K, 3) COCO keypoints (x, y, v) of an image ``width`` pixels wide -> those of the image flipped
    horizontally: x -> width - x (as boxes flip), and the keypoints of each of ``flip_pairs`` (index
    pairs, e.g. left and right corners) swapped, since a mirrored left corner is the right one.
    Unlabelled keypoints (v = 0) stay at (0, 0)."""
    flipped = keypoints.clone()
    flipped[..., 0] = torch.where(keypoints[..., 2] > 0, width - keypoints[..., 0], keypoints[..., 0])
    order = list(range(keypoints.shape[1]))
    for a, b in flip_pairs:
        order[a], order[b] = b, a
    return flipped[:, order]


def keypoint_sample(record: dict, flip: bool, flip_pairs) -> tuple[torch.Tensor, dict]:
    """A keypoint dataset's record -> (image (3, H, W) float RGB in [0, 1], target) as torchvision's
    Keypoint R-CNN takes them: ``boxes`` (N, 4) xyxy, ``labels`` (N,) (contiguous class k is k + 1),
    ``keypoints`` (N, K, 3); with ``flip`` the image and its target mirrored horizontally (torchvision's
    models resize images themselves, so nothing else is done). Crowd regions are left out."""
    image = F.pil_to_tensor(read_image(record["file_name"])).float() / 255.0
    annotations = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
    boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    keypoints = torch.tensor([a["keypoints"] for a in annotations], dtype=torch.float32)
    keypoints = keypoints.reshape(len(annotations), -1, 3)
    if flip:
        width = image.shape[-1]
        image = image.flip(-1)
        boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        keypoints = flip_keypoints(keypoints, width, flip_pairs)
    labels = torch.tensor([a["category_id"] + 1 for a in annotations], dtype=torch.int64)
    return image, {"boxes": boxes, "labels": labels, "keypoints": keypoints}
