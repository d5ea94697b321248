"""Data loaders for training and evaluation, built from a config."""
from __future__ import annotations

import logging
import os
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ifr.errors import UserError

from .catalog import get_dataset_dicts, get_metadata
from .coco import DatasetError, check_coco_evaluable, check_coco_paths, load_coco_api
from .image_reader import ImageReadError
from .mapper import DatasetMapper, TTADatasetMapper
from .samplers import GroupedInfiniteBatchSampler, InferenceSampler
from .serialized_records import SerializedRecords

logger = logging.getLogger(__name__)


class MapDataset(Dataset):
    """Records mapped on access (in the loader's worker processes); the loaders give them as
    ``SerializedRecords``, which forked workers share without copying. An ``(index, seed)`` key maps
    with the random state seeded by ``seed``, so augmentation does not depend on the worker.

    With ``skip_unreadable``, a record whose image is missing or corrupt is replaced by the next
    readable one (a warning names the file and counts the skips of this process).
    """

    def __init__(self, records: Sequence[dict], mapper, skip_unreadable: bool = False):
        self.records, self.mapper, self.skip_unreadable = records, mapper, skip_unreadable
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        if isinstance(key, int):
            return self._map(key)
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._map(index)

    def _map(self, index: int) -> dict:
        for offset in range(len(self.records)):
            record = self.records[(index + offset) % len(self.records)]
            try:
                return self.mapper(record)
            except ImageReadError as e:
                if not self.skip_unreadable:
                    raise
                self.skipped += 1
                logger.warning("skipping %s (%d images skipped by this loader process): %s", record["file_name"],
                               self.skipped, e)
        raise UserError("no image of the dataset can be read (DATALOADER.SKIP_CORRUPT_IMAGES skipped them all)")


def _as_list(batch):
    return batch


def check_image_files(records: list[dict], skip_missing: bool) -> list[dict]:
    """The records whose image file exists (one stat per file, so a missing image stops the run at
    its start, not when its batch comes hours in): a UserError with the count and the first missing
    paths, or with ``skip_missing`` a warning and the records without them."""
    missing = [r["file_name"] for r in records if not os.path.isfile(r["file_name"])]
    if not missing:
        return records
    listing = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    if not skip_missing:
        raise UserError(f"{len(missing)} of the {len(records)} training images do not exist ({listing}): check the "
                        "datasets' image folders, or set DATALOADER.SKIP_CORRUPT_IMAGES True to train without them")
    logger.warning("training without %d of the %d images, which do not exist (%s)", len(missing), len(records), listing)
    gone = set(missing)
    return [r for r in records if r["file_name"] not in gone]


def check_category_count(dataset_name: str, records: list[dict], num_classes: int) -> None:
    """A ``DatasetError`` when a dataset has more categories (its ``thing_classes``, or the highest
    contiguous category id of its records) than the model predicts: training would fail at its first
    step with an index out of bounds."""
    metadata = get_metadata(dataset_name)
    used = max((a["category_id"] for r in records for a in r["annotations"]), default=-1) + 1
    count = max(len(metadata.get("thing_classes", ())), used)
    if count > num_classes:
        source = f" ({metadata['json_file']})" if "json_file" in metadata else ""
        raise DatasetError(f"dataset {dataset_name}{source} has {count} categories but the model predicts "
                           f"{num_classes} classes (MODEL.ROI_HEADS.NUM_CLASSES): set MODEL.ROI_HEADS.NUM_CLASSES "
                           f"{count}, or train on a dataset with at most {num_classes} categories")


def check_masks_present(dataset_name: str, records: list[dict]) -> None:
    """A ``DatasetError`` when an annotation the mask head trains on (not a crowd region) has no
    segmentation: the mapper would fail on it at the first batch that draws its image."""
    unmasked = {r["image_id"]: count for r in records
                if (count := sum("segmentation" not in a for a in r["annotations"] if not a.get("iscrowd", 0)))}
    if unmasked:
        metadata = get_metadata(dataset_name)
        source = f" ({metadata['json_file']})" if "json_file" in metadata else ""
        images = list(unmasked)
        listing = ", ".join(str(i) for i in images[:5]) + (", ..." if len(images) > 5 else "")
        raise DatasetError(f"dataset {dataset_name}{source}: {sum(unmasked.values())} annotations have no "
                           f"segmentation (images {listing}), but MODEL.MASK_ON trains a mask for every annotation: "
                           "add their segmentations, or set MODEL.MASK_ON False to train boxes only")


def load_train_records(dataset_names, filter_empty: bool, skip_missing: bool = False,
                       num_classes: int | None = None, mask_on: bool = False) -> list[dict]:
    """The records of every dataset in ``dataset_names``, each checked against the model's
    ``num_classes`` when given (``check_category_count``) and, with ``mask_on``, for a segmentation
    on every annotation (``check_masks_present``)."""
    if not dataset_names:
        raise UserError("DATASETS.TRAIN is empty: name at least one registered dataset, e.g. "
                        "DATASETS.TRAIN \"('synthetic_shapes_train',)\"")
    records = []
    for name in dataset_names:
        loaded = get_dataset_dicts(name)
        if num_classes is not None:
            check_category_count(name, loaded, num_classes)
        if mask_on:
            check_masks_present(name, loaded)
        records.extend(loaded)
    if filter_empty:
        before = len(records)
        records = [r for r in records if any(not a.get("iscrowd", 0) for a in r["annotations"])]
        logger.info("removed %d images without (non-crowd) annotations; %d left", before - len(records), len(records))
    records = check_image_files(records, skip_missing)
    if not records:
        raise UserError(f"no training images with annotations in {list(dataset_names)}")
    return records


