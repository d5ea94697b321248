"""Box/mask math and schedule pieces against the values cvpods produces or independent references."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from ifr.data.transforms import shortest_edge_size
from ifr.modeling.anchor_generator import DefaultAnchorGenerator
from ifr.modeling.poolers import ROIPooler, assign_boxes_to_levels
from ifr.modeling.postprocessing import detector_postprocess, paste_masks_in_image
from ifr.modeling.roi_heads import crop_and_resize_masks
from ifr.solver import WarmupMultiStepLR, parameter_groups, warmup_multistep_factor


def test_cell_anchors_are_cvpods_values_unrounded():
    gen = DefaultAnchorGenerator([[32], [64], [128], [256], [512]], [[0.5, 1.0, 2.0]], [4, 8, 16, 32, 64])
    p2 = torch.tensor([[-22.627417, -11.313708, 22.627417, 11.313708], [-16, -16, 16, 16],
                       [-11.313708, -22.627417, 11.313708, 22.627417]])
    for level, cells in enumerate(gen.cell_anchors):
        torch.testing.assert_close(cells, p2 * 2 ** level)
    assert [k for k in gen.state_dict()] == [f"cell_anchors.{i}" for i in range(5)]


def test_anchor_grid_is_location_major_with_fixed_strides():
    gen = DefaultAnchorGenerator([[32], [64]], [[0.5, 1.0, 2.0]], [4, 64])
    anchors = gen([(2, 3), (13, 1)])
    assert anchors[0].shape == (2 * 3 * 3, 4) and anchors[1].shape == (13 * 3, 4)
    cells = list(gen.cell_anchors)
    # location (row 1, col 2) of level 0 -> shift (x=8, y=4); anchors of a location are consecutive
    torch.testing.assert_close(anchors[0][(1 * 3 + 2) * 3:(1 * 3 + 2) * 3 + 3], cells[0] + torch.tensor([8., 4, 8, 4]))
    # the stride is the level's, not padded_size // grid (which is wrong for odd-sized levels)
    torch.testing.assert_close(anchors[1][12 * 3 + 1], cells[1][1] + torch.tensor([0., 12 * 64, 0, 12 * 64]))


def test_level_assignment_formula():
    sizes = torch.tensor([10.0, 111.9, 112.0, 223.9, 224.0, 447.9, 448.0, 2000.0])
    boxes = torch.stack([torch.zeros_like(sizes), torch.zeros_like(sizes), sizes, sizes], dim=1)
    expected = [math.floor(4 + math.log2(s / 224 + 2.2204e-16)) for s in sizes.tolist()]
    expected = [min(max(e, 2), 5) - 2 for e in expected]
    assert assign_boxes_to_levels(boxes, 2, 5).tolist() == expected == [0, 0, 1, 1, 2, 2, 3, 3]


def test_pooler_takes_each_box_from_its_level_with_aligned_roi_align():
    features = [torch.randn(2, 4, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [1.0, 2.0, 60.0, 63.0]]), torch.tensor([[5.0, 5.0, 40.0, 30.0]])]
    out = ROIPooler(7, [4, 8, 16, 32])(features, boxes)
    flat = torch.cat(boxes)
    batch = torch.tensor([0, 0, 1])
    for i, (box, b) in enumerate(zip(flat, batch)):
        level = int(assign_boxes_to_levels(box[None], 2, 5))
        ref = roi_align(features[level], torch.cat([b[None].float(), box])[None], 7,
                        spatial_scale=1 / 4 / 2 ** level, sampling_ratio=0, aligned=True)
        torch.testing.assert_close(out[i], ref[0])


def test_paste_mask_matches_full_image_grid_sample():
    """The box-cropped paste equals sampling every pixel of the image (cvpods' definition)."""
    torch.manual_seed(1)
    for _ in range(5):
        mask = torch.rand(28, 28)
        x0, y0 = torch.rand(2) * 30
        box = torch.tensor([x0, y0, x0 + 5 + torch.rand(1).item() * 40, y0 + 3 + torch.rand(1).item() * 30])
        h, w = 60, 70
        xs = ((torch.arange(w) + 0.5 - box[0]) / (box[2] - box[0])) * 2 - 1
        ys = ((torch.arange(h) + 0.5 - box[1]) / (box[3] - box[1])) * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
        ref = F.grid_sample(mask[None, None], grid, align_corners=False)[0, 0] >= 0.5
        assert torch.equal(paste_masks_in_image(mask[None], box[None], (h, w))[0], ref)


def test_postprocess_rescales_clips_and_drops_empty_boxes():
    det = {"boxes": torch.tensor([[10.0, 10.0, 30.0, 20.0], [60.0, 5.0, 80.0, 15.0], [5.0, 5.0, 5.0, 9.0]]),
           "scores": torch.tensor([0.9, 0.8, 0.7]), "classes": torch.tensor([0, 1, 2]),
           "masks": torch.ones(3, 1, 28, 28)}
    out = detector_postprocess(det, (50, 64), (100, 128))
    torch.testing.assert_close(out["boxes"], torch.tensor([[20.0, 20.0, 60.0, 40.0], [120.0, 10.0, 128.0, 30.0]]))
    assert out["masks"].shape == (2, 100, 128) and out["masks"][0].sum() == 40 * 20
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8])


