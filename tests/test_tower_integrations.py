"""IFR in torchvision's keypoint head, v2 box head and one-stage head towers (replace_keypoint_head,
replace_box_head, replace_dense_head_towers), on tiny models built from torchvision's own classes."""
import copy
from collections import OrderedDict
from functools import partial

import pytest
import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, KeypointRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import MultiScaleRoIAlign

from ifr.deq import EquilibriumRefinement, TowerConfigError
from ifr.engine.launch import launch
from ifr.integrations.torchvision import (BoxRefinementHead, KeypointRefinementHead, LevelTower, replace_box_head,
                                          replace_dense_head_towers, replace_keypoint_head)

import fake_cuda

FORMS = ("explicit", "weight_sharing", "ifr")
SMALL = dict(min_size=48, max_size=64, image_mean=[0.5] * 3, image_std=[0.25] * 3)
TWO_STAGE = dict(rpn_pre_nms_top_n_train=50, rpn_post_nms_top_n_train=20, rpn_pre_nms_top_n_test=30,
                 rpn_post_nms_top_n_test=10, box_batch_size_per_image=8, box_detections_per_img=4)


class _Levels(nn.Module):
    """A tiny backbone: 3 feature levels (strides 4, 8, 16) of ``out_channels`` channels."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.stem = nn.Conv2d(3, out_channels, 3, stride=4, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) for _ in range(2))

    def forward(self, images):
        x = self.stem(images).relu()
        levels = OrderedDict([("0", x)])
        for i, down in enumerate(self.down):
            x = down(x).relu()
            levels[str(i + 1)] = x
        return levels


def _anchors(levels: int = 3) -> AnchorGenerator:
    return AnchorGenerator(tuple((8 * 2 ** i,) for i in range(levels)), ((0.5, 1.0, 2.0),) * levels)


def _keypoint_rcnn():
    torch.manual_seed(0)
    return KeypointRCNN(_Levels(8), num_classes=2, rpn_anchor_generator=_anchors(),
                        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 7, 2),
                        keypoint_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 6, 2),
                        keypoint_head=KeypointRCNNHeads(8, (16,) * 4),
                        keypoint_predictor=KeypointRCNNPredictor(16, 3), **SMALL, **TWO_STAGE)


def _faster_rcnn_v2():
    torch.manual_seed(0)
    return FasterRCNN(_Levels(8), num_classes=None, rpn_anchor_generator=_anchors(),
                      box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 5, 2),
                      box_head=FastRCNNConvFCHead((8, 5, 5), [8] * 4, [16], norm_layer=nn.BatchNorm2d),
                      box_predictor=FastRCNNPredictor(16, 3), **SMALL, **TWO_STAGE)


def _retinanet_v2():
    torch.manual_seed(0)
    return RetinaNet(_Levels(8), num_classes=3, anchor_generator=_anchors(),
                     head=RetinaNetHead(8, 3, 3, norm_layer=partial(nn.GroupNorm, 4)), detections_per_img=4,
                     topk_candidates=20, **SMALL)


def _fcos():
    torch.manual_seed(0)
    return FCOS(_Levels(32), num_classes=3, anchor_generator=AnchorGenerator(((8,), (16,), (32,)), ((1.0,),) * 3),
                head=FCOSHead(32, 1, 3), detections_per_img=4, topk_candidates=20, **SMALL)


def _targets(keypoints: bool):
    """Two images: one with two objects, one with none."""
    boxes = torch.tensor([[4.0, 6.0, 30.0, 34.0], [20.0, 10.0, 44.0, 40.0]])
    first = {"boxes": boxes, "labels": torch.tensor([1, 1])}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    if keypoints:
        first["keypoints"] = torch.tensor([[[8.0, 10.0, 1], [20.0, 20.0, 1], [26.0, 30.0, 0]],
                                           [[24.0, 14.0, 1], [30.0, 25.0, 1], [40.0, 36.0, 1]]])
        empty["keypoints"] = torch.zeros(0, 3, 3)
    return [first, empty]


INTEGRATIONS = {
    "keypoint": (_keypoint_rcnn, replace_keypoint_head, {"num_groups": 4}, True),
    "box": (_faster_rcnn_v2, replace_box_head, {"num_groups": 4}, False),
    "retinanet": (_retinanet_v2, replace_dense_head_towers, {"num_groups": 4}, False),
    "fcos_separate": (_fcos, replace_dense_head_towers, {"num_groups": 8, "levels": "separate"}, False),
}


@pytest.fixture(scope="module")
def stock_models():
    return {name: build() for name, (build, *_) in INTEGRATIONS.items()}


def _replaced(stock_models, name, form, **extra):
    _, replace, arguments, _ = INTEGRATIONS[name]
    model = copy.deepcopy(stock_models[name])
    replace(model, form, pretrained_steps=0, **arguments, **extra)
    return model


def _towers(model):
    return [m for m in model.modules() if hasattr(m, "step") and hasattr(m, "refinement")]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", list(INTEGRATIONS))
def test_each_form_trains_then_evaluates(stock_models, name, form):
    keypoints = INTEGRATIONS[name][3]
    model = _replaced(stock_models, name, form)
    images = [torch.rand(3, 48, 56, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    towers = _towers(model)
    assert len(towers) == (0 if form == "explicit" else 2 if name in ("retinanet", "fcos_separate") else 1)
    model.train()
    for _ in range(2):
        losses = model(images, _targets(keypoints))
        sum(losses.values()).backward()
        assert all(torch.isfinite(v) for v in losses.values())
    for tower in towers:
        assert int(tower.step) == 2  # once per forward, also for the per-level calls of the dense heads
        assert tower.form == form and all(p.grad is not None and torch.isfinite(p.grad).all()
                                          for p in tower.parameters())
        assert (tower.refinement.last_stats is not None) == (form == "ifr")
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and all(d["boxes"].shape[1] == 4 for d in detections)
    if keypoints:
        assert all(d["keypoints"].shape[1:] == (3, 3) for d in detections)


@pytest.mark.parametrize("name", list(INTEGRATIONS))
def test_the_state_dict_round_trips_and_keeps_torchvision_keys(stock_models, name):
    model = _replaced(stock_models, name, "ifr")
    model.train()
    model([torch.rand(3, 48, 48)], _targets(INTEGRATIONS[name][3])[:1])
    restored = _replaced(stock_models, name, "ifr")
    state = model.state_dict()
    restored.load_state_dict(state)
    replaced = {"keypoint": "roi_heads.keypoint_head.tower.", "box": "roi_heads.box_head.tower.",
                "retinanet": "head.classification_head.conv.", "fcos_separate": "head.classification_head.conv."}[name]
    assert replaced + "refinement.block.conv1.weight_g" in state and replaced + "step" in state
    # torchvision's names for everything not replaced (the widening conv, the FC, the predictors, ...)
    stock = set(stock_models[name].state_dict())
    assert {k for k in state if ".tower." not in k and ".conv.refinement." not in k and not k.endswith(".step")} \
        == {k for k in stock if k in state} and {"roi_heads.keypoint_head.0.weight", "roi_heads.box_head.5.weight",
                                                  "head.regression_head.bbox_reg.weight"} & set(state)
    model.eval(), restored.eval()
    image = [torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(5))]
    with torch.no_grad():
        a, b = model(image)[0], restored(image)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_the_keypoint_head_keeps_the_widening_conv_and_injects_its_output(stock_models):
    model = _replaced(stock_models, "keypoint", "ifr")
    head = model.roi_heads.keypoint_head
    assert isinstance(head, KeypointRefinementHead)
    assert torch.equal(head[0].weight, stock_models["keypoint"].roi_heads.keypoint_head[0].weight)
    assert head.tower.refinement.num_unrolled == 3  # the 3 convolutions after the widening one
    x = torch.randn(2, 8, 6, 6)
    head.eval()
    with torch.no_grad():
        injection = head[0](x).relu()
        assert torch.equal(head(x), head.tower(injection))


@pytest.mark.parametrize("name,rois", [("keypoint", (0, 8, 6, 6)), ("box", (0, 8, 5, 5))])
def test_no_rois(stock_models, name, rois):
    model = _replaced(stock_models, name, "ifr")
    head = model.roi_heads.keypoint_head if name == "keypoint" else model.roi_heads.box_head
    for training in (True, False):
        head.train(training)
        out = head(torch.zeros(rois, requires_grad=training))
        assert out.shape[0] == 0
        if training:
            out.sum().backward()
    model.eval()
    model.roi_heads.score_thresh = 1.1  # no detection passes: the keypoint head gets no RoIs
    with torch.no_grad():
        detections = model([torch.rand(3, 48, 48)])
    assert detections[0]["boxes"].shape == (0, 4)


def test_the_box_head_keeps_torchvisions_fc_and_uses_groupnorm(stock_models):
    model = _replaced(stock_models, "box", "ifr")
    head = model.roi_heads.box_head
    assert isinstance(head, BoxRefinementHead) and list(head._modules) == ["tower", "4", "5", "6"]
    assert torch.equal(head._modules["5"].weight, stock_models["box"].roi_heads.box_head[5].weight)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in head.modules())


@pytest.mark.parametrize("levels", ["separate", "joint"])
def test_dense_towers_refine_each_level_with_its_own_injection(stock_models, levels):
    model = _replaced(stock_models, "retinanet", "ifr", levels=levels, f_tol=1e-6, f_thres=40)
    branch = model.head.classification_head
    assert isinstance(branch.conv, LevelTower) and branch.conv.levels == levels
    generator = torch.Generator().manual_seed(0)
    # unit-scale level features (the untrained tiny backbone's are too small for the untrained block to be
    # a contraction: its solves would not converge, and the two ways would stop at different iterates)
    features = [torch.randn(1, 8, size, size + 2, generator=generator) for size in (12, 6, 3)]
    branch.eval()
    with torch.no_grad():
        branch(features)
        per_level = [branch.conv(x) for x in features]  # outside a branch forward: the tower alone
        branch.conv.begin(branch, (features,))
        in_forward = [branch.conv(x) for x in features]
        branch.conv.end(branch, (features,), None)
    for a, b in zip(in_forward, per_level):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)


def test_the_replacements_refuse_the_wrong_model_or_settings(stock_models):
    with pytest.raises(TypeError, match="replace_keypoint_head needs a torchvision KeypointRCNN"):
        replace_keypoint_head(stock_models["box"])
    with pytest.raises(TypeError, match="replace_box_head needs a torchvision Faster/Mask R-CNN v2"):
        replace_box_head(stock_models["keypoint"])
    with pytest.raises(TypeError, match="replace_dense_head_towers needs a torchvision RetinaNet or FCOS"):
        replace_dense_head_towers(stock_models["box"])
    model = copy.deepcopy(stock_models["retinanet"])
    with pytest.raises(TowerConfigError, match="replace_dense_head_towers: num_groups=32 must be a positive divisor "
                                               "of the FPN features' 8 channels"):
        replace_dense_head_towers(model, "ifr")
    with pytest.raises(TowerConfigError, match="head must be one of"):
        replace_box_head(copy.deepcopy(stock_models["box"]), "conv")
    with pytest.raises(TowerConfigError, match="replace_box_head: unknown fixed-point solver 'newton'"):
        replace_box_head(copy.deepcopy(stock_models["box"]), "ifr", f_solver="newton")


def test_the_implicit_gradient_of_the_keypoint_head_equals_the_unrolled_one(stock_models):
    model = _replaced(stock_models, "keypoint", "ifr", f_tol=1e-12, b_tol=1e-12, f_thres=100, b_thres=100)
    head = model.roi_heads.keypoint_head.double().train()
    with torch.no_grad():  # a more contractive block (|df/dz| halved): 80 unrolled steps reach z*
        head.tower.refinement.block.gn3.weight.mul_(0.5)
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    (head(x) * weights).sum().backward()
    implicit = [x.grad.clone()] + [p.grad.clone() for p in head.parameters()]
    x.grad = None
    head.zero_grad()
    unrolled = EquilibriumRefinement(head.tower.refinement.block, mode="unrolled", num_unrolled=80)
    (unrolled(head[0](x).relu()) * weights).sum().backward()
    for a, b in zip(implicit, [x.grad] + [p.grad for p in head.parameters()]):
        assert float((a - b).abs().max()) <= 1e-6 * float(b.abs().max())


def _head_and_inputs(model, name):
    """The replaced head of an integration and float64 inputs of its shape: RoI features for the box
    head, the 3 FPN levels of 2 images for the dense heads."""
    generator = torch.Generator().manual_seed(3)
    if name == "box":
        return model.roi_heads.box_head, [torch.randn(3, 8, 5, 5, dtype=torch.float64, generator=generator)]
    channels = model.backbone.out_channels
    return model.head, [[torch.randn(2, channels, 8 // 2 ** i, 8 // 2 ** i, dtype=torch.float64, generator=generator)
                         for i in range(3)]]


def _weighted_sum(outputs, generator):
    """A fixed random linear function of a head's outputs (a tensor, or a dict of them)."""
    tensors = outputs.values() if isinstance(outputs, dict) else [outputs]
    return sum((t * torch.randn(t.shape, dtype=t.dtype, generator=generator)).sum() for t in tensors)


