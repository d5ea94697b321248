"""COCO files are validated when loaded (one test per defect, each a real json file), and an
evaluation that could score nothing is refused before it runs."""
import json
import logging
import os
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from ifr.data import DatasetError, DatasetMapper, check_datasets, load_coco_json, register_coco_instances
from ifr.data.build import build_test_loader, build_train_loader
from ifr.data.catalog import register_dataset
from ifr.config import RCNNFPNConfig
from ifr.data.coco import _compressed_rle_counts, load_coco_api
from ifr.errors import UserError
from ifr.evaluation import COCOEvaluator
from ifr.tools import test_net

from helpers import FOLDERS, ROOT, TINY

BOX = [1, 1, 5, 5]
# pycocotools' compressed RLE of a 40 x 30 mask: given for a 20 x 30 image, it decodes to twice its pixels
# (pycocotools itself reads a string that is too short without a word, and its area is then garbage)
_TALL_MASK = mask_util.encode(np.asfortranarray(np.ones((40, 30), dtype=np.uint8)))["counts"].decode()


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


# A NaN in a polygon once made pycocotools' rasteriser allocate until the kernel killed training (20 GB):
# the check runs in a child process whose address space is capped, so a regression fails this test
# (MemoryError, bad_alloc or a crash in the child) instead of taking the machine down.
ADDRESS_SPACE_CAP = 4 << 30  # importing torch maps ~3.4 GB of address space, little of it resident
LOAD_THEN_MAP = """
import sys
from ifr.data import DatasetError, DatasetMapper, load_coco_json
for json_file in sys.argv[2:]:
    try:
        records = load_coco_json(json_file, sys.argv[1])
    except DatasetError as e:
        print(e)
        continue
    DatasetMapper([], "BGR", is_train=True)(records[0])  # what training does with the polygon next
    sys.exit(3)
"""


def _capped_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))


def test_a_polygon_coordinate_that_is_not_a_finite_number_is_an_error_under_a_memory_cap(tmp_path):
    """A NaN grew training to 20 GB until the kernel killed it; a coordinate of 1e9 or more segfaults
    pycocotools' rasteriser, and 1e8 makes it allocate gigabytes."""
    far = "outside [-30, 60]: more than the larger side of its 30 x 20 (width x height) image away from it; " \
          "coordinates are pixels of the image"
    shown = [*(f"{v}; coordinates must be finite numbers" for v in ("NaN", "Infinity", '"6"', "null")),
             f"1000000000000.0, {far}", f"-100000000.0, {far}", f"1e+300, {far}"]
    json_files = []
    for k, value in enumerate([float("nan"), float("inf"), "6", None, 1e12, -1e8, 1e300]):
        polygon = [1, 1, 6, 1, 6, value, 1, 6]
        (tmp_path / str(k)).mkdir()
        json_file, images = _write(tmp_path / str(k), annotations=[
            _ann(1), {**_ann(2), "segmentation": [polygon]},
            {**_ann(3), "segmentation": [[1, 1, 6, 1, 6, 6], polygon]}])
        json_files.append(json_file)
    # one child for all four files: importing torch is most of its time
    child = subprocess.run([sys.executable, "-c", LOAD_THEN_MAP, images, *json_files], capture_output=True, text=True,
                           preexec_fn=_capped_address_space, timeout=300)
    assert child.returncode == 0, f"exit {child.returncode}: {child.stdout}{child.stderr[-2000:]}"
    messages = child.stdout.strip().splitlines()
    assert len(messages) == len(shown), child.stdout
    for json_file, problem, message in zip(json_files, shown, messages):
        assert message == (f"{json_file}: annotation 2 of image 1: polygon 0 has the coordinate {problem}. Fix or "
                           "remove the annotation; annotations 3 have malformed segmentations too")
    _refused(json_files[0], images, "annotation 2 of image 1: polygon 0 has the coordinate NaN")  # evaluation's too


