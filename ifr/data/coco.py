"""COCO-format datasets: JSON annotations + an image folder, loaded into records (see ``catalog``)."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os

from pycocotools import mask as mask_util
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
    """pycocotools' index of ``json_file``, validated (``validate_coco_dataset``) before it is built."""
    check_coco_paths(json_file)
    coco = COCO()
    try:
        with open(json_file) as f:
            coco.dataset = json.load(f)
        if not isinstance(coco.dataset, dict):
            raise TypeError(f"the file holds a {type(coco.dataset).__name__}, not an object")
        validate_coco_dataset(coco.dataset, json_file)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            coco.createIndex()
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{json_file} is not a valid COCO instances file ({type(e).__name__}: {e})") from e
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


def validate_coco_dataset(dataset: dict, json_file: str) -> None:
    """Checks a COCO instances file's contents (its parsed json, before pycocotools indexes it) for
    what pycocotools accepts but gets wrong or crashes on later: a ``DatasetError`` naming the file and
    the offending ids for duplicate image, annotation or category ids (pycocotools keeps the last and
    moves or merges the others' annotations), images without a file name or with a width/height that is not positive,
    categories without a name, category ids that are not integers or not among the categories, bboxes
    that are not [x, y, w, h] with w, h >= 0, segmentations that are not drawable on their image
    (``_segmentation_problem``), iscrowd flags other than 0 and 1 and areas that are not non-negative
    numbers.

    Changed in ``dataset`` (in place), each said once per file in a warning: annotations whose image_id
    is no image's are dropped (pycocotools never reads them either), polygons of fewer than 3 points
    are removed and annotations left without any polygon dropped (COCOeval would crash on them or read
    them as boxes), a missing ``iscrowd`` is set to 0 and a missing ``area`` computed from the mask
    (the box without one), as COCOeval needs both.

    Whether an image's width/height is its file's is checked when the image is read (every image
    would have to be opened here); see ``ifr.data.image_reader.check_image_size``.
    """
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key, []), list):
            raise DatasetError(f"{json_file}: its \"{key}\" is {_json_type(dataset[key])}; the COCO instances format "
                               "has a list of objects there")
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
    unnamed = [category["id"] for category in categories if not isinstance(category.get("name"), str)]
    if unnamed:
        raise DatasetError(f"{json_file}: categories {_ids(unnamed)} have no name (a string); name each category, "
                           "e.g. {\"id\": 1, \"name\": \"person\"}")
    image_sizes = {image["id"]: (image["height"], image["width"]) for image in images}
    orphans = [ann["id"] for ann in annotations if ann["image_id"] not in image_sizes]
    if orphans:
        dataset["annotations"] = annotations = [ann for ann in annotations if ann["image_id"] in image_sizes]
        _warn_once(json_file, f"dropped {len(orphans)} annotations whose image_id is no image's (annotations "
                              f"{_ids(orphans)}): they are neither trained on nor evaluated")
    _check_category_ids(annotations, categories, json_file)
    malformed = [ann for ann in annotations if not _is_box(ann.get("bbox"))]
    if malformed:
        raise _annotations_error(json_file, malformed, "malformed bboxes",
                                 f"bbox must be [x, y, width, height] with width, height >= 0, got "
                                 f"{malformed[0].get('bbox')}")
    undrawable = [(ann, problem) for ann in annotations if "segmentation" in ann
                  for problem in [_segmentation_problem(ann["segmentation"], *image_sizes[ann["image_id"]])] if problem]
    if undrawable:
        raise _annotations_error(json_file, [ann for ann, _ in undrawable], "malformed segmentations",
                                 f"{undrawable[0][1]}. Fix or remove the annotation")
    keypoint_counts = {c["id"]: len(c["keypoints"]) for c in categories if isinstance(c.get("keypoints"), list)}
    bad_keypoints = [(ann, problem) for ann in annotations if "keypoints" in ann
                     for problem in [_keypoints_problem(ann["keypoints"], keypoint_counts.get(ann["category_id"]))]
                     if problem]
    if bad_keypoints:
        raise _annotations_error(json_file, [ann for ann, _ in bad_keypoints], "malformed keypoints",
                                 f"{bad_keypoints[0][1]}. Fix or remove the annotation's keypoints")
    without_polygons = _remove_degenerate_polygons(annotations)
    if without_polygons:
        dataset["annotations"] = annotations = [ann for ann in annotations if ann.get("segmentation") != []]
        _warn_once(json_file, f"dropped {len(without_polygons)} annotations whose polygons all have fewer than 3 "
                              f"points (annotations {_ids(without_polygons)}): they are neither trained on nor "
                              "evaluated")
    _fill_area_and_iscrowd(annotations, image_sizes, json_file)
    # COCOeval reads iscrowd as a truth value (the string "0" is a crowd region) and area for its ranges
    bad_crowd = [ann for ann in annotations if ann["iscrowd"] not in (0, 1) or isinstance(ann["iscrowd"], float)]
    if bad_crowd:
        value = bad_crowd[0]["iscrowd"]
        shown = json.dumps(value) if _is_number(value) else f"{json.dumps(value)} ({_json_type(value)})"
        raise _annotations_error(json_file, bad_crowd, "malformed iscrowd flags",
                                 f"iscrowd is {shown}; it must be the integer 0 or 1. Fix the annotation")
    bad_area = [ann for ann in annotations
                if not (_is_number(ann["area"]) and 0 <= ann["area"] < math.inf)]
    if bad_area:
        value = bad_area[0]["area"]
        raise _annotations_error(json_file, bad_area, "malformed areas",
                                 f"area is {json.dumps(value)}; it must be a non-negative number (the mask's pixel "
                                 "count). Fix the annotation, or remove its area to have it computed")


