"""Cascade ROI heads: per-stage matching and box transforms, score averaging, training losses."""
import pytest
import torch

from ifr.config import RCNNFPNConfig
from ifr.modeling.cascade_roi_heads import CascadeROIHeads, ScaleGradient, build_cascade_roi_heads

STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


def _heads(**roi_heads) -> CascadeROIHeads:
    cfg = RCNNFPNConfig()
    cfg.merge({"MODEL": {"ROI_HEADS": {"NUM_CLASSES": 3, **roi_heads}, "ROI_BOX_HEAD": {"FC_DIM": 16,
                                                                                       "CLS_AGNOSTIC_BBOX_REG": True}}})
    return build_cascade_roi_heads(cfg, 8, STRIDES, None)


def _box_with_iou(gt, iou):
    """A box of gt's height whose overlap with gt (shifted right) gives exactly ``iou``."""
    w = gt[2] - gt[0]
    shift = w * (1 - iou) / (1 + iou)
    return torch.tensor([gt[0] + shift, gt[1], gt[2] + shift, gt[3]])


def test_each_stage_matches_at_its_own_iou_threshold():
    heads = _heads()
    gt = torch.tensor([10.0, 10.0, 50.0, 30.0])
    boxes = torch.stack([_box_with_iou(gt, iou) for iou in (0.55, 0.65, 0.75)])
    target = {"boxes": gt[None], "classes": torch.tensor([2])}
    foreground = [(heads.match_proposals(boxes, target, m)["gt_classes"] == 2).tolist() for m in heads.stage_matchers]
    assert foreground == [[True, True, True], [False, True, True], [False, False, True]]


def test_each_stage_has_its_own_box_transform():
    heads = _heads()
    expected = [(10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)]
    proposals = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 40.0, 25.0]])
    gt = torch.tensor([[1.0, 2.0, 12.0, 18.0], [0.0, 4.0, 44.0, 30.0]])
    deltas = []
    for predictor, weights in zip(heads.box_predictor, expected):
        assert tuple(predictor.box_coder.weights) == weights and predictor.bbox_pred.out_features == 4
        encoded = predictor.box_coder.encode_single(gt, proposals)
        torch.testing.assert_close(predictor.predict_boxes(encoded, proposals), gt)
        deltas.append(encoded)
    torch.testing.assert_close(deltas[1], deltas[0] * 2)  # weights scale the targets


def test_inference_averages_the_stages_softmax_scores_and_uses_the_last_stage_boxes():
    torch.manual_seed(0)
    heads = _heads(SCORE_THRESH_TEST=0.0, NMS_THRESH_TEST=1.0).eval()
    for predictor in heads.box_predictor:
        predictor.detections_per_image = 1000
        torch.nn.init.normal_(predictor.cls_score.weight, std=0.5)
        torch.nn.init.normal_(predictor.bbox_pred.weight, std=0.05)
    features = {f"p{i}": torch.randn(1, 8, 128 // 2 ** i, 128 // 2 ** i) for i in range(2, 7)}
    proposals = [torch.tensor([[4.0, 4.0, 40.0, 50.0], [30.0, 20.0, 90.0, 70.0], [60.0, 60.0, 100.0, 110.0]])]
    size = [(120, 128)]

    boxes, probs = proposals, []
    for stage in range(3):  # the reference: each stage on the previous stage's clipped boxes
        pooled = heads.box_pooler([features[f] for f in heads.box_in_features], boxes)
        logits, deltas = heads.box_predictor[stage](heads.box_head[stage](pooled))
        probs.append(torch.softmax(logits, -1))
        decoded = heads.box_predictor[stage].box_coder.decode_single(deltas, boxes[0]).reshape(-1, 4)
        boxes = [torch.stack([decoded[:, 0].clamp(0, 128), decoded[:, 1].clamp(0, 120),
                              decoded[:, 2].clamp(0, 128), decoded[:, 3].clamp(0, 120)], 1)]
    mean = (probs[0] + probs[1] + probs[2]) / 3

    detections = heads.box_inference(features, proposals, size)[0]
    assert len(detections["scores"]) == 3 * 3  # every (RoI, class) pair kept
    torch.testing.assert_close(detections["scores"].sort().values, mean[:, :3].flatten().sort().values)
    best = mean[:, :3].flatten().argmax()
    torch.testing.assert_close(detections["boxes"][0], boxes[0][best // 3])
    assert not torch.allclose(probs[0], probs[2])  # the average is not of identical stages


def test_scale_gradient():
    x = torch.ones(3, requires_grad=True)
    ScaleGradient.apply(x, 1 / 3).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), 1 / 3))


def test_cascade_training_losses_per_stage_are_finite():
    torch.manual_seed(0)
    heads = _heads(BATCH_SIZE_PER_IMAGE=32).train()
    features = {f"p{i}": torch.randn(2, 8, 128 // 2 ** i, 128 // 2 ** i, requires_grad=True) for i in range(2, 7)}
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "classes": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "classes": torch.zeros(0, dtype=torch.int64)}]
    proposals = [{"boxes": torch.tensor([[12.0, 8.0, 58.0, 55.0], [0.0, 0.0, 30.0, 30.0], [70.0, 70.0, 120.0, 110.0]])}
                 for _ in range(2)]
    _, losses = heads(features, proposals, [(128, 128)] * 2, targets)
    assert set(losses) == {f"loss_{n}_stage{k}" for n in ("cls", "box_reg") for k in range(3)}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in heads.box_predictor[2].parameters())


def test_cascade_needs_class_agnostic_regression():
    from ifr.config import ConfigError

    cfg = RCNNFPNConfig()
    with pytest.raises(ConfigError, match="CLS_AGNOSTIC_BBOX_REG"):
        build_cascade_roi_heads(cfg, 8, STRIDES, None)