@pytest.mark.parametrize("segmentation, problem", [
    ([[1, 1, 6, 1, 6]], "polygon 0 has 5 numbers; a polygon is a flat list of (x, y) pairs"),
    ([[1, 1, 6, 1, 6, 6], [[1, 1], [6, 1], [6, 6], [1, 6]]], "polygon 1 has the coordinate [1, 1]"),
    ("1 1 6 1 6 6", "segmentation is a string; it must be polygons"),
    ({"counts": [0, 600]}, "an RLE segmentation needs 'counts' and 'size'"),
    ({"size": [20, 30], "counts": [0, 500]}, "its uncompressed RLE counts add up to 500 pixels, not its image's "
                                             "20 x 30 = 600"),
    ({"size": [20, 30], "counts": [0, 650, -50]}, "uncompressed RLE counts must be non-negative integers"),
    ({"size": [20, 30], "counts": [0, 599.5, 0.5]}, "uncompressed RLE counts must be non-negative integers"),
    ({"size": [20, 30], "counts": 17}, "RLE counts are"),
    ({"size": [20, 30], "counts": "0"}, "its compressed RLE counts add up to 0 pixels, not its image's 20 x 30 = 600"),
    ({"size": [20, 30], "counts": _TALL_MASK}, "its compressed RLE counts add up to 1200 pixels, not its image's"),
    ({"size": [20, 30], "counts": "0[~~"}, "its compressed RLE counts are not COCO's compressed string"),
    ({"size": [20, 30], "counts": "0j"}, "its compressed RLE counts are not COCO's compressed string"),
], ids=["odd-length", "nested-pairs", "string", "rle-without-size", "rle-short", "rle-negative",
        "rle-fraction", "rle-number", "compressed-short", "compressed-long", "compressed-characters",
        "compressed-cut"])
def test_malformed_segmentations_are_an_error_naming_the_annotation(tmp_path, segmentation, problem):
    annotation = {**_ann(2), "segmentation": segmentation}
    json_file, images = _write(tmp_path, annotations=[_ann(1), annotation])
    _refused(json_file, images, f"annotation 2 of image 1: {problem}", "Fix or remove the annotation")


@pytest.mark.parametrize("keypoints, problem", [
    ([1, 1, 2, 3, 3], "a multiple of 3 numbers"),
    ([1, 1, 2], "keypoints hold 1 points but the category names 2"),
    ([1, 1, 2, float("nan"), 3, 2], "keypoints must be finite numbers"),
    ([1, 1, 2, 3, 3, 5], "visibility v must be 0"),
], ids=["not-triples", "wrong-count", "nan", "visibility"])
def test_malformed_keypoints_are_an_error_naming_the_annotation(tmp_path, keypoints, problem):
    categories = [{"id": 7, "name": "thing", "keypoints": ["a", "b"], "skeleton": []}]
    good = {**_ann(1), "keypoints": [1, 1, 2, 3, 3, 1]}
    json_file, images = _write(tmp_path, annotations=[good, {**_ann(2), "keypoints": keypoints}],
                               categories=categories)
    _refused(json_file, images, "annotation 2 of image 1: ", problem, "Fix or remove the annotation's keypoints")
    good_file, _ = _write(tmp_path, annotations=[good], categories=categories)
    assert load_coco_json(good_file, images)[0]["annotations"][0]["keypoints"] == [1, 1, 2, 3, 3, 1]


def test_compressed_rle_counts_are_the_run_lengths_of_the_mask():
    """The decoder of COCO's string against run lengths counted on the column-major mask, on masks whose
    counts need several 5-bit groups and negative differences to the count two before."""
    rng = np.random.default_rng(0)
    masks = [rng.random((20, 30)) < 0.5, rng.random((200, 300)) < 0.02, rng.random((48, 64)) < 0.999,
             np.ones((1, 1)), np.zeros((3, 5)), np.pad(np.ones((500, 1000)), ((1500, 0), (2000, 0)))]
    for mask in masks:
        pixels = mask.astype(np.uint8).flatten(order="F")
        changes = np.flatnonzero(np.diff(pixels)) + 1
        runs = np.diff(np.concatenate([[0], changes, [pixels.size]])).tolist()
        runs = [0, *runs] if pixels[0] else runs  # COCO's first run counts zeros
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert _compressed_rle_counts(rle["counts"].decode()) == runs