@pytest.mark.parametrize("name, levels", [("box", None), ("retinanet", "joint"), ("fcos_separate", "separate")])
def test_the_implicit_gradient_of_each_other_integration_equals_the_unrolled_one(stock_models, name, levels):
    """As for the keypoint head above: the box head, and the one-stage towers with the FPN levels solved
    jointly (RetinaNet) and separately (FCOS); gradients of the inputs and of every parameter."""
    model = _replaced(stock_models, name, "ifr", f_tol=1e-12, b_tol=1e-12, f_thres=100, b_thres=100)
    head, inputs = _head_and_inputs(model, name)
    head = head.double().train()
    refinements = [m for m in head.modules() if isinstance(m, EquilibriumRefinement)]
    level_towers = [m for m in head.modules() if isinstance(m, LevelTower)]
    assert refinements and (levels is None or len(level_towers) == 2 and all(t.levels == levels for t in level_towers))
    with torch.no_grad():  # a more contractive block (|df/dz| halved): 80 unrolled steps reach z*
        for refinement in refinements:
            refinement.block.gn3.weight.mul_(0.5)
    flat = inputs[0] if isinstance(inputs[0], list) else inputs
    grads = []
    for mode in ("implicit", "unrolled"):
        for refinement in refinements:
            refinement.mode, refinement.num_unrolled = mode, 80
        for x in flat:
            x.grad = None
            x.requires_grad_(True)
        head.zero_grad()
        _weighted_sum(head(*inputs), torch.Generator().manual_seed(4)).backward()
        grads.append([x.grad.clone() for x in flat] + [p.grad.clone() for p in head.parameters() if p.grad is not None])
    implicit, unrolled = grads
    assert len(implicit) == len(unrolled) > len(flat)
    for a, b in zip(implicit, unrolled):
        assert float((a - b).abs().max()) <= 1e-6 * float(b.abs().max())


