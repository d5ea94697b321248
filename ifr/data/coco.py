"""COCO-format datasets: JSON annotations + an image folder, loaded into records (see ``catalog``)."""
from __future__ import annotations

import contextlib
import io
import logging
import os

from pycocotools.coco import COCO

from ifr.errors import UserError

from .catalog import register_dataset

logger = logging.getLogger(__name__)


class DatasetError(UserError):
    """A missing dataset file or a malformed annotation."""


def contiguous_category_ids(coco: COCO) -> dict[int, int]:
    """COCO category id -> contiguous id in [0, K): the index in the sorted list of ids (as cvpods)."""
    return {cat_id: i for i, cat_id in enumerate(sorted(coco.getCatIds()))}


def dataset_class_names(metadata: dict) -> list[str] | None:
    """Class names in contiguous-id order: ``metadata["thing_classes"]``, else the categories of its
    COCO json (sorted by id, as the contiguous ids are), else None when neither is available."""
    if "thing_classes" in metadata:
        return list(metadata["thing_classes"])
    json_file = metadata.get("json_file")
    if not json_file or not os.path.isfile(json_file):
        return None
    coco = load_coco_api(json_file)
    return [coco.cats[i]["name"] for i in sorted(coco.getCatIds())]


def check_coco_paths(json_file: str, image_root: str | None = None) -> None:
    """A DatasetError naming the missing path and how to fix it, before anything is loaded."""
    if not os.path.isfile(json_file):
        raise DatasetError(
            f"annotation file {json_file} does not exist. Put the dataset there (COCO: datasets/coco/"
            "annotations/instances_{train,val}2017.json and the train2017/val2017 image folders) or point "
            "IFR_DATASETS at the folder that holds coco/.")
    if image_root is not None and not os.path.isdir(image_root):
        raise DatasetError(f"image folder {image_root} does not exist (annotations: {json_file}). "
                           "Put the images there or register the dataset with the right folder.")


def load_coco_api(json_file: str) -> COCO:
    check_coco_paths(json_file)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        try:
            return COCO(json_file)
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{json_file} is not a valid COCO instances file ({type(e).__name__}: {e})") from e


def _check_segmentation(segm, where: str):
    """The segmentation with degenerate polygons (fewer than 3 points) removed; a DatasetError for
    malformed ones. An empty list means nothing drawable is left."""
    if isinstance(segm, list):
        for polygon in segm:
            if not isinstance(polygon, list) or len(polygon) % 2:
                raise DatasetError(f"{where}: a polygon must be a flat list of (x, y) pairs")
        return [polygon for polygon in segm if len(polygon) >= 6]
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise DatasetError(f"{where}: an RLE segmentation needs 'counts' and 'size'")
        return segm
    raise DatasetError(f"{where}: segmentation must be polygons (list) or RLE (dict), got {type(segm).__name__}")


def load_coco_json(json_file: str, image_root: str) -> list[dict]:
    """Records for every image of a COCO instances file; validates each annotation."""
    check_coco_paths(json_file, image_root)
    coco = load_coco_api(json_file)
    id_map = contiguous_category_ids(coco)
    records = []
    dropped = {"boxes": 0, "polygons": 0}
    for image_id in sorted(coco.getImgIds()):
        image = coco.imgs[image_id]
        annotations = []
        for ann in coco.imgToAnns.get(image_id, []):
            where = f"{json_file}: annotation {ann.get('id')} of image {image_id}"
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and bbox[2] >= 0 and bbox[3] >= 0):
                raise DatasetError(f"{where}: bbox must be [x, y, width, height] with width, height >= 0, got {bbox}")
            if ann.get("category_id") not in id_map:
                raise DatasetError(f"{where}: category_id {ann.get('category_id')} is not in the file's categories")
            if bbox[2] == 0 or bbox[3] == 0:  # degenerate: nothing to learn from
                dropped["boxes"] += 1
                continue
            record_ann = {"bbox": [float(v) for v in bbox], "category_id": id_map[ann["category_id"]],
                          "iscrowd": int(ann.get("iscrowd", 0))}
            if "segmentation" in ann:
                record_ann["segmentation"] = _check_segmentation(ann["segmentation"], where)
                if not record_ann["segmentation"]:
                    dropped["polygons"] += 1
                    continue
            annotations.append(record_ann)
        records.append({"file_name": os.path.join(image_root, image["file_name"]), "height": image["height"],
                        "width": image["width"], "image_id": image_id, "annotations": annotations})
    logger.info("loaded %d images from %s", len(records), json_file)
    if dropped["boxes"] or dropped["polygons"]:
        logger.warning("%s: dropped %d annotations with an empty box and %d whose polygons all have fewer than 3 "
                       "points", json_file, dropped["boxes"], dropped["polygons"])
    return records


def register_coco_instances(name: str, json_file: str, image_root: str, **metadata) -> None:
    """Registers a COCO-format dataset under ``name`` (loaded lazily, evaluated with COCO AP)."""
    register_dataset(name, lambda: load_coco_json(json_file, image_root),
                     dict(json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata))