@pytest.mark.parametrize("compressed", [False, True], ids=["uncompressed", "compressed"])
def test_an_rle_of_another_size_than_its_image_is_an_error(tmp_path, compressed):
    """It used to stop training at iteration 0 with numpy's "all input arrays must have the same shape"."""
    mask = np.zeros((30, 20), dtype=np.uint8, order="F")  # height and width swapped
    mask[2:8, 3:9] = 1
    rle = mask_util.encode(mask)
    rle = {"size": [30, 20], "counts": rle["counts"].decode()} if compressed else \
        {"size": [30, 20], "counts": [0, 600]}
    json_file, images = _write(tmp_path, annotations=[_ann(1), {**_ann(4), "segmentation": rle, "iscrowd": 1}])
    _refused(json_file, images, "annotation 4 of image 1: its RLE size [30, 20] is not its image's [height, width] "
                                "[20, 30]; encode the mask at the image's size")


def test_polygons_a_little_outside_their_image_load(tmp_path):
    """Labelling tools write points just beyond the border (and so does COCO itself)."""
    outside = [[-0.5, -2, 31.5, -2, 31.5, 21, -0.5, 21]]
    json_file, images = _write(tmp_path, annotations=[_ann(1), {**_ann(2), "segmentation": outside}])
    assert load_coco_json(json_file, images)[0]["annotations"][1]["segmentation"] == outside


def test_an_rle_of_the_image_size_loads(tmp_path):
    mask = np.zeros((20, 30), dtype=np.uint8, order="F")
    mask[2:8, 3:9] = 1
    compressed = mask_util.encode(mask)
    annotations = [_ann(1), {**_ann(2), "segmentation": {"size": [20, 30], "counts": compressed["counts"].decode()}},
                   {**_ann(3), "segmentation": {"size": [20, 30], "counts": [40, 5, 15, 5, 535]}, "iscrowd": 1}]
    json_file, images = _write(tmp_path, annotations=annotations)
    out = DatasetMapper([], "BGR", is_train=True)(load_coco_json(json_file, images)[0])
    assert out["instances"]["masks"].sum(dim=(1, 2)).tolist() == [25, 36]  # the crowd region is not trained on


@pytest.mark.parametrize("category_id, shown", [("7", '"7" is a string'), (7.0, "7.0 is a number with a fraction"),
                                                (True, "true is a boolean"), (None, "null is null")],
                         ids=["string", "float", "bool", "null"])
def test_a_category_id_that_is_not_an_integer_is_named_as_such(tmp_path, category_id, shown):
    json_file, images = _write(tmp_path, annotations=[_ann(1), _ann(2, category_id=category_id), _ann(3)])
    message = _refused(json_file, images, f"annotation 2 of image 1: category_id {shown}, not an integer; write "
                                          "category ids as integers")
    assert "not in the file's categories" not in message


def test_category_ids_that_are_not_integers_in_the_categories_are_an_error(tmp_path):
    json_file, images = _write(tmp_path, annotations=[_ann(1, category_id="7")],
                               categories=[{"id": "7", "name": "thing"}])
    _refused(json_file, images, 'categories "7" have ids that are not integers')


def test_an_annotation_without_a_category_id_is_an_error(tmp_path):
    annotation = _ann(2)
    del annotation["category_id"]
    json_file, images = _write(tmp_path, annotations=[_ann(1), annotation])
    _refused(json_file, images, "annotation 2 of image 1: it has no category_id")