# ---- a 2-process gloo run of the box head ----

def _box_head_batches():
    generator = torch.Generator().manual_seed(7)
    return [(torch.randn(4, 8, 5, 5, generator=generator), torch.randn(4, 16, generator=generator))
            for _ in range(2)]


def _train_box_head(output: str) -> None:
    """Two steps of the IFR box head on this process's share of every batch; rank 0 saves the weights."""
    import torch.distributed as dist

    from ifr.utils import comm

    rank, world = comm.get_rank(), comm.get_world_size()
    model = _faster_rcnn_v2()
    head = replace_box_head(model, "ifr", pretrained_steps=1, num_groups=4, f_tol=1e-8, b_tol=1e-8, f_thres=40,
                            b_thres=40)
    trained = torch.nn.parallel.DistributedDataParallel(head) if world > 1 else head
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    share = 4 // world
    for x, y in _box_head_batches():
        loss = (trained(x[rank * share:(rank + 1) * share]) - y[rank * share:(rank + 1) * share]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if world > 1:
        dist.barrier()
    if comm.is_main_process():
        torch.save(head.state_dict(), output)


def test_the_box_head_in_a_two_process_gloo_run_equals_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv(fake_cuda.REPORT_CUDA, "1")
    launch(_train_box_head, 2, args=(str(tmp_path / "ddp.pth"),), device="cpu")
    _train_box_head(str(tmp_path / "single.pth"))
    ddp, single = torch.load(tmp_path / "ddp.pth"), torch.load(tmp_path / "single.pth")
    assert int(ddp["tower.step"]) == int(single["tower.step"]) == 2  # one unrolled step, then implicit
    for key in single:
        assert torch.allclose(ddp[key].double(), single[key].double(), atol=1e-5), key