def test_crop_and_resize_masks_of_a_box_covering_the_mask_is_full():
    masks = torch.zeros(2, 40, 50, dtype=torch.bool)
    masks[0, 10:30, 5:25] = True
    masks[1, :, 25:] = True
    boxes = torch.tensor([[5.0, 10.0, 25.0, 30.0], [0.0, 0.0, 50.0, 40.0], [0.0, 0.0, 50.0, 40.0]])
    crops = crop_and_resize_masks(masks, boxes, torch.tensor([0, 1, 0]), 28)
    assert crops[0].all()
    assert crops[1][:, :14].logical_not().all() and crops[1][:, 14:].all()
    assert crops[2].sum() > 0 and not crops[2][:, :2].any()  # mask 0 seen through the whole image


def test_shortest_edge_size_rounds_like_cvpods():
    assert shortest_edge_size(480, 640, 800, 1333) == (800, 1067)  # torchvision floors to 1066
    assert shortest_edge_size(640, 480, 800, 1333) == (1067, 800)
    assert shortest_edge_size(100, 1000, 800, 1333) == (133, 1333)  # long side capped


def test_warmup_multistep_lr_matches_cvpods_formula():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    sched = WarmupMultiStepLR(opt, [60, 80], gamma=0.1, warmup_factor=0.001, warmup_iters=10)
    lrs = []
    for _ in range(90):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for it in (0, 5, 9, 10, 59, 60, 79, 80, 89):
        warm = 0.001 * (1 - it / 10) + it / 10 if it < 10 else 1.0
        assert lrs[it] == pytest.approx(0.02 * warm * 0.1 ** sum(it >= s for s in (60, 80)))
    assert warmup_multistep_factor(0, [5], 0.1, 0.5, 4, "constant") == 0.5


def test_parameter_groups_no_weight_decay_on_norms_and_skip_frozen():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Conv2d(8, 8, 1))
    model[2].weight.requires_grad_(False)
    groups = parameter_groups(model, base_lr=0.1, weight_decay=1e-4, weight_decay_norm=0.0, bias_lr_factor=2.0)
    by_param = {id(g["params"][0]): g for g in groups}
    assert id(model[2].weight) not in by_param and len(groups) == 5
    assert by_param[id(model[1].weight)]["weight_decay"] == 0.0 and by_param[id(model[1].bias)]["weight_decay"] == 0.0
    assert by_param[id(model[0].weight)]["weight_decay"] == 1e-4 and by_param[id(model[0].bias)]["lr"] == 0.2