def test_polygons_of_fewer_than_three_points_are_left_out_of_training_and_evaluation_alike(tmp_path, caplog):
    """pycocotools reads a first polygon of 4 numbers as a box and fails on fewer ("input type is not
    supported") or on an empty list: the evaluation's ground truth must not hold them either."""
    annotations = [_ann(1), {**_ann(2), "segmentation": [[1, 1, 6, 6], [1, 1, 6, 1, 6, 6]]},
                   {**_ann(3), "segmentation": [[1, 1]]}, {**_ann(4), "segmentation": []}]
    json_file, images = _write(tmp_path, annotations=annotations)
    with caplog.at_level(logging.WARNING, logger="ifr.data.coco"):
        records = load_coco_json(json_file, images)
        coco = load_coco_api(json_file)
    assert [a["segmentation"] for a in records[0]["annotations"]] == [[[1, 1, 6, 1, 6, 6, 1, 6]], [[1, 1, 6, 1, 6, 6]]]
    assert sorted(coco.anns) == [1, 2] and coco.anns[2]["segmentation"] == [[1, 1, 6, 1, 6, 6]]
    dropped = "dropped 2 annotations whose polygons all have fewer than 3 points (annotations 3, 4)"
    assert caplog.text.count(dropped) == 1


def test_missing_area_and_iscrowd_are_filled_once_and_the_evaluation_scores(tmp_path, caplog):
    """Files from labelling tools often lack both; COCOeval then failed with KeyError after training."""
    name = f"no_area_{tmp_path.name}"
    rle = {"size": [20, 30], "counts": [40, 5, 15, 5, 535]}
    annotations = [_ann(1), {**_ann(2, bbox=[2, 0, 2, 5]), "segmentation": rle},
                   {k: v for k, v in _ann(3, bbox=[10, 10, 4, 3]).items() if k != "segmentation"}]
    for annotation in annotations:
        del annotation["area"], annotation["iscrowd"]
    json_file = _register(tmp_path, name, annotations=annotations)
    with caplog.at_level(logging.WARNING, logger="ifr.data.coco"):
        check_datasets([name], 2)
        evaluator = COCOEvaluator(name, tasks=("bbox",))
    assert caplog.text.count("3 annotations have no 'area' (set to the pixel count of the mask, of the box without "
                             "one); 3 annotations have no 'iscrowd' (set to 0), as the COCO tools expect") == 1
    assert {i: (a["area"], a["iscrowd"]) for i, a in evaluator.coco_gt.anns.items()} == \
        {1: (25.0, 0), 2: (10.0, 0), 3: (12.0, 0)}  # polygon 5x5 px, RLE 2x5, box 4x3
    assert [a["iscrowd"] for a in load_coco_json(json_file, str(tmp_path / "images"))[0]["annotations"]] == [0, 0, 0]
    boxes = torch.tensor([[1.0, 1, 6, 6], [2, 0, 4, 5], [10, 10, 14, 13]])
    evaluator.process([{"image_id": 1}], [{"instances": {"boxes": boxes, "classes": torch.tensor([1, 1, 1]),
                                                         "scores": torch.tensor([0.9, 0.8, 0.7])}}])
    assert evaluator.evaluate()["bbox"]["AP"] == pytest.approx(100.0)


def test_a_training_set_with_more_categories_than_the_model_classes_is_refused_before_training(tmp_path):
    """It used to fail at iteration 0 with "IndexError: Target 4 is out of bounds"."""
    name = f"five_categories_{tmp_path.name}"
    json_file = _register(tmp_path, name, annotations=[_ann(1, category_id=5)],
                          categories=[{"id": i, "name": f"c{i}"} for i in range(1, 6)])
    config = RCNNFPNConfig()
    config.merge_from_list(["DATASETS.TRAIN", f"('{name}',)", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
                            "DATALOADER.NUM_WORKERS", "0"])
    with pytest.raises(DatasetError) as info:
        build_train_loader(config, seed=0)
    assert str(info.value) == (f"dataset {name} ({json_file}) has 5 categories but the model predicts 3 classes "
                               "(MODEL.ROI_HEADS.NUM_CLASSES): set MODEL.ROI_HEADS.NUM_CLASSES 5, or train on a "
                               "dataset with at most 3 categories")
    config.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSES", "5"])
    assert len(build_train_loader(config, seed=0).dataset) == 1


