"""COCO files are validated when loaded (one test per defect, each a real json file), and an
evaluation that could score nothing is refused before it runs."""
import json
import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from ifr.data import DatasetError, DatasetMapper, check_datasets, load_coco_json, register_coco_instances
from ifr.data.build import build_test_loader
from ifr.data.catalog import register_dataset
from ifr.config import RCNNFPNConfig
from ifr.data.coco import load_coco_api
from ifr.errors import UserError
from ifr.evaluation import COCOEvaluator
from ifr.tools import test_net

from helpers import FOLDERS, ROOT, TINY

BOX = [1, 1, 5, 5]


def _image(image_id, name="a.png", height=20, width=30):
    return {"id": image_id, "file_name": name, "height": height, "width": width}


def _ann(ann_id, image_id=1, category_id=7, bbox=BOX):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "area": 25, "iscrowd": 0,
            "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]}


def _write(tmp_path, images=None, annotations=None, categories=None) -> tuple[str, str]:
    """A COCO json in ``tmp_path`` and its image folder (one black 30x20 PNG per distinct file name)."""
    images = [_image(1)] if images is None else images
    annotations = [_ann(1)] if annotations is None else annotations
    categories = [{"id": 7, "name": "thing"}, {"id": 3, "name": "other"}] if categories is None else categories
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for name in {image["file_name"] for image in images}:
        Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(folder / name)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(path), str(folder)


def _refused(json_file, images, *fragments) -> str:
    """The DatasetError both the training loader and the evaluation's COCO index raise."""
    for load in (lambda: load_coco_json(json_file, images), lambda: load_coco_api(json_file)):
        with pytest.raises(DatasetError) as info:
            load()
        message = str(info.value)
        assert json_file in message and all(f in message for f in fragments), message
    return message


def test_a_valid_file_loads(tmp_path):
    json_file, images = _write(tmp_path, [_image(1), _image(2, "b.png")], [_ann(1), _ann(2, image_id=2, category_id=3)])
    records = load_coco_json(json_file, images)
    assert [(r["image_id"], [a["category_id"] for a in r["annotations"]]) for r in records] == [(1, [1]), (2, [0])]


def test_duplicate_image_ids_are_an_error_naming_them(tmp_path):
    """pycocotools keeps the last image of an id: image 2's annotations would be drawn on another file."""
    json_file, images = _write(tmp_path, [_image(1), _image(2, "b.png"), _image(3, "c.png"), _image(2, "d.png")],
                               [_ann(1), _ann(2, image_id=2)])
    _refused(json_file, images, "image ids 2 are used more than once")


def test_duplicate_annotation_ids_are_an_error_naming_them(tmp_path):
    """pycocotools indexes annotations by id: two of one id become one annotation counted twice."""
    json_file, images = _write(tmp_path, [_image(1), _image(2, "b.png")],
                               [_ann(5), _ann(6), _ann(5, image_id=2), _ann(6, image_id=2), _ann(8)])
    _refused(json_file, images, "annotation ids 5, 6 are used more than once")


def test_duplicate_category_ids_are_an_error(tmp_path):
    json_file, images = _write(tmp_path, categories=[{"id": 7, "name": "thing"}, {"id": 7, "name": "another"}])
    _refused(json_file, images, "category ids 7 are used more than once")


def test_annotations_of_no_image_are_dropped_with_a_warning(tmp_path, caplog):
    json_file, images = _write(tmp_path, annotations=[_ann(1), _ann(2, image_id=40), _ann(3, image_id=41)])
    with caplog.at_level(logging.WARNING, logger="ifr.data.coco"):
        records = load_coco_json(json_file, images)
        coco = load_coco_api(json_file)
    assert [len(r["annotations"]) for r in records] == [1]
    assert sorted(coco.anns) == [1] and coco.getAnnIds() == [1]  # not in the evaluation's ground truth either
    assert "dropped 2 annotations whose image_id is no image's (annotations 2, 3)" in caplog.text


@pytest.mark.parametrize("height, width", [(0, 30), (-20, 30), (20, None)], ids=["zero", "negative", "missing"])
def test_image_sizes_that_are_not_positive_are_an_error(tmp_path, height, width):
    bad = _image(2, "b.png", height=height, width=width)
    if width is None:
        del bad["width"]
    json_file, images = _write(tmp_path, [_image(1), bad])
    _refused(json_file, images, "images 2 have a width/height that is missing or not positive")


