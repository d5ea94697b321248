"""The built-in keypoint set (synthetic houses): its COCO keypoint file, its flip pairs, and keypoint AP
with pycocotools at the set's OKS sigmas."""
import json
import os

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from ifr.data.coco import load_coco_json
from ifr.data.synthetic import generate_split
from ifr.data.synthetic_keypoints import KEYPOINT_HOUSES, KEYPOINTS
from ifr.data.torchvision_format import flip_keypoints, keypoint_sample
from ifr.errors import UserError
from ifr.evaluation.keypoint_evaluation import keypoint_ap

LEFT_RIGHT = [(KEYPOINTS.names.index(f"{side}_left"), KEYPOINTS.names.index(f"{side}_right"))
              for side in ("top", "bottom")]


@pytest.fixture(scope="module")
def val_split(tmp_path_factory):
    """The generated validation split: (root, pycocotools' index of its json)."""
    root = str(tmp_path_factory.mktemp("keypoints"))
    generate_split(root, "val", KEYPOINT_HOUSES)
    return root, COCO(os.path.join(root, "annotations", "instances_val.json"))


def _keypoints(annotation):
    return np.asarray(annotation["keypoints"], dtype=np.float64).reshape(-1, 3)


def test_the_file_is_coco_keypoint_format_with_in_image_consistent_keypoints(val_split):
    _, coco = val_split
    assert len(coco.getImgIds()) == KEYPOINT_HOUSES.splits["val"][0]
    (category,) = coco.loadCats(coco.getCatIds())
    assert category["keypoints"] == list(KEYPOINTS.names)
    assert all(1 <= a <= len(KEYPOINTS.names) and 1 <= b <= len(KEYPOINTS.names) for a, b in category["skeleton"])
    annotations = coco.loadAnns(coco.getAnnIds())
    assert len(annotations) > 150
    visibilities = []
    for ann in annotations:
        image = coco.imgs[ann["image_id"]]
        points = _keypoints(ann)
        assert points.shape == (len(KEYPOINTS.names), 3)
        assert ((points[:, 0] >= 0) & (points[:, 0] <= image["width"])).all()
        assert ((points[:, 1] >= 0) & (points[:, 1] <= image["height"])).all()
        assert set(points[:, 2]) <= {1, 2} and ann["num_keypoints"] == int((points[:, 2] > 0).sum())
        # a visible keypoint is on the object's visible mask, or on its outline (corners are the polygon's vertices)
        mask = coco.annToMask(ann)
        for x, y, v in points[points[:, 2] == 2]:
            window = mask[max(int(y) - 2, 0):int(y) + 3, max(int(x) - 2, 0):int(x) + 3]
            assert window.any(), (ann["id"], x, y)
        visibilities.extend(points[:, 2])
    assert 0.02 < np.mean(np.asarray(visibilities) == 1) < 0.5  # occlusion happens, but not everywhere


def test_flip_pairs_are_consistent_with_a_horizontal_flip(val_split):
    _, coco = val_split
    for ann in coco.loadAnns(coco.getAnnIds()):
        width = coco.imgs[ann["image_id"]]["width"]
        points = torch.tensor(_keypoints(ann))[None]
        flipped = flip_keypoints(points, width, KEYPOINTS.flip_pairs)
        for left, right in LEFT_RIGHT:  # left corners stay left of right ones in both images
            assert points[0, left, 0] < points[0, right, 0]
            assert flipped[0, left, 0] < flipped[0, right, 0]
            assert torch.allclose(flipped[0, left, :2], torch.stack([width - points[0, right, 0], points[0, right, 1]]))
        assert torch.allclose(flip_keypoints(flipped, width, KEYPOINTS.flip_pairs), points)


def test_the_flipped_sample_mirrors_image_boxes_and_keypoints(val_split):
    root, _ = val_split
    record = load_coco_json(os.path.join(root, "annotations", "instances_val.json"), os.path.join(root, "val"))[0]
    image, target = keypoint_sample(record, False, KEYPOINTS.flip_pairs)
    mirrored, flipped = keypoint_sample(record, True, KEYPOINTS.flip_pairs)
    width = image.shape[-1]
    assert torch.equal(mirrored, image.flip(-1))
    assert torch.allclose(flipped["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor(
        [width, 0, width, 0]), target["boxes"])
    assert torch.equal(flipped["keypoints"], flip_keypoints(target["keypoints"], width, KEYPOINTS.flip_pairs))
    assert target["labels"].tolist() == [1] * len(record["annotations"])


def _perfect_results(coco, shift=0.0):
    return [{"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0,
             "keypoints": (_keypoints(ann) + [shift, shift, 0]).flatten().tolist()}
            for ann in coco.loadAnns(coco.getAnnIds())]


def test_perfect_keypoints_score_ap_100_and_shifted_ones_less(val_split):
    _, coco = val_split
    perfect = keypoint_ap(coco, _perfect_results(coco), KEYPOINTS.oks_sigmas)
    assert perfect["AP"] == pytest.approx(100.0)
    shifted = [keypoint_ap(coco, _perfect_results(coco, shift), KEYPOINTS.oks_sigmas)["AP"] for shift in (1.5, 4.0)]
    assert 100.0 > shifted[0] > shifted[1]
    # the set's sigmas, not COCO's 17 person sigmas, are what COCOeval used
    tighter = keypoint_ap(coco, _perfect_results(coco, 1.5), [s / 2 for s in KEYPOINTS.oks_sigmas])["AP"]
    assert tighter < shifted[0]


def test_keypoint_ap_refuses_sigmas_of_another_keypoint_count(val_split):
    _, coco = val_split
    with pytest.raises(UserError, match="one sigma per keypoint"):
        keypoint_ap(coco, _perfect_results(coco), [0.05] * 17)


def test_the_keypoint_set_is_registered_with_its_metadata(datasets_root):
    from ifr.data import get_metadata

    metadata = get_metadata("synthetic_keypoints_val")
    assert metadata["keypoint_oks_sigmas"] == KEYPOINTS.oks_sigmas
    assert metadata["keypoint_flip_pairs"] == KEYPOINTS.flip_pairs
    with open(metadata["json_file"]) as f:
        assert json.load(f)["categories"][0]["keypoints"] == list(KEYPOINTS.names)
