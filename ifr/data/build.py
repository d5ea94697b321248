"""Data loaders for training and evaluation, built from a config."""
from __future__ import annotations

import logging

from torch.utils.data import DataLoader, Dataset

from ifr.errors import UserError

from .catalog import get_dataset_dicts, get_metadata
from .coco import check_coco_paths
from .mapper import DatasetMapper
from .samplers import GroupedInfiniteBatchSampler, InferenceSampler

logger = logging.getLogger(__name__)


class MapDataset(Dataset):
    """Records mapped on access (in the loader's worker processes)."""

    def __init__(self, records: list[dict], mapper):
        self.records, self.mapper = records, mapper

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return self.mapper(self.records[index])


def _as_list(batch):
    return batch


def load_train_records(dataset_names, filter_empty: bool) -> list[dict]:
    if not dataset_names:
        raise UserError("DATASETS.TRAIN is empty: name at least one registered dataset, e.g. "
                        "DATASETS.TRAIN \"('synthetic_shapes_train',)\"")
    records = [r for name in dataset_names for r in get_dataset_dicts(name)]
    if filter_empty:
        before = len(records)
        records = [r for r in records if any(not a.get("iscrowd", 0) for a in r["annotations"])]
        logger.info("removed %d images without (non-crowd) annotations; %d left", before - len(records), len(records))
    if not records:
        raise UserError(f"no training images with annotations in {list(dataset_names)}")
    return records


def build_train_loader(cfg, seed: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Endless loader of lists of IMS_PER_BATCH / world_size mapped records."""
    records = load_train_records(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    batch_size = cfg.SOLVER.IMS_PER_BATCH // world_size
    if batch_size < 1 or cfg.SOLVER.IMS_PER_BATCH % world_size:
        raise UserError(f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be a positive multiple of the "
                        f"number of processes ({world_size})")
    groups = [int(r["width"] > r["height"]) if cfg.DATALOADER.ASPECT_RATIO_GROUPING else 0 for r in records]
    mapper = DatasetMapper(cfg.INPUT.AUG.TRAIN_PIPELINES, cfg.INPUT.FORMAT, is_train=True, mask_on=cfg.MODEL.MASK_ON)
    sampler = GroupedInfiniteBatchSampler(groups, batch_size, seed=seed, rank=rank, world_size=world_size)
    return DataLoader(MapDataset(records, mapper), batch_sampler=sampler, collate_fn=_as_list,
                      num_workers=cfg.DATALOADER.NUM_WORKERS, persistent_workers=cfg.DATALOADER.NUM_WORKERS > 0)


def check_datasets(dataset_names) -> None:
    """Fails fast (before a long training run) when a dataset is unregistered or its files are missing."""
    for name in dataset_names:
        metadata = get_metadata(name)
        if "json_file" in metadata:
            check_coco_paths(metadata["json_file"], metadata.get("image_root"))


def build_test_loader(cfg, dataset_name: str, rank: int = 0, world_size: int = 1) -> DataLoader:
    """One image per batch, this process's shard of the dataset, in order."""
    records = get_dataset_dicts(dataset_name)
    mapper = DatasetMapper(cfg.INPUT.AUG.TEST_PIPELINES, cfg.INPUT.FORMAT, is_train=False, mask_on=cfg.MODEL.MASK_ON)
    return DataLoader(MapDataset(records, mapper), batch_size=1, sampler=InferenceSampler(len(records), rank, world_size),
                      collate_fn=_as_list, num_workers=cfg.DATALOADER.NUM_WORKERS)