def test_an_image_size_disagreeing_with_the_file_is_an_error_when_read(tmp_path):
    json_file, images = _write(tmp_path, [_image(1, height=30, width=20)])  # the file is 30 wide, 20 high
    record = load_coco_json(json_file, images)[0]
    with pytest.raises(DatasetError) as info:
        DatasetMapper([], "BGR", is_train=True)(record)
    message = str(info.value)
    assert os.path.join(images, "a.png") in message and "image id 1" in message
    assert "is 30x20" in message and "annotation says 20x30" in message


def test_annotations_of_unknown_categories_are_an_error_naming_them(tmp_path):
    json_file, images = _write(tmp_path, annotations=[_ann(1), _ann(2, category_id=99), _ann(4, category_id=98)])
    _refused(json_file, images, "annotation 2 of image 1: category_id 99 is not in the file's categories (3, 7)",
             "annotations 4 have unknown categories too")


@pytest.mark.parametrize("bbox", [[1, 1, -3, 4], [1, 1, 3, -0.5], [1, 1, 3], [1, 1, float("nan"), 2], "1 1 3 4"],
                         ids=["negative-width", "negative-height", "three-numbers", "nan", "string"])
def test_malformed_boxes_are_an_error_naming_the_annotations(tmp_path, bbox):
    json_file, images = _write(tmp_path, annotations=[_ann(1), _ann(2, bbox=bbox), _ann(3, bbox=[0, 0, -1, -1])])
    _refused(json_file, images, "annotation 2 of image 1: bbox must be [x, y, width, height] with width, height >= 0",
             "annotations 3 have malformed bboxes too")


def _register(tmp_path, name, **contents):
    json_file, images = _write(tmp_path, **contents)
    register_coco_instances(name, json_file, images)
    return json_file


@pytest.mark.parametrize("contents, message", [
    (dict(annotations=[]), "has no annotations"),
    (dict(annotations=[{**_ann(1), "iscrowd": 1}]), "has no annotations (or only crowd regions)"),
    (dict(annotations=[], categories=[]), "has no categories"),
], ids=["no-annotations", "only-crowd", "no-categories"])
def test_an_evaluation_that_can_score_nothing_is_refused_before_it_runs(tmp_path, contents, message):
    name = f"unscorable_{tmp_path.name}"
    json_file = _register(tmp_path, name, **contents)
    for check in (lambda: check_datasets([name], 3), lambda: COCOEvaluator(name)):
        with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
            check()
        assert json_file in str(info.value)


def test_an_evaluation_with_more_model_classes_than_categories_is_refused(tmp_path, caplog):
    name = f"two_classes_{tmp_path.name}"
    _register(tmp_path, name)
    with pytest.raises(DatasetError, match="the model predicts 3 classes .* has 2 categories"):
        check_datasets([name], 3)
    with caplog.at_level(logging.WARNING, logger="ifr.data.coco"):
        COCOEvaluator(name, num_classes=1)
    assert "categories 7 are never predicted and score AP 0" in caplog.text


def test_an_evaluation_of_a_dataset_without_images_is_refused(tmp_path):
    name = f"no_images_{tmp_path.name}"
    register_dataset(name, lambda: [], {})
    with pytest.raises(UserError, match=f"dataset {name} has no images: there is nothing to evaluate"):
        build_test_loader(RCNNFPNConfig(), name)


def test_pods_test_on_a_dataset_without_annotations_fails_before_evaluating(tmp_path, monkeypatch, capsys):
    name = f"no_annotations_{tmp_path.name}"
    json_file = _register(tmp_path, name, annotations=[])
    folder = tmp_path / "experiment"
    shutil.copytree(os.path.join(ROOT, FOLDERS["ifr"]), folder)
    monkeypatch.chdir(folder)
    with pytest.raises(SystemExit) as info:
        test_net.main(["MODEL.WEIGHTS", "", *TINY, "MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.NUM_CLASSES", "2",
                       "OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.TEST", f"('{name}',)"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ERROR: {json_file} has no annotations (or only crowd regions): COCO AP has no ground truth to " \
                  "score against. Evaluate on an annotated file (DATASETS.TEST)"


def test_images_without_a_file_name_are_an_error(tmp_path):
    json_file, images = _write(tmp_path, [_image(1), _image(2, "b.png")])
    data = json.loads(open(json_file).read())
    del data["images"][1]["file_name"]
    open(json_file, "w").write(json.dumps(data))
    _refused(json_file, images, "images 2 have no file_name")