def test_box_only_annotations_are_refused_for_a_model_with_masks_and_trained_for_one_without(tmp_path):
    """The mapper failed with KeyError 'segmentation' at the first batch drawing such an image, and the
    segm evaluation with KeyError 'rle' after all the inference; boxes alone are fine without masks."""
    name = f"box_only_{tmp_path.name}"
    boxes_only = [{k: v for k, v in _ann(i, image_id=i).items() if k != "segmentation"} for i in (2, 3)]
    json_file = _register(tmp_path, name, images=[_image(1), _image(2, "b.png"), _image(3, "c.png")],
                          annotations=[_ann(1), *boxes_only])
    config = RCNNFPNConfig()
    config.merge_from_list(["DATASETS.TRAIN", f"('{name}',)", "MODEL.ROI_HEADS.NUM_CLASSES", "2",
                            "DATALOADER.NUM_WORKERS", "0", "MODEL.MASK_ON", "True"])
    with pytest.raises(DatasetError) as info:
        build_train_loader(config, seed=0)
    assert str(info.value) == (f"dataset {name} ({json_file}): 2 annotations have no segmentation (images 2, 3), but "
                               "MODEL.MASK_ON trains a mask for every annotation: add their segmentations, or set "
                               "MODEL.MASK_ON False to train boxes only")
    for check in (lambda: check_datasets([name], 2, ("bbox", "segm")), lambda: COCOEvaluator(name)):
        with pytest.raises(DatasetError) as info:
            check()
        assert str(info.value).startswith(f"{json_file}: annotation 2 of image 2: it has no segmentation, which the "
                                          "segm AP of a model with masks (MODEL.MASK_ON) needs"), str(info.value)
        assert str(info.value).endswith("; annotations 3 have no segmentation too")
    config.merge_from_list(["MODEL.MASK_ON", "False"])
    batch = next(iter(build_train_loader(config, seed=0)))
    assert all("masks" not in sample["instances"] for sample in batch)
    check_datasets([name], 2, ("bbox",))
    COCOEvaluator(name, tasks=("bbox",))


@pytest.mark.parametrize("change, problem", [
    (lambda d: d["annotations"][1].update(iscrowd="0"),
     'annotation 2 of image 1: iscrowd is "0" (a string); it must be the integer 0 or 1'),
    (lambda d: d["annotations"][1].update(iscrowd=2), "annotation 2 of image 1: iscrowd is 2; it must be"),
    (lambda d: d["annotations"][1].update(area=-5), "annotation 2 of image 1: area is -5; it must be a non-negative"),
    (lambda d: d["annotations"][1].update(area="25"), 'annotation 2 of image 1: area is "25"; it must be'),
    (lambda d: d["categories"][0].pop("name"), "categories 7 have no name (a string)"),
    (lambda d: d.update(images={}), 'its "images" is an object; the COCO instances format has a list of objects'),
], ids=["iscrowd-string", "iscrowd-2", "area-negative", "area-string", "category-without-name", "images-object"])
def test_fields_the_coco_tools_misread_are_an_error(tmp_path, change, problem):
    """COCOeval reads iscrowd as a truth value (the string "0" made a crowd region) and area for its
    ranges; a category without a name failed with KeyError: 'name' in the loader."""
    contents = {"images": [_image(1)], "annotations": [_ann(1), _ann(2)],
                "categories": [{"id": 7, "name": "thing"}, {"id": 3, "name": "other"}]}
    change(contents)
    json_file, images = _write(tmp_path)  # the image folder; the json is replaced by the changed contents
    with open(json_file, "w") as f:
        json.dump(contents, f)
    _refused(json_file, images, problem)
