"""COCO-format datasets: JSON annotations + an image folder, loaded into records (see ``catalog``)."""
from __future__ import annotations

import contextlib
import io
import logging
import math
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
    """pycocotools' index of ``json_file``, validated (``validate_coco_dataset``)."""
    check_coco_paths(json_file)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        try:
            coco = COCO(json_file)
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{json_file} is not a valid COCO instances file ({type(e).__name__}: {e})") from e
        if validate_coco_dataset(coco.dataset, json_file):
            coco.createIndex()  # without the annotations dropped
    return coco


def _ids(values, limit: int = 10) -> str:
    values = list(values)
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return ", ".join(str(v) for v in values[:limit]) + more


def _duplicates(values) -> list:
    seen, repeated = set(), {}
    for value in values:
        if value in seen:
            repeated[value] = None
        seen.add(value)
    return list(repeated)


def _is_size(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _is_box(bbox) -> bool:
    """[x, y, width, height] of finite numbers with width, height >= 0 (NaN fails every comparison)."""
    return (isinstance(bbox, (list, tuple)) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and -math.inf < v < math.inf for v in bbox)
            and bbox[2] >= 0 and bbox[3] >= 0)


def validate_coco_dataset(dataset: dict, json_file: str) -> bool:
    """Checks a COCO instances file's contents (``COCO(json_file).dataset``) for what pycocotools
    accepts but gets wrong: a ``DatasetError`` naming the file and the offending ids for duplicate
    image, annotation or category ids (pycocotools keeps the last and moves or merges the others'
    annotations), images without a file name or with a width/height that is not positive, annotations
    whose category is not among the categories, and bboxes that are not [x, y, w, h] with w, h >= 0.
    Annotations whose image_id is no image's are dropped from ``dataset`` (in place) with a warning:
    pycocotools never reads them either. Returns whether any were dropped.

    Whether an image's width/height is its file's is checked when the image is read (every image
    would have to be opened here); see ``ifr.data.image_reader.check_image_size``.
    """
    images, annotations = dataset.get("images", []), dataset.get("annotations", [])
    categories = dataset.get("categories", [])
    for kind, entries in (("image", images), ("annotation", annotations), ("category", categories)):
        repeated = _duplicates(entry["id"] for entry in entries)
        if repeated:
            raise DatasetError(f"{json_file}: {kind} ids {_ids(repeated)} are used more than once; each {kind} needs "
                               f"its own id (pycocotools would keep only the last {kind} of each id)")
    bad_sizes = [image["id"] for image in images
                 if not (_is_size(image.get("width")) and _is_size(image.get("height")))]
    if bad_sizes:
        first = next(image for image in images if image["id"] == bad_sizes[0])
        raise DatasetError(f"{json_file}: images {_ids(bad_sizes)} have a width/height that is missing or not positive "
                           f"(image {bad_sizes[0]}: width {first.get('width')}, height {first.get('height')}); give "
                           "each image its file's size in pixels")
    unnamed = [image["id"] for image in images if not isinstance(image.get("file_name"), str)]
    if unnamed:
        raise DatasetError(f"{json_file}: images {_ids(unnamed)} have no file_name")
    image_ids = {image["id"] for image in images}
    orphans = [ann["id"] for ann in annotations if ann["image_id"] not in image_ids]
    if orphans:
        dataset["annotations"] = annotations = [ann for ann in annotations if ann["image_id"] in image_ids]
        logger.warning("%s: dropped %d annotations whose image_id is no image's (annotations %s): they are neither "
                       "trained on nor evaluated", json_file, len(orphans), _ids(orphans))
    category_ids = {category["id"] for category in categories}
    unknown = [ann for ann in annotations if ann.get("category_id") not in category_ids]
    if unknown:
        raise _annotations_error(json_file, unknown, "unknown categories",
                                 f"category_id {unknown[0].get('category_id')} is not in the file's categories "
                                 f"({_ids(sorted(category_ids))})")
    malformed = [ann for ann in annotations if not _is_box(ann.get("bbox"))]
    if malformed:
        raise _annotations_error(json_file, malformed, "malformed bboxes",
                                 f"bbox must be [x, y, width, height] with width, height >= 0, got "
                                 f"{malformed[0].get('bbox')}")
    return bool(orphans)


def _annotations_error(json_file: str, bad: list[dict], defect: str, problem: str) -> DatasetError:
    """The error for annotations ``bad`` (non-empty): the first one's ``problem`` in full, the others' ids."""
    others = f"; annotations {_ids([a['id'] for a in bad[1:]])} have {defect} too" if len(bad) > 1 else ""
    return DatasetError(f"{json_file}: annotation {bad[0]['id']} of image {bad[0]['image_id']}: {problem}{others}")


def check_coco_evaluable(coco: COCO, json_file: str, num_classes: int | None = None) -> None:
    """A ``DatasetError`` when COCO AP on ``json_file`` could score nothing: no categories, or no
    annotation that is not a crowd region (COCOeval would report -1, "no ground truth", for every
    metric). With ``num_classes`` (the model's MODEL.ROI_HEADS.NUM_CLASSES): an error when the model
    predicts classes the file has no category for (contiguous ids >= its category count), a warning
    when some categories can never be predicted (their AP is 0)."""
    categories = coco.dataset.get("categories", [])
    if not categories:
        raise DatasetError(f"{json_file} has no categories: an evaluation on it has no class to score. Evaluate on "
                           "a COCO instances file with its categories and annotations")
    if not any(not ann.get("iscrowd", 0) for ann in coco.dataset.get("annotations", [])):
        raise DatasetError(f"{json_file} has no annotations (or only crowd regions): COCO AP has no ground truth to "
                           "score against. Evaluate on an annotated file (DATASETS.TEST)")
    if num_classes is not None and num_classes > len(categories):
        raise DatasetError(f"the model predicts {num_classes} classes (MODEL.ROI_HEADS.NUM_CLASSES) but {json_file} "
                           f"has {len(categories)} categories: evaluate on the dataset the model was built for, or set "
                           f"NUM_CLASSES {len(categories)} and train for these categories")
    if num_classes is not None and num_classes < len(categories):
        logger.warning("%s has %d categories but the model predicts %d classes (MODEL.ROI_HEADS.NUM_CLASSES): "
                       "categories %s are never predicted and score AP 0", json_file, len(categories), num_classes,
                       _ids(sorted(c["id"] for c in categories)[num_classes:]))


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
    """Records for every image of a COCO instances file (validated when loaded, see
    ``validate_coco_dataset``; segmentations are checked here)."""
    check_coco_paths(json_file, image_root)
    coco = load_coco_api(json_file)
    id_map = contiguous_category_ids(coco)
    records = []
    dropped = {"boxes": 0, "polygons": 0}
    for image_id in sorted(coco.getImgIds()):
        image = coco.imgs[image_id]
        annotations = []
        for ann in coco.imgToAnns.get(image_id, []):
            where = f"{json_file}: annotation {ann['id']} of image {image_id}"
            bbox = ann["bbox"]  # validated by load_coco_api
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
            if "keypoints" in ann:  # COCO's [x1, y1, v1, ..., xK, yK, vK]
                record_ann["keypoints"] = ann["keypoints"]
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
