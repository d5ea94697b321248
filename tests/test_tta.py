"""Test-time augmentation (TEST.AUG) and the expected-results check (TEST.EXPECTED_RESULTS)."""
import os

import pytest
import torch
from PIL import Image

from ifr.config import ConfigError
from ifr.data import get_dataset_dicts
from ifr.data.mapper import DatasetMapper, TTADatasetMapper
from ifr.engine.defaults import check_expected_results
from ifr.evaluation import ResultsMismatch, expected, verify_results
from ifr.modeling.tta import build_tta_model, original_to_view, view_to_original
from ifr.paths import EXPERIMENTS
from ifr.presets import small_model_overrides
from ifr.tools import quickstart
from ifr.tools.experiment import load_experiment

from helpers import TINY

FOLDER_OF_MODEL = {"ifr": "ifr", "weight_sharing": "weight_sharing", "cascade": "cascade"}


def _model(kind: str, *overrides, device="cpu"):
    """A seeded, untrained small model of an experiment folder that keeps every detection."""
    config, build_model = load_experiment(EXPERIMENTS[FOLDER_OF_MODEL[kind]])
    config.merge(small_model_overrides(max_iter=10))
    config.merge_from_list([*TINY, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "30",
                            *overrides])
    torch.manual_seed(0)
    return config, build_model(config).to(device).eval()


def _record(index=0):
    return get_dataset_dicts("synthetic_shapes_val")[index]


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def test_box_coordinates_round_trip_through_a_flipped_resized_view():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 100.0, 80.0]])
    view = view_to_original(boxes, (40, 50), (80, 100), flipped=True)
    assert torch.allclose(view, torch.tensor([[0.0, 40.0, 80.0, 120.0], [-100.0, 0.0, 100.0, 160.0]]))
    assert torch.allclose(original_to_view(view, (40, 50), (80, 100), flipped=True), boxes)


def test_tta_with_the_test_scale_and_no_flip_equals_plain_inference(val_subset, device):
    config, model = _model("ifr", "TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(64,)",
                           "TEST.AUG.MAX_SIZE", "128", "TEST.AUG.FLIP", "False", device=device)
    record = _record()
    plain = model([DatasetMapper(config.INPUT.AUG.TEST_PIPELINES, config.INPUT.FORMAT, is_train=False)(record)])
    tta = build_tta_model(config, model)
    augmented = tta([TTADatasetMapper((64,), 128, False, config.INPUT.FORMAT)(record)])
    a, b = plain[0]["instances"], augmented[0]["instances"]
    assert len(a["boxes"]) == len(b["boxes"]) == 30
    assert torch.allclose(a["boxes"], b["boxes"], atol=1e-4) and torch.equal(a["scores"], b["scores"])
    assert torch.equal(a["classes"], b["classes"])
    assert min(_mask_iou(m, n) for m, n in zip(a["masks"], b["masks"])) > 0.999


