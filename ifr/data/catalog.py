"""Datasets registered by name: a loader returning records, plus metadata (class names, json file).

A record is one image: ``file_name``, ``height``, ``width``, ``image_id`` and ``annotations``, a list
of ``{"bbox": [x, y, w, h] (absolute pixels), "category_id": contiguous id, "segmentation":
polygons or RLE, "iscrowd": 0/1}``, and in a keypoint dataset ``"keypoints": [x1, y1, v1, ..., xK, yK, vK]``
(COCO's keypoint format; v = 0 not labelled, 1 labelled but hidden, 2 visible).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

from ifr.errors import UserError


@dataclass
class DatasetInfo:
    loader: Callable[[], list[dict]]
    # A dict, or a function returning one when the metadata depends on run-time settings
    # (e.g. the IFR_DATASETS root of the built-in datasets).
    metadata: dict | Callable[[], dict] = field(default_factory=dict)


_DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(name: str, loader: Callable[[], list[dict]], metadata: dict | Callable[[], dict] | None = None
                     ) -> None:
    if name in _DATASETS:
        raise ValueError(f"dataset {name!r} is already registered")
    _DATASETS[name] = DatasetInfo(loader, metadata if metadata is not None else {})


def registered_datasets() -> list[str]:
    return sorted(_DATASETS)


def _info(name: str) -> DatasetInfo:
    if name not in _DATASETS:
        close = difflib.get_close_matches(name, _DATASETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"dataset {name!r} is not registered.{hint} Registered: {', '.join(registered_datasets())}. "
                        "Register a COCO-format dataset with ifr.data.register_coco_instances(name, json, images).")
    return _DATASETS[name]


def get_dataset_dicts(name: str) -> list[dict]:
    return _info(name).loader()


def get_metadata(name: str) -> dict:
    metadata = _info(name).metadata
    return metadata() if callable(metadata) else dict(metadata)