def _pin_memory(cfg) -> bool:
    # Page-locked batches let the model's non_blocking copies to the GPU overlap with compute.
    return cfg.MODEL.DEVICE.startswith("cuda") and torch.cuda.is_available()


def build_train_loader(cfg, seed: int, rank: int = 0, world_size: int = 1, start_batch: int = 0) -> DataLoader:
    """Endless loader of lists of IMS_PER_BATCH / world_size mapped records, from batch ``start_batch``
    of the seeded stream on."""
    records = load_train_records(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
                                 cfg.DATALOADER.SKIP_CORRUPT_IMAGES, cfg.MODEL.ROI_HEADS.NUM_CLASSES,
                                 cfg.MODEL.MASK_ON)
    batch_size = cfg.SOLVER.IMS_PER_BATCH // world_size
    if batch_size < 1 or cfg.SOLVER.IMS_PER_BATCH % world_size:
        raise UserError(f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be a positive multiple of the "
                        f"number of processes ({world_size})")
    groups = [int(r["width"] > r["height"]) if cfg.DATALOADER.ASPECT_RATIO_GROUPING else 0 for r in records]
    mapper = DatasetMapper(cfg.INPUT.AUG.TRAIN_PIPELINES, cfg.INPUT.FORMAT, is_train=True, mask_on=cfg.MODEL.MASK_ON)
    sampler = GroupedInfiniteBatchSampler(groups, batch_size, seed=seed, rank=rank, world_size=world_size,
                                          start_batch=start_batch)
    dataset = MapDataset(SerializedRecords(records), mapper, skip_unreadable=cfg.DATALOADER.SKIP_CORRUPT_IMAGES)
    # Its own generator: starting the loader must not draw from the global random state, which the
    # training step uses (a resumed run restores that state and must continue it exactly).
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=_as_list, generator=torch.Generator().manual_seed(seed),
                      num_workers=cfg.DATALOADER.NUM_WORKERS, persistent_workers=cfg.DATALOADER.NUM_WORKERS > 0,
                      pin_memory=_pin_memory(cfg))


def check_datasets(dataset_names, num_classes: int | None = None, tasks: tuple[str, ...] = ("bbox",)) -> None:
    """Fails fast (before a long training run) when a test dataset is unregistered, its files are
    missing or invalid, or COCO AP on it could score nothing (``check_coco_evaluable``, with the
    model's ``num_classes`` when given, for the evaluated ``tasks``)."""
    for name in dataset_names:
        metadata = get_metadata(name)
        if "json_file" in metadata:
            check_coco_paths(metadata["json_file"], metadata.get("image_root"))
            check_coco_evaluable(load_coco_api(metadata["json_file"]), metadata["json_file"], num_classes, tasks)


def evaluated_records(records: list[dict], max_images: int) -> list[dict]:
    """The first ``max_images`` records of a test set (TEST.MAX_IMAGES; 0: all of them)."""
    return records[:max_images] if max_images > 0 else records


def build_test_loader(cfg, dataset_name: str, rank: int = 0, world_size: int = 1, tta: bool = False,
                      with_boxes: bool = False) -> DataLoader:
    """One image per batch, this process's shard of the dataset, in order. With ``tta`` each image
    comes as the views of TEST.AUG (``TTADatasetMapper``) instead of INPUT.AUG.TEST_PIPELINES; with
    ``with_boxes`` it carries its ground-truth ``instances`` (boxes, classes) at the input size."""
    records = get_dataset_dicts(dataset_name)
    if not records:
        raise UserError(f"dataset {dataset_name} has no images: there is nothing to evaluate")
    if 0 < cfg.TEST.MAX_IMAGES < len(records):
        logger.warning("TEST.MAX_IMAGES %d: evaluating the first %d of the %d images of %s; the APs below are of "
                       "this subset (a smoke test), not comparable with the whole dataset's", cfg.TEST.MAX_IMAGES,
                       cfg.TEST.MAX_IMAGES, len(records), dataset_name)
    records = SerializedRecords(evaluated_records(records, cfg.TEST.MAX_IMAGES))
    if with_boxes:  # the annotated mapping of training, with the test pipeline's deterministic resize
        mapper = DatasetMapper(cfg.INPUT.AUG.TEST_PIPELINES, cfg.INPUT.FORMAT, is_train=True, mask_on=False)
    elif tta:
        aug = cfg.TEST.AUG
        mapper = TTADatasetMapper(aug.MIN_SIZES, aug.MAX_SIZE, aug.FLIP, cfg.INPUT.FORMAT)
    else:
        mapper = DatasetMapper(cfg.INPUT.AUG.TEST_PIPELINES, cfg.INPUT.FORMAT, is_train=False,
                               mask_on=cfg.MODEL.MASK_ON)
    return DataLoader(MapDataset(records, mapper), batch_size=1, sampler=InferenceSampler(len(records), rank, world_size),
                      collate_fn=_as_list, num_workers=cfg.DATALOADER.NUM_WORKERS, pin_memory=_pin_memory(cfg))