def test_bad_model_config_values_are_config_errors():
    from ifr.config import ConfigError
    from ifr.modeling.backbone import ResNetFPN

    with pytest.raises(ConfigError, match="DEPTH must be one of"):
        ResNetFPN(depth=7)
    with pytest.raises(ConfigError, match="NORM must be one of"):
        ResNetFPN(depth=18, norm="LN")
    with pytest.raises(ConfigError, match="POOLER_TYPE"):
        ROIPooler(7, [4, 8], pooler_type="ROIPool")
    with pytest.raises(ConfigError, match="STEPS must be increasing"):
        WarmupMultiStepLR(torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1), [80, 60])


def _rpn(pre_topk: int, post_topk: int):
    from ifr.modeling.rpn import RPN, StandardRPNHead

    rpn = RPN(["p2", "p3"], StandardRPNHead(8, 1), DefaultAnchorGenerator([[32], [64]], [[1.0]], [4, 8]),
              pre_nms_topk=(pre_topk, pre_topk), post_nms_topk=(post_topk, post_topk), nms_thresh=0.7)
    return rpn.eval()


def test_rpn_selects_per_level_top_k_then_nms_on_logits_per_level_then_per_image_top_k():
    box = lambda x0, y0, x1, y1: [float(x0), float(y0), float(x1), float(y1)]  # noqa: E731
    level0 = torch.tensor([box(0, 0, 10, 10), box(20, 20, 30, 30), box(40, 40, 50, 50), box(60, 60, 70, 70),
                           box(200, 5, 210, 15)])          # the last one lies outside the image: empty once clipped
    level1 = torch.tensor([box(0, 0, 10, 10), box(0, 0, 10, 11), box(80, 80, 90, 90), box(5, 60, 15, 70)])
    logits = [torch.tensor([[5.0, 4.0, 3.0, 2.0, 50.0]]), torch.tensor([[31.0, 30.0, 1.0, 0.5]])]
    deltas = [torch.zeros(1, 5, 4), torch.zeros(1, 4, 4)]
    proposals = _rpn(pre_topk=3, post_topk=4).find_top_proposals([level0, level1], logits, deltas, [(100, 100)])[0]
    # level 0 keeps its top 3 (50, 5, 4) and drops the box left empty by clipping; level 1 keeps 31, 30, 1
    # and NMS removes 30 (it overlaps 31); the same box on two levels survives (NMS is per level); the
    # image keeps its top 4, sorted by logit.
    assert proposals["objectness_logits"].tolist() == [31.0, 5.0, 4.0, 1.0]
    assert proposals["boxes"].tolist() == [box(0, 0, 10, 10), box(0, 0, 10, 10), box(20, 20, 30, 30),
                                           box(80, 80, 90, 90)]


def test_box_inference_keeps_scores_above_threshold_tiny_boxes_and_top_k_after_per_class_nms():
    from torchvision.models.detection._utils import BoxCoder

    from ifr.modeling.box_head import FastRCNNOutputLayers

    head = FastRCNNOutputLayers(4, 2, BoxCoder((10.0, 10.0, 5.0, 5.0)), cls_agnostic_bbox_reg=True,
                                detections_per_image=3)
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10.5], [30, 30, 30.005, 30.005], [50, 50, 60, 60],
                          [70, 70, 80, 80]], dtype=torch.float32)
    probs = torch.tensor([[0.90, 0.05, 0.05],    # class 0
                          [0.80, 0.15, 0.05],    # class 0 overlaps the first: suppressed; class 1 kept
                          [0.60, 0.00, 0.40],    # a 0.005-pixel box: kept (no small-box removal)
                          [0.05, 0.00, 0.95],    # score exactly 0.05: not above the threshold
                          [0.02, 0.10, 0.88]])   # class 1, 0.10: beyond the top 3
    out = head.inference(boxes, probs, (100, 100))
    assert out["scores"].tolist() == pytest.approx([0.90, 0.60, 0.15])
    assert out["classes"].tolist() == [0, 0, 1]
    assert out["boxes"][1].tolist() == pytest.approx([30, 30, 30.005, 30.005])
