"""Datasets, the synthetic generator, the mapper and the data errors users can hit."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ifr.data import DatasetError, DatasetMapper, get_dataset_dicts, get_metadata, load_coco_json
from ifr.data.synthetic import CLASSES, generate_split
from ifr.data.samplers import GroupedInfiniteBatchSampler, InferenceSampler

TRAIN_PIPELINE = [("ResizeShortestEdge", dict(short_edge_length=(64, 96), max_size=200, sample_style="choice")),
                  ("RandomFlip", dict())]


def _hash_split(root, split):
    generate_split(str(root), split)
    digest = hashlib.sha256(open(os.path.join(root, "annotations", f"instances_{split}.json"), "rb").read())
    digest.update(open(os.path.join(root, split, "000003.png"), "rb").read())
    return digest.hexdigest()


def test_synthetic_dataset_is_deterministic(tmp_path):
    assert _hash_split(tmp_path / "a", "val") == _hash_split(tmp_path / "b", "val")


def test_builtin_synthetic_dataset_loads_with_masks_matching_boxes(datasets_root):
    records = get_dataset_dicts("synthetic_shapes_val")
    assert len(records) == 100 and get_metadata("synthetic_shapes_val")["synthetic"] is True
    categories = {a["category_id"] for r in records for a in r["annotations"]}
    assert categories == set(range(len(CLASSES)))
    mapper = DatasetMapper([], "RGB", is_train=True)
    for record in records[:10]:
        out = mapper(record)
        inst = out["instances"]
        assert out["image"].dtype == torch.uint8 and out["image"].shape[1:] == (record["height"], record["width"])
        for box, mask in zip(inst["boxes"], inst["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            # the box of a polygon / RLE is the tight box of its rasterised mask (within a pixel)
            torch.testing.assert_close(box, torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float(),
                                       atol=1.0, rtol=0)


def test_train_mapper_resizes_flips_and_keeps_boxes_on_masks(datasets_root):
    record = get_dataset_dicts("synthetic_shapes_train")[0]
    torch.manual_seed(3)
    mapper = DatasetMapper(TRAIN_PIPELINE, "BGR", is_train=True)
    plain = DatasetMapper([], "BGR", is_train=True)(record)
    seen_flip = False
    for _ in range(8):
        out = mapper(record)
        h, w = out["image"].shape[1:]
        assert min(h, w) in (64, 96)
        inst = out["instances"]
        scale = h / record["height"]
        for box, mask in zip(inst["boxes"], inst["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            tight = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            assert (box - tight).abs().max() <= 2.0
        unflipped = plain["instances"]["boxes"] * scale
        flipped = unflipped[:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor([w, 0, w, 0])
        if torch.allclose(inst["boxes"], flipped, atol=1.5) and not torch.allclose(inst["boxes"], unflipped, atol=1.5):
            seen_flip = True
    assert seen_flip
    rgb = DatasetMapper([], "RGB", is_train=False)(record)["image"]
    assert torch.equal(plain["image"], rgb.flip(0))  # BGR = reversed channels


def _write_coco(tmp_path, annotations, image_size=(20, 30)):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((*image_size, 3), dtype=np.uint8)).save(images / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "height": image_size[0], "width": image_size[1]}],
            "annotations": annotations, "categories": [{"id": 7, "name": "thing"}, {"id": 3, "name": "other"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return str(path), str(images)


def test_coco_loader_maps_ids_drops_crowd_and_decodes_rle(tmp_path):
    square = [[2, 2, 12, 2, 12, 12, 2, 12]]
    from pycocotools import mask as mask_util

    rle = {"size": [20, 30], "counts": [40, 5, 15, 5, 535]}
    compressed = mask_util.encode(np.asfortranarray(np.pad(np.ones((5, 2), np.uint8), ((0, 15), (2, 26)))))
    json_file, images = _write_coco(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 2, 10, 10], "segmentation": square, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [2, 0, 2, 5], "segmentation": rle, "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [0, 0, 30, 20], "segmentation": rle, "iscrowd": 1},
    ])
    records = load_coco_json(json_file, images)
    assert [a["category_id"] for a in records[0]["annotations"]] == [1, 0, 0]  # sorted COCO ids -> 0..K-1
    out = DatasetMapper([], "BGR", is_train=True)(records[0])
    assert out["instances"]["classes"].tolist() == [1, 0]
    masks = out["instances"]["masks"]
    assert masks[0].sum() == 100 and masks[1].sum() == 10 and masks[1][:, 2:4].all(dim=1)[0:5].all()


@pytest.mark.parametrize("annotation, message", [
    ({"bbox": [1, 1, -3, 4], "category_id": 7}, "bbox must be"),
    ({"bbox": [1, 1, 3, 4], "category_id": 99}, "category_id 99"),
    ({"bbox": [1, 1, 3, 4], "category_id": 7, "segmentation": [[1, 2, 3]]}, "polygon"),
])
def test_bad_annotations_name_the_file_and_annotation(tmp_path, annotation, message):
    json_file, images = _write_coco(tmp_path, [{"id": 5, "image_id": 1, "iscrowd": 0, **annotation}])
    with pytest.raises(DatasetError, match=message) as info:
        load_coco_json(json_file, images)
    assert "annotation 5" in str(info.value) and json_file in str(info.value)


def test_degenerate_boxes_and_polygons_are_dropped_and_counted(tmp_path, caplog):
    json_file, images = _write_coco(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 2, 10, 10], "iscrowd": 0,
         "segmentation": [[2, 2, 12, 2, 12, 12], [1, 1, 2, 2]]},                       # one good polygon kept
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [2, 2, 0, 10], "iscrowd": 0},  # empty box
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [2, 2, 4, 4], "iscrowd": 0,
         "segmentation": [[1, 1, 2, 2]]},                                                   # a 2-point "polygon"
    ])
    with caplog.at_level("WARNING", logger="ifr.data.coco"):
        records = load_coco_json(json_file, images)
    annotations = records[0]["annotations"]
    assert len(annotations) == 1 and annotations[0]["segmentation"] == [[2, 2, 12, 2, 12, 12]]
    assert "dropped 1 annotations with an empty box" in caplog.text
    assert "dropped 1 annotations whose polygons all have fewer than 3 points (annotations 3)" in caplog.text


def test_missing_dataset_path_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("IFR_DATASETS", str(tmp_path))
    with pytest.raises(DatasetError) as info:
        get_dataset_dicts("coco_2017_val")
    message = str(info.value)
    assert os.path.join(str(tmp_path), "coco", "annotations", "instances_val2017.json") in message
    assert "IFR_DATASETS" in message


def test_corrupt_image_is_a_clear_error(tmp_path):
    json_file, images = _write_coco(tmp_path, [])
    open(os.path.join(images, "a.png"), "wb").write(b"not a png")
    record = load_coco_json(json_file, images)[0]
    with pytest.raises(DatasetError, match="cannot be decoded"):
        DatasetMapper([], "BGR", is_train=False)(record)


def test_grouped_sampler_batches_share_aspect_and_ranks_are_disjoint():
    groups = [0, 1] * 10
    batches = iter(GroupedInfiniteBatchSampler(groups, 3, seed=0))
    for _ in range(10):
        batch = next(batches)
        assert len(batch) == 3 and len({groups[i] for i, _ in batch}) == 1
    ranks = [GroupedInfiniteBatchSampler([0] * 10, 5, seed=1, rank=r, world_size=2) for r in range(2)]
    assert {i for i, _ in next(iter(ranks[0]))}.isdisjoint(i for i, _ in next(iter(ranks[1])))
    assert [list(InferenceSampler(10, r, 3)) for r in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_grouped_sampler_resumes_the_same_stream_with_the_same_sample_seeds():
    groups = [0, 1, 1, 0, 1] * 4
    stream = iter(GroupedInfiniteBatchSampler(groups, 2, seed=3))
    first = [next(stream) for _ in range(9)]
    resumed = iter(GroupedInfiniteBatchSampler(groups, 2, seed=3, start_batch=5))
    assert [next(resumed) for _ in range(4)] == first[5:]
    seeds = [s for batch in first for _, s in batch]
    assert len(set(seeds)) == len(seeds)  # every drawn sample gets its own augmentation seed


def test_map_dataset_augmentation_depends_on_the_sample_seed_only():
    from ifr.data.build import MapDataset

    dataset = MapDataset([{"x": 1}], lambda record: torch.rand(3))
    a, b = dataset[(0, 7)], dataset[(0, 7)]
    torch.rand(5)  # whatever else consumed random numbers in between
    assert torch.equal(a, b) and torch.equal(dataset[(0, 7)], a) and not torch.equal(dataset[(0, 8)], a)


def test_hard_dataset_is_deterministic_with_holes_and_occlusion_that_round_trip(tmp_path):
    from pycocotools import mask as mask_util

    from ifr.data.synthetic_hard import HARD

    digests = []
    for name in ("a", "b"):
        generate_split(str(tmp_path / name), "val", HARD)
        digest = hashlib.sha256(open(tmp_path / name / "annotations" / "instances_val.json", "rb").read())
        digest.update(open(tmp_path / name / "val" / "000003.png", "rb").read())
        digests.append(digest.hexdigest())
    assert digests[0] == digests[1]
    coco = json.load(open(tmp_path / "a" / "annotations" / "instances_val.json"))
    assert [c["name"] for c in coco["categories"]] == ["star", "crescent", "ring", "stroke", "spiral"]
    per_image = {}
    for a in coco["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    holes = occluded = 0
    for annotations in per_image.values():
        masks = [mask_util.decode(a["segmentation"]) for a in annotations]
        for a, mask in zip(annotations, masks):
            assert mask.sum() == a["area"] and isinstance(a["segmentation"]["counts"], str)  # RLE, exact
            x, y, w, h = (int(v) for v in a["bbox"])
            box = mask[y:y + h, x:x + w]
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()  # tight boxes
            if a["category_id"] == 3 and box[h // 2, w // 2] == 0:
                holes += 1  # a ring's centre is background inside its mask
        stacked = np.stack(masks).astype(int)
        assert stacked.sum(0).max() <= 1  # visible masks never overlap: occluders are excluded
        # an occluded object's visible mask borders its occluder's
        grown = [(m | np.roll(m, 1, 0) | np.roll(m, -1, 0) | np.roll(m, 1, 1) | np.roll(m, -1, 1)) for m in masks]
        occluded += sum(int((g & other).any()) for i, g in enumerate(grown) for j, other in enumerate(masks) if i < j)
    assert holes >= 5 and occluded >= 20
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2, 3, 4, 5}


def _record_itself(record):
    return record


def _loaded_records(tmp_path):
    """Records of a small COCO file with every annotation kind: polygons, compressed and uncompressed RLE, a crowd
    region, a box without a mask, and an image without annotations."""
    from pycocotools import mask as mask_util

    rle = {"size": [20, 30], "counts": [40, 5, 15, 5, 535]}
    compressed = mask_util.encode(np.asfortranarray(np.pad(np.ones((5, 2), np.uint8), ((0, 15), (2, 26)))))
    json_file, images = _write_coco(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 2, 10, 10], "iscrowd": 0,
         "segmentation": [[2, 2, 12, 2, 12, 12.5], [1, 1, 3, 1, 3, 3]]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [2, 0, 2, 5], "segmentation": rle, "iscrowd": 1},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [2, 0, 2, 5], "iscrowd": 0,
         "segmentation": {"size": [20, 30], "counts": compressed["counts"].decode()}},
        {"id": 4, "image_id": 1, "category_id": 7, "bbox": [5, 5, 3, 3], "iscrowd": 0},
    ])
    return load_coco_json(json_file, images)


def test_serialized_records_equal_the_loaded_ones_and_survive_pickling(tmp_path):
    import pickle

    from ifr.data.serialized_records import SerializedRecords

    records = _loaded_records(tmp_path) * 3
    records[1] = {**records[1], "annotations": [], "image_id": 9}
    serialized = SerializedRecords(records)
    assert len(serialized) == 3 and list(serialized) == records and serialized[-1] == records[-1]
    assert serialized[0] is not serialized[0]  # a fresh copy each time: nothing shared is written to
    assert list(pickle.loads(pickle.dumps(serialized))) == records
    with pytest.raises(IndexError):
        serialized[3]
    assert list(SerializedRecords([])) == []


def test_loader_workers_read_the_serialized_records(tmp_path):
    """A real DataLoader with 2 forked workers maps every record from the shared buffer."""
    from ifr.data.build import MapDataset
    from ifr.data.serialized_records import SerializedRecords

    records = [{**record, "image_id": i} for i, record in enumerate(_loaded_records(tmp_path) * 6)]
    dataset = MapDataset(SerializedRecords(records), _record_itself)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    assert list(loader) == records
    seeded = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2,
                                         sampler=[(i, 100 + i) for i in range(len(records))])
    assert list(seeded) == records


def test_the_loaders_hold_serialized_records_equal_to_the_dataset(datasets_root):
    from ifr.config import RCNNFPNConfig
    from ifr.data import build_test_loader, build_train_loader
    from ifr.data.serialized_records import SerializedRecords

    config = RCNNFPNConfig()
    config.merge_from_list(["DATASETS.TRAIN", "('synthetic_shapes_val',)", "DATALOADER.NUM_WORKERS", "0",
                            "MODEL.ROI_HEADS.NUM_CLASSES", len(CLASSES)])
    expected = get_dataset_dicts("synthetic_shapes_val")
    for loader in (build_train_loader(config, seed=0), build_test_loader(config, "synthetic_shapes_val")):
        assert isinstance(loader.dataset.records, SerializedRecords) and list(loader.dataset.records) == expected
