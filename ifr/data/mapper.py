"""Turns a dataset record into the model's input dict (see ``ifr.modeling.meta_arch``)."""
from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_util
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from .coco import segmentation_to_rle
from .image_reader import ImageReadError, check_image_size, read_image
from .transforms import build_augmentation, to_format


def segmentation_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """COCO polygons or RLE (compressed or not) -> (H, W) uint8 mask."""
    return mask_util.decode(segmentation_to_rle(segmentation, height, width))


class DatasetMapper:
    """Record -> ``{"image", "height", "width", "image_id", ["instances"]}``.

    Training: reads the image, drops crowd annotations, rasterises polygons/RLE to masks, applies the
    augmentation (boxes and masks follow the image), removes instances left empty. Inference: reads
    and resizes the image only; ``height``/``width`` stay the original size for the results.
    """

    def __init__(self, pipeline, image_format: str = "BGR", is_train: bool = True, mask_on: bool = True):
        self.augment = build_augmentation(pipeline)
        self.image_format = image_format
        self.is_train = is_train
        self.mask_on = mask_on

    def __call__(self, record: dict) -> dict:
        try:
            image = read_image(record["file_name"])
        except ImageReadError as e:
            raise ImageReadError(f"{e}: check the dataset's image folder (replace or remove a corrupt file), or set "
                                 "DATALOADER.SKIP_CORRUPT_IMAGES True to train without it") from None
        check_image_size(record, image)
        out = {"height": record["height"], "width": record["width"], "image_id": record["image_id"],
               "file_name": record["file_name"]}
        if not self.is_train:
            out["image"] = to_format(F.pil_to_tensor(self.augment(image)), self.image_format)
            return out
        annotations = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
        size = (record["height"], record["width"])
        xywh = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes = tv_tensors.BoundingBoxes(xywh, format="XYWH", canvas_size=size)
        boxes = F.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
        classes = torch.tensor([a["category_id"] for a in annotations], dtype=torch.int64)
        target = {"boxes": boxes}
        if self.mask_on:
            masks = np.stack([segmentation_to_mask(a["segmentation"], *size) for a in annotations]) \
                if annotations else np.zeros((0, *size), dtype=np.uint8)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
        image, target = self.augment(image, target)
        boxes = target["boxes"].as_subclass(torch.Tensor)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        instances = {"boxes": boxes[keep], "classes": classes[keep]}
        if self.mask_on:
            instances["masks"] = target["masks"].as_subclass(torch.Tensor)[keep].bool()
        out["image"] = to_format(F.pil_to_tensor(image), self.image_format)
        out["instances"] = instances
        return out


class TTADatasetMapper:
    """Record -> ``{"height", "width", "image_id", "file_name", "views"}`` for test-time augmentation:
    one view per short edge in ``min_sizes`` (long edge at most ``max_size``, resized as the test
    pipeline's ResizeShortestEdge resizes), each also horizontally flipped with ``flip``. A view is
    ``{"image": (3, h, w) uint8 tensor in ``image_format``, "flip": bool}``."""

    def __init__(self, min_sizes, max_size: int, flip: bool, image_format: str = "BGR"):
        self.resizes = [build_augmentation([("ResizeShortestEdge", dict(short_edge_length=int(size), max_size=max_size,
                                                                        sample_style="choice"))])
                        for size in min_sizes]
        self.flip = flip
        self.image_format = image_format

    def __call__(self, record: dict) -> dict:
        image = read_image(record["file_name"])
        check_image_size(record, image)
        views = []
        for resize in self.resizes:
            tensor = to_format(F.pil_to_tensor(resize(image)), self.image_format)
            views.append({"image": tensor, "flip": False})
            if self.flip:
                views.append({"image": tensor.flip(-1), "flip": True})
        return {"height": record["height"], "width": record["width"], "image_id": record["image_id"],
                "file_name": record["file_name"], "views": views}
