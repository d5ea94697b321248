"""IFR as the mask head of torchvision's Mask R-CNN (ifr.integrations.torchvision)."""
import pytest
import torch
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

from ifr.data import get_dataset_dicts
from ifr.data.mapper import DatasetMapper
from ifr.data.torchvision_format import as_torchvision_sample
from ifr.deq import EquilibriumRefinement
from ifr.integrations.torchvision import RefinementMaskHead, replace_mask_head


def _model():
    """torchvision's Mask R-CNN R50-FPN, untrained, made small: 3 classes, 96-128 px, few RoIs."""
    torch.manual_seed(0)
    return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4, min_size=96, max_size=128,
                                 rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
                                 rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
                                 box_batch_size_per_image=32, box_detections_per_img=10)


@pytest.fixture(scope="module")
def batch(datasets_root):
    mapper = DatasetMapper([], "BGR", is_train=True, mask_on=True)
    samples = [as_torchvision_sample(mapper(r)) for r in get_dataset_dicts("synthetic_shapes_train")[:2]]
    return [s[0] for s in samples], [s[1] for s in samples]


def test_replacing_keeps_every_other_weight_of_a_torchvision_checkpoint(tmp_path):
    source = _model()
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    torch.save(source.state_dict(), tmp_path / "maskrcnn.pth")  # the user's local COCO weights, say
    model = _model()
    model.load_state_dict(torch.load(tmp_path / "maskrcnn.pth", weights_only=True))
    head = replace_mask_head(model, head="ifr")
    state, saved = model.state_dict(), torch.load(tmp_path / "maskrcnn.pth", weights_only=True)
    kept = [k for k in saved if not k.startswith("roi_heads.mask_head.")]
    assert len(kept) > 300 and all(torch.equal(state[k], saved[k]) for k in kept)
    assert {k for k in state if k.startswith("roi_heads.mask_head.")} == {
        f"roi_heads.mask_head.{k}" for k in head.state_dict()}
    assert "roi_heads.mask_head.refinement.block.conv1.weight_g" in state
    assert model.roi_heads.mask_predictor is source.roi_heads.mask_predictor or \
        torch.equal(state["roi_heads.mask_predictor.conv5_mask.weight"], saved["roi_heads.mask_predictor.conv5_mask.weight"])


def test_the_replaced_model_trains_switches_to_implicit_and_evaluates(batch):
    images, targets = batch
    model = _model()
    head = replace_mask_head(model, head="ifr", pretrained_steps=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    model.train()
    losses, modes = [], []
    for _ in range(8):
        modes.append(head.mode)
        loss_dict = model(images, targets)
        total = sum(loss_dict.values())
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)  # nothing is pretrained
        optimizer.step()
        losses.append(total.item())
        assert ("forward_iterations" in head.solver_stats()) == (modes[-1] == "implicit")
    assert modes == ["unrolled"] * 3 + ["implicit"] * 5 and int(head.step) == 8
    assert sum(losses[-2:]) < sum(losses[:2])
    assert head.solver_stats()["backward_iterations"] > 0
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2 and outputs[0]["masks"].shape[1:] == (1, *images[0].shape[1:])
    assert head.mode == "implicit"


def test_implicit_gradients_match_a_long_unrolled_reference():
    """float64, solves to 1e-12; the reference differentiates 300 applications of the same block."""
    torch.manual_seed(0)
    model = _model()
    head = replace_mask_head(model, head="ifr", f_tol=1e-12, b_tol=1e-12, f_thres=100, b_thres=100).double().train()
    x = torch.randn(2, 256, 14, 14, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 256, 14, 14, dtype=torch.float64)
    (head(x) * upstream).sum().backward()
    implicit = [x.grad.clone()] + [p.grad.clone() for p in head.refinement.block.parameters()]
    reference = EquilibriumRefinement(head.refinement.block, mode="unrolled", num_unrolled=300)
    x.grad = None
    head.zero_grad()
    (reference(x) * upstream).sum().backward()
    unrolled = [x.grad] + [p.grad for p in head.refinement.block.parameters()]
    for a, b in zip(implicit, unrolled):
        assert ((a - b).norm() / b.norm()).item() < 1e-6


def test_a_state_dict_round_trip_reproduces_the_outputs(batch, tmp_path):
    images, targets = batch
    model = _model()
    replace_mask_head(model, head="weight_sharing")
    model.train()
    model(images, targets)  # one training call: the step counter moves
    torch.save(model.state_dict(), tmp_path / "model.pth")
    restored = _model()
    replace_mask_head(restored, head="weight_sharing")
    restored.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))
    assert int(restored.roi_heads.mask_head.step) == 1
    model.eval(), restored.eval()
    with torch.no_grad():
        a, b = model(images), restored(images)
    for x, y in zip(a, b):
        assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["masks"], y["masks"])


def test_the_step_counter_can_be_set_by_the_user():
    head = replace_mask_head(_model(), head="ifr", pretrained_steps=10, count_steps=False)
    assert isinstance(head, RefinementMaskHead)
    head.train()
    head(torch.randn(2, 256, 14, 14))
    assert int(head.step) == 0 and head.mode == "unrolled"
    head.step.fill_(10)
    assert head.mode == "implicit"
    with pytest.raises(ValueError, match="head must be one of"):
        replace_mask_head(_model(), head="conv")


def test_the_v2_model_takes_the_ifr_head_too():
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=4, min_size=64, max_size=96,
                                     rpn_post_nms_top_n_test=20, box_detections_per_img=5)
    replace_mask_head(model, head="ifr")
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 80)])[0]
    assert out["masks"].shape[1:] == (1, 64, 80)


def _maskrcnn_with_roi_width(width):
    """A torchvision MaskRCNN whose backbone (so its RoI features) is ``width`` channels wide; its
    default mask head maps them to 256 channels, which its default mask predictor takes."""
    backbone = torch.nn.Conv2d(3, width, 3)
    backbone.out_channels = width
    return MaskRCNN(backbone, num_classes=4)


def test_replacing_refuses_roi_features_narrower_than_the_predictor_takes():
    model = _maskrcnn_with_roi_width(128)
    original = model.roi_heads.mask_head
    with pytest.raises(ValueError) as info:
        replace_mask_head(model, head="ifr")
    message = str(info.value)
    assert "the RoI features have 128 channels (model.backbone.out_channels" in message
    assert "the mask predictor takes 256 (roi_heads.mask_predictor.conv5_mask.in_channels)" in message
    assert model.roi_heads.mask_head is original  # the model is left as it was
    model.roi_heads.mask_predictor = MaskRCNNPredictor(128, 256, 4)  # what the message says to do
    head = replace_mask_head(model, head="weight_sharing", num_groups=8)
    assert head.refinement.block.conv1.in_channels == 128


@pytest.mark.parametrize("num_groups", [3, 0])
def test_replacing_refuses_groups_that_do_not_divide_the_roi_width(num_groups):
    model = _maskrcnn_with_roi_width(256)
    with pytest.raises(ValueError, match=f"replace_mask_head: num_groups={num_groups} must be a positive divisor of "
                                         "the RoI features' 256 channels"):
        replace_mask_head(model, head="ifr", num_groups=num_groups)