_JSON_TYPES = {str: "a string", float: "a number with a fraction", bool: "a boolean", list: "a list", dict: "an object",
               type(None): "null"}


def _json_type(value) -> str:
    """How a json value of ``value``'s type is called in a message: "a string", "null", ..."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_category_ids(annotations: list[dict], categories: list[dict], json_file: str) -> None:
    """Category ids must be integers (a string "1" is not the category 1 for pycocotools either) and
    every annotation's must be one of the categories'."""
    mistyped = [category["id"] for category in categories if not _is_integer(category["id"])]
    if mistyped:
        raise DatasetError(f"{json_file}: categories {_ids(json.dumps(i) for i in mistyped)} have ids that are not "
                           "integers; write category ids as integers (e.g. 1, not \"1\")")
    missing = [ann for ann in annotations if "category_id" not in ann]
    if missing:
        raise _annotations_error(json_file, missing, "no category_id", "it has no category_id; give each annotation "
                                 "the id of one of the file's categories")
    mistyped = [ann for ann in annotations if not _is_integer(ann["category_id"])]
    if mistyped:
        value = mistyped[0]["category_id"]
        raise _annotations_error(json_file, mistyped, "category ids that are not integers",
                                 f"category_id {json.dumps(value)} is {_json_type(value)}"
                                 ", not an integer; write category ids as integers (e.g. 1, not \"1\")")
    category_ids = {category["id"] for category in categories}
    unknown = [ann for ann in annotations if ann["category_id"] not in category_ids]
    if unknown:
        raise _annotations_error(json_file, unknown, "unknown categories",
                                 f"category_id {unknown[0]['category_id']} is not in the file's categories "
                                 f"({_ids(sorted(category_ids))})")


def _polygons_problem(polygons: list, height, width) -> str | None:
    """What makes a list of polygons undrawable on an image of ``height`` x ``width``, or None. ``sum``
    runs in C over each polygon's coordinates: a non-number raises TypeError, a NaN or infinity makes
    the sum non-finite (a finite sum that overflows is told apart by the second look). Coordinates must
    also lie within the image's larger side of it (two more passes in C: min and max): pycocotools'
    rasteriser allocates in proportion to the outline's length and crashes (segmentation fault) on
    coordinates beyond about 4e8."""
    for index, polygon in enumerate(polygons):
        if not isinstance(polygon, list):
            return f"polygon {index} is {_json_type(polygon)}; a polygon is a flat " \
                   "list of (x, y) pairs [x1, y1, x2, y2, ...]"
        if len(polygon) % 2:
            return f"polygon {index} has {len(polygon)} numbers; a polygon is a flat list of (x, y) pairs " \
                   "[x1, y1, x2, y2, ...]"
        try:
            total = sum(polygon)
        except TypeError:
            total = None
        if total is None or not math.isfinite(total):
            bad = next((v for v in polygon if not _is_number(v) or not math.isfinite(v)), None)
            if bad is not None or total is None:
                return f"polygon {index} has the coordinate {json.dumps(bad)}; coordinates must be finite numbers"
        side = max(height, width)
        if polygon and (min(polygon) < -side or max(polygon) > 2 * side):
            far = next(v for v in polygon if not -side <= v <= 2 * side)
            return f"polygon {index} has the coordinate {json.dumps(far)}, outside [-{side}, {2 * side}]: more than " \
                   f"the larger side of its {width} x {height} (width x height) image away from it; coordinates " \
                   "are pixels of the image"
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rle_problem(rle: dict, height, width) -> str | None:
    """What makes an RLE (COCO's compressed string or uncompressed list of run lengths) unusable on an
    image of ``height`` x ``width``, or None."""
    if "counts" not in rle or "size" not in rle:
        return "an RLE segmentation needs 'counts' and 'size'"
    size, counts = rle["size"], rle["counts"]
    if not isinstance(size, list) or size != [height, width]:
        return f"its RLE size {json.dumps(size)} is not its image's [height, width] [{height}, {width}]; encode " \
               "the mask at the image's size"
    if isinstance(counts, str):
        # pycocotools reads a string that decodes to too few pixels without a word (its area is then garbage)
        kind, counts = "compressed", _compressed_rle_counts(counts)
        if counts is None:
            return "its compressed RLE counts are not COCO's compressed string (characters '0' to 'o' encoding " \
                   "run lengths); encode the mask with pycocotools.mask.encode"
    elif isinstance(counts, list):
        kind = "uncompressed"
    else:
        return f"RLE counts are {_json_type(counts)}; they must be a list of run " \
               "lengths or COCO's compressed string"
    try:
        total, lowest = sum(counts), min(counts, default=0)
    except TypeError:
        total, lowest = None, None
    if not _is_integer(total) or lowest < 0:
        return f"{kind} RLE counts must be non-negative integers (run lengths)"
    if total != height * width:
        return f"its {kind} RLE counts add up to {total} pixels, not its image's {height} x {width} = " \
               f"{height * width}"
    return None


def _compressed_rle_counts(text: str) -> list[int] | None:
    """The run lengths of COCO's compressed RLE string, or None when ``text`` is not one. The format
    (pycocotools' rleToString): each count is a little-endian sequence of 5-bit groups stored as
    ``chr(48 + group)``, bit 0x20 of a character meaning "more groups follow" and bit 0x10 of the last
    one the sign; from the fourth count on (index 3), what is stored is the difference to the count two before."""
    counts = []
    value = shift = 0
    for character in text:
        group = ord(character) - 48
        if not 0 <= group < 64:
            return None
        value |= (group & 0x1F) << shift
        shift += 5
        if group & 0x20:
            continue
        if group & 0x10:
            value -= 1 << shift
        counts.append(value + counts[-2] if len(counts) > 2 else value)
        value = shift = 0
    return None if shift else counts


def _segmentation_problem(segmentation, height, width) -> str | None:
    """What makes a segmentation undrawable on an image of ``height`` x ``width``, or None."""
    if isinstance(segmentation, list):
        return _polygons_problem(segmentation, height, width)
    if isinstance(segmentation, dict):
        return _rle_problem(segmentation, height, width)
    return f"segmentation is {_json_type(segmentation)}; it must be " \
           "polygons (a list) or an RLE (an object with size and counts)"


def _remove_degenerate_polygons(annotations: list[dict]) -> list:
    """Removes (in place) polygons of fewer than 3 points; the ids of annotations left without any
    polygon (their segmentation is then ``[]``)."""
    emptied = []
    for ann in annotations:
        polygons = ann.get("segmentation")
        if isinstance(polygons, list) and (not polygons or any(len(polygon) < 6 for polygon in polygons)):
            ann["segmentation"] = [polygon for polygon in polygons if len(polygon) >= 6]
            if not ann["segmentation"]:
                emptied.append(ann["id"])
    return emptied


def _keypoints_problem(keypoints, count: int | None) -> str | None:
    """What makes ``keypoints`` unusable as COCO's [x1, y1, v1, ..., xK, yK, vK] for a category that
    names ``count`` keypoints (None: the category names none), or None."""
    if not isinstance(keypoints, list) or len(keypoints) % 3:
        return "keypoints must be a list [x1, y1, v1, ..., xK, yK, vK] (a multiple of 3 numbers)"
    if count is not None and len(keypoints) != 3 * count:
        return f"keypoints hold {len(keypoints) // 3} points but the category names {count}"
    if not all(_is_number(v) and -math.inf < v < math.inf for v in keypoints):
        return "keypoints must be finite numbers (found a NaN, an infinity or a non-number)"
    if any(v not in (0, 1, 2) for v in keypoints[2::3]):
        return "each keypoint's visibility v must be 0 (not labelled), 1 (labelled, hidden) or 2 (visible)"
    return None


def segmentation_to_rle(segmentation, height: int, width: int) -> dict:
    """COCO polygons or RLE (compressed or not) of an (H, W) image -> one compressed RLE."""
    if isinstance(segmentation, list):
        return mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_util.frPyObjects(segmentation, height, width)
    return segmentation


def _mask_area(segmentation, height: int, width: int) -> float:
    """Pixel count of a (validated) segmentation, as COCO computes ``area``."""
    return float(mask_util.area(segmentation_to_rle(segmentation, height, width)))


def _fill_area_and_iscrowd(annotations: list[dict], image_sizes: dict, json_file: str) -> None:
    """Sets (in place) a missing ``iscrowd`` to 0 and a missing ``area`` to the mask's pixel count (the
    box's area for annotations without a mask), as COCOeval reads both; says so once per file."""
    no_crowd_flag = no_area = 0
    for ann in annotations:
        if "iscrowd" not in ann:
            ann["iscrowd"] = 0
            no_crowd_flag += 1
        if "area" not in ann:
            bbox = ann["bbox"]
            ann["area"] = _mask_area(ann["segmentation"], *(int(v) for v in image_sizes[ann["image_id"]])) \
                if "segmentation" in ann else float(bbox[2] * bbox[3])
            no_area += 1
    filled = [f"{no_area} annotations have no 'area' (set to the pixel count of the mask, of the box without one)"
              if no_area else "", f"{no_crowd_flag} annotations have no 'iscrowd' (set to 0)" if no_crowd_flag else ""]
    if no_area or no_crowd_flag:
        _warn_once(json_file, "; ".join(text for text in filled if text) + ", as the COCO tools expect")


_WARNED: set[tuple[str, str]] = set()


def _warn_once(json_file: str, text: str) -> None:
    """A warning about ``json_file``, given once per process (a file is loaded again for every evaluation)."""
    if (json_file, text) not in _WARNED:
        _WARNED.add((json_file, text))
        logger.warning("%s: %s", json_file, text)


def _annotations_error(json_file: str, bad: list[dict], defect: str, problem: str) -> DatasetError:
    """The error for annotations ``bad`` (non-empty): the first one's ``problem`` in full, the others' ids."""
    others = f"; annotations {_ids([a['id'] for a in bad[1:]])} have {defect} too" if len(bad) > 1 else ""
    return DatasetError(f"{json_file}: annotation {bad[0]['id']} of image {bad[0]['image_id']}: {problem}{others}")


def check_coco_evaluable(coco: COCO, json_file: str, num_classes: int | None = None,
                         tasks: tuple[str, ...] = ("bbox",)) -> None:
    """A ``DatasetError`` when COCO AP on ``json_file`` could score nothing: no categories, or no
    annotation that is not a crowd region (COCOeval would report -1, "no ground truth", for every
    metric), or, with "segm" in ``tasks``, an annotation without a segmentation (COCOeval compares
    masks with every ground-truth annotation's, crowd regions included). With ``num_classes`` (the
    model's MODEL.ROI_HEADS.NUM_CLASSES): an error when the model predicts classes the file has no
    category for (contiguous ids >= its category count), a warning when some categories can never be
    predicted (their AP is 0)."""
    categories = coco.dataset.get("categories", [])
    if not categories:
        raise DatasetError(f"{json_file} has no categories: an evaluation on it has no class to score. Evaluate on "
                           "a COCO instances file with its categories and annotations")
    if not any(not ann.get("iscrowd", 0) for ann in coco.dataset.get("annotations", [])):
        raise DatasetError(f"{json_file} has no annotations (or only crowd regions): COCO AP has no ground truth to "
                           "score against. Evaluate on an annotated file (DATASETS.TEST)")
    if "segm" in tasks:
        unmasked = [ann for ann in coco.dataset["annotations"] if "segmentation" not in ann]
        if unmasked:
            raise _annotations_error(json_file, unmasked, "no segmentation",
                                     "it has no segmentation, which the segm AP of a model with masks "
                                     "(MODEL.MASK_ON) needs for every annotation: add the segmentations, or evaluate "
                                     "boxes only (MODEL.MASK_ON False)")
    if num_classes is not None and num_classes > len(categories):
        raise DatasetError(f"the model predicts {num_classes} classes (MODEL.ROI_HEADS.NUM_CLASSES) but {json_file} "
                           f"has {len(categories)} categories: evaluate on the dataset the model was built for, or set "
                           f"NUM_CLASSES {len(categories)} and train for these categories")
    if num_classes is not None and num_classes < len(categories):
        logger.warning("%s has %d categories but the model predicts %d classes (MODEL.ROI_HEADS.NUM_CLASSES): "
                       "categories %s are never predicted and score AP 0", json_file, len(categories), num_classes,
                       _ids(sorted(c["id"] for c in categories)[num_classes:]))


def load_coco_json(json_file: str, image_root: str) -> list[dict]:
    """Records for every image of a COCO instances file (validated when loaded, see
    ``validate_coco_dataset``); annotations with an empty box are left out (counted in the log)."""
    records, _ = _load_records(json_file, image_root)
    return records


def _load_records(json_file: str, image_root: str) -> tuple[list[dict], list[str]]:
    """``load_coco_json``'s records and the file's class names in contiguous-id order."""
    check_coco_paths(json_file, image_root)
    coco = load_coco_api(json_file)
    id_map = contiguous_category_ids(coco)
    records = []
    empty_boxes = 0
    for image_id in sorted(coco.getImgIds()):
        image = coco.imgs[image_id]
        annotations = []
        for ann in coco.imgToAnns.get(image_id, []):
            bbox = ann["bbox"]  # validated by load_coco_api, as the segmentation
            if bbox[2] == 0 or bbox[3] == 0:  # degenerate: nothing to learn from
                empty_boxes += 1
                continue
            record_ann = {"bbox": [float(v) for v in bbox], "category_id": id_map[ann["category_id"]],
                          "iscrowd": int(ann["iscrowd"])}
            if "segmentation" in ann:
                record_ann["segmentation"] = ann["segmentation"]
            if "keypoints" in ann:  # COCO's [x1, y1, v1, ..., xK, yK, vK]
                record_ann["keypoints"] = ann["keypoints"]
            annotations.append(record_ann)
        records.append({"file_name": os.path.join(image_root, image["file_name"]), "height": image["height"],
                        "width": image["width"], "image_id": image_id, "annotations": annotations})
    logger.info("loaded %d images from %s", len(records), json_file)
    if empty_boxes:
        logger.warning("%s: dropped %d annotations with an empty box", json_file, empty_boxes)
    return records, [coco.cats[i]["name"] for i in sorted(id_map)]


def register_coco_instances(name: str, json_file: str, image_root: str, **metadata) -> None:
    """Registers a COCO-format dataset under ``name`` (loaded lazily, evaluated with COCO AP). Once
    loaded, its metadata holds the file's ``thing_classes`` unless given."""
    info = dict(json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata)

    def loader() -> list[dict]:
        records, class_names = _load_records(json_file, image_root)
        info.setdefault("thing_classes", class_names)
        return records

    register_dataset(name, loader, info)