def test_flip_tta_on_a_symmetric_image_gives_mirrored_masks(tmp_path, val_subset):
    image = Image.open(_record()["file_name"]).convert("RGB")
    half = image.crop((0, 0, image.width // 2, image.height))
    symmetric = Image.new("RGB", (2 * half.width, half.height))
    symmetric.paste(half, (0, 0))
    symmetric.paste(half.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (half.width, 0))
    symmetric.save(tmp_path / "symmetric.png")
    record = {"file_name": str(tmp_path / "symmetric.png"), "height": symmetric.height, "width": symmetric.width,
              "image_id": 0}
    short = min(symmetric.size)
    config, model = _model("ifr", "TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", f"({short},)",
                           "TEST.AUG.MAX_SIZE", str(max(symmetric.size)), "TEST.AUG.FLIP", "True")
    inputs = TTADatasetMapper((short,), max(symmetric.size), True, config.INPUT.FORMAT)(record)
    assert torch.equal(inputs["views"][0]["image"], inputs["views"][1]["image"])  # the flip changes nothing
    out = build_tta_model(config, model)([inputs])[0]["instances"]
    width = symmetric.width
    checked = 0
    for box, cls, mask in zip(out["boxes"], out["classes"], out["masks"]):
        centre = (box[0] + box[2]) / 2
        if abs(centre - width / 2) < (box[2] - box[0]):  # near the seam: may overlap its own mirror image
            continue
        mirrored = mask.flip(-1)
        best = max(_mask_iou(mirrored, other) for other, c in zip(out["masks"], out["classes"]) if c == cls)
        assert best > 0.98
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("kind", sorted(FOLDER_OF_MODEL))
def test_multi_scale_flip_tta_runs_for_every_model(kind, val_subset):
    config, model = _model(kind, "TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(48, 64, 80)",
                           "TEST.AUG.MAX_SIZE", "160", "TEST.AUG.FLIP", "True")
    record = _record(1)
    inputs = TTADatasetMapper((48, 64, 80), 160, True, config.INPUT.FORMAT)(record)
    assert len(inputs["views"]) == 6
    out = build_tta_model(config, model)([inputs])[0]["instances"]
    boxes = out["boxes"]
    assert 0 < len(boxes) <= 30
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= record["width"]).all()
    assert out["masks"].shape == (len(boxes), record["height"], record["width"]) and out["masks"].dtype == torch.bool
    refinement = getattr(model.roi_heads.mask_head, "refinement", None)
    if kind != "weight_sharing":  # the IFR heads solved the last view's masks as an ordinary solve
        assert refinement.last_stats is not None and refinement.last_stats.iterations > 0


def test_tta_settings_are_checked():
    config, model = _model("ifr", "TEST.AUG.MIN_SIZES", "(64, 0)")
    with pytest.raises(ConfigError, match="TEST.AUG.MIN_SIZES must be positive"):
        build_tta_model(config, model)


def test_expected_results_pass_when_matched_and_fail_clearly_otherwise():
    results = {"segm": {"AP": 36.31, "AP50": 56.8}, "bbox": {"AP": 40.0}}
    assert verify_results(expected("segm", "coco_2017_val", AP=36.3, AP50=56.8), results, "coco_2017_val") == 2
    assert verify_results([("bbox", "AP", 40.0, 0.0)], results, "any") == 1
    assert verify_results(expected("segm", "coco_2017_val", AP=99.0), results, "synthetic_shapes_val") == 0
    with pytest.raises(ResultsMismatch, match=r"on coco_2017_val does not reproduce TEST.EXPECTED_RESULTS: "
                                              r"segm/AP 36.31, expected 37.0 \+- 0.2; segm/APl: no such metric in the "
                                              r"evaluation of coco_2017_val \(it has AP, AP50\)"):
        verify_results(expected("segm", "coco_2017_val", AP=37.0, APl=52.2), results, "coco_2017_val")
    with pytest.raises(ConfigError, match="entries are"):
        verify_results([("segm", "AP", 1.0)], results, "x")


def test_an_expected_results_mismatch_fails_the_command(tmp_path, monkeypatch, capsys, val_subset):
    monkeypatch.setenv("IFR_OUTPUT_ROOT", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        quickstart.main(["--max-iter", "1", "--no-progress", *TINY, "TEST.EXPECTED_RESULTS", "[('segm', 'AP', 99.0, 0.5)]"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"on {val_subset} does not reproduce TEST.EXPECTED_RESULTS: segm/AP" in err
    # the experiment folders' expectations are for COCO val2017, and the quickstart evaluates elsewhere
    config, _ = load_experiment(EXPERIMENTS["ifr"])
    config.DATASETS.TEST = (val_subset,)
    check_expected_results(config, {"segm": {"AP": 0.0}})
    assert os.path.isfile(os.path.join(str(tmp_path), "quickstart", "model_final.pth"))
