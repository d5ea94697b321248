"""Detections -> COCO results in bulk: the same JSON as the per-detection conversion it replaced (kept here
as the reference), and a number of host syncs per image that does not grow with the detections."""
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from torch.overrides import TorchFunctionMode

from ifr.evaluation import instances_to_coco_json
from ifr.modeling.postprocessing import detector_postprocess
from test_postprocessing import random_masks, reference_postprocess


def reference_instances_to_coco_json(instances, image_id):
    """The per-detection conversion (``int()``, ``float()`` and ``.cpu()`` per detection) as it was."""
    boxes = instances["boxes"].cpu().clone()
    boxes[:, 2:] -= boxes[:, :2]
    results = []
    masks = instances.get("masks")
    for k in range(len(boxes)):
        result = {"image_id": image_id, "category_id": int(instances["classes"][k]), "bbox": boxes[k].tolist(),
                  "score": float(instances["scores"][k])}
        if masks is not None:
            rle = mask_util.encode(np.asfortranarray(masks[k].cpu().numpy().astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("utf-8")
            result["segmentation"] = rle
        results.append(result)
    return results


def detections_in_image(count, seed=0, score_dtype=torch.float32):
    """``count`` detections inside a 64 x 96 network input, of 2 to 40 pixels a side."""
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(count, 2, generator=generator) * torch.tensor([56.0, 24.0])
    sizes = 2 + torch.rand(count, 2, generator=generator) * 38
    return {"boxes": torch.cat([corners, corners + sizes], dim=1),
            "scores": torch.rand(count, generator=generator).to(score_dtype),
            "classes": torch.randint(0, 80, (count,), generator=generator),
            "masks": random_masks(count, 28, generator)[:, None]}


def postprocessed_detections(count, seed=0, score_dtype=torch.float32):
    """``count`` detections pasted into a 150 x 220 image."""
    return detector_postprocess(detections_in_image(count, seed, score_dtype), (64, 96), (150, 220))


@pytest.mark.parametrize("count", [0, 1, 37])
@pytest.mark.parametrize("with_masks", [True, False])
def test_results_are_the_per_detection_results(count, with_masks):
    instances = postprocessed_detections(count, seed=count)
    assert len(instances["boxes"]) == count
    if not with_masks:
        del instances["masks"]
    expected = reference_instances_to_coco_json(instances, 42)
    results = instances_to_coco_json(instances, 42)
    assert results == expected and json.dumps(results) == json.dumps(expected)
    if count and with_masks:
        assert all(mask_util.area(r["segmentation"]) > 0 for r in results[:5])  # masks with content compared


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_results_of_other_score_dtypes(dtype):
    instances = postprocessed_detections(9, seed=3, score_dtype=dtype)
    expected = reference_instances_to_coco_json(instances, 7)
    assert json.dumps(instances_to_coco_json(instances, 7)) == json.dumps(expected)


class HostSyncCounter(TorchFunctionMode):
    """Counts the tensor calls that make a GPU stream wait for the host: reads into Python
    (``item``, ``tolist``, ``bool``/``int``/``float``/``index``), copies to the CPU (``cpu``,
    ``to("cpu")``, ``numpy``) and the data-dependent shapes of ``nonzero`` and boolean-mask indexing."""

    READS = {"item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if (name in self.READS
                or name == "to" and any(str(a) == "cpu" for a in (*args[1:], *kwargs.values()))
                or name in ("__getitem__", "__setitem__") and any(
                    isinstance(i, torch.Tensor) and i.dtype == torch.bool
                    for i in (args[1] if isinstance(args[1], tuple) else (args[1],)))):
            self.count += 1
        return func(*args, **kwargs)


def syncs_per_image(count, postprocess, to_json):
    detections = detections_in_image(count, seed=count)
    with HostSyncCounter() as counter:
        results = to_json(postprocess(detections, (64, 96), (150, 220)), 1)
    assert len(results) == count
    return counter.count


def test_host_syncs_per_image_do_not_grow_with_detections():
    new = [syncs_per_image(n, detector_postprocess, instances_to_coco_json) for n in (5, 50)]
    # post-processing: the kept boxes (nonzero), the number of mask tiles; conversion: 4 copies to the
    # CPU, then 4 bulk reads of CPU tensors
    assert new[0] == new[1] <= 10
    # the counter sees the per-detection syncs of the code this replaced
    old = [syncs_per_image(n, reference_postprocess, reference_instances_to_coco_json) for n in (5, 50)]
    assert old[1] - old[0] >= 45 * 4
