import pytest
import torch
import torch.nn.functional as F

from ifr.config import ConfigError, RCNNFPNConfig
from ifr.modeling.mask_head import MASK_HEADS, mask_rcnn_inference, mask_rcnn_loss


def _cfg(channels=16, num_classes=3, pretrained_steps=5, f_thres=15):
    cfg = RCNNFPNConfig()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = channels
    cfg.MODEL.ROI_MASK_HEAD.merge(dict(PRETRAINED_STEPS=pretrained_steps, F_THRES=f_thres, B_THRES=f_thres,
                                       F_SOLVER="broyden", F_TOL=1e-5, B_SOLVER="broyden", B_TOL=1e-6))
    return cfg


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_at_paper_size():
    cfg = _cfg(channels=256, num_classes=80)
    heads = {name: build(cfg, 256) for name, build in MASK_HEADS.items()}
    conv3 = 256 * 256 * 9
    upsample = (256 * 256 * 4 + 256) + (80 * 256 + 80)
    assert _count(heads["conv"]) == 4 * (conv3 + 256) + upsample
    assert _count(heads["weight_sharing"]) == 2 * conv3 + 3 * 2 * 256 + upsample
    assert _count(heads["ifr"]) == 2 * (conv3 + 256) + 3 * 2 * 256 + upsample
    # The refinement part alone (what replaces the 4 convs) is about half of the stack it replaces.
    ratio = (_count(heads["ifr"]) - upsample) / (_count(heads["conv"]) - upsample)
    assert 0.49 < ratio < 0.51


def test_state_dict_names():
    cfg = _cfg()
    assert sorted(MASK_HEADS["weight_sharing"](cfg, 16).state_dict()) == sorted(
        ["refinement.block.conv1.weight", "refinement.block.conv2.weight"]
        + [f"refinement.block.gn{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")]
        + ["deconv.weight", "deconv.bias", "predictor.weight", "predictor.bias"])
    ifr_keys = MASK_HEADS["ifr"](cfg, 16).state_dict()
    assert "refinement.block.conv1.weight_g" in ifr_keys and "refinement.block.conv1.weight_v" in ifr_keys
    assert [k for k in MASK_HEADS["conv"](cfg, 16).state_dict() if k.endswith("weight")][:4] == [
        "deconv.weight", "predictor.weight", "mask_fcn1.weight", "mask_fcn2.weight"]


def test_ifr_head_switches_from_unrolled_to_implicit_at_pretrained_steps(device):
    head = MASK_HEADS["ifr"](_cfg(pretrained_steps=5), 16).to(device).train()
    x = torch.randn(3, 16, 14, 14, device=device)
    out = head(x, iteration=4)
    assert out.shape == (3, 3, 28, 28)
    assert head.refinement.last_stats is None
    z = torch.zeros_like(x)
    for _ in range(4):
        z = head.refinement.block(z, x)
    assert torch.allclose(out, head.predict(z))
    head(x, iteration=5)
    assert head.refinement.last_stats is not None
    assert head.refinement.last_stats.iterations >= 1
    with torch.no_grad():
        head.eval()(x)
    assert head.refinement.last_stats is not None


def _toy_batch(channels, num_classes, rois=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rois, channels, 14, 14, generator=g)
    # The mask is where the first channel is positive: learnable by every head.
    masks = (F.interpolate(x[:, :1], size=(28, 28), mode="nearest")[:, 0] > 0).float()
    classes = torch.randint(0, num_classes, (rois,), generator=g)
    return x, classes, masks


@pytest.mark.parametrize("name", sorted(MASK_HEADS))
def test_each_head_learns_a_toy_mask_task(name, device):
    torch.manual_seed(0)
    head = MASK_HEADS[name](_cfg(pretrained_steps=3, f_thres=8), 16).to(device).train()
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    x, classes, masks = (t.to(device) for t in _toy_batch(16, 3))
    losses = []
    for it in range(12):  # crosses PRETRAINED_STEPS = 3: the IFR head trains implicitly from it = 3
        loss = mask_rcnn_loss(head(x, iteration=it), classes, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0]


def test_mask_loss_and_inference_select_the_class_channel(device):
    logits = torch.randn(2, 3, 4, 4, device=device)
    classes = torch.tensor([2, 0], device=device)
    targets = (torch.rand(2, 4, 4, device=device) > 0.5).float()
    expected = torch.stack([F.binary_cross_entropy_with_logits(logits[i, c], targets[i], reduction="sum")
                            for i, c in enumerate(classes)]).sum() / targets.numel()
    assert torch.allclose(mask_rcnn_loss(logits, classes, targets), expected)
    probs = mask_rcnn_inference(logits, classes)
    assert probs.shape == (2, 1, 4, 4) and torch.allclose(probs[1, 0], logits[1, 0].sigmoid())
    assert mask_rcnn_loss(logits[:0], classes[:0], targets[:0]).item() == 0.0
    agnostic = torch.randn(2, 1, 4, 4, device=device)
    assert torch.allclose(mask_rcnn_loss(agnostic, classes, targets),
                          F.binary_cross_entropy_with_logits(agnostic[:, 0], targets))


def test_ifr_head_solver_is_chosen_by_config(device):
    cfg = _cfg()
    cfg.merge_from_list(["MODEL.ROI_MASK_HEAD.F_SOLVER", "broyden_cvpods", "MODEL.ROI_MASK_HEAD.F_TOL", "1e-4"])
    head = MASK_HEADS["ifr"](cfg, 16).to(device).eval()
    assert head.refinement.solver.name == "broyden_cvpods" and head.refinement.solver.tol == 1e-4
    with torch.no_grad():
        assert torch.isfinite(head(torch.randn(3, 16, 14, 14, device=device))).all()
    assert head.refinement.last_stats.iterations > 0
    cfg.merge_from_list(["MODEL.ROI_MASK_HEAD.B_SOLVER", "newton"])
    with pytest.raises(ConfigError, match="MODEL.ROI_MASK_HEAD.B_SOLVER: unknown fixed-point solver 'newton'.*broyden_cvpods"):
        MASK_HEADS["ifr"](cfg, 16)


@pytest.mark.parametrize("name", sorted(MASK_HEADS))
def test_channels_last_layout_gives_the_same_logits_and_gradients(name):
    """CHANNELS_LAST only changes the memory layout the head computes in (and the IFR solver iterates in)."""
    x, _, _ = _toy_batch(16, 3, rois=5)
    outputs, gradients = [], []
    for channels_last in (False, True):
        cfg = _cfg()
        cfg.merge_from_list(["MODEL.ROI_MASK_HEAD.CHANNELS_LAST", str(channels_last)])
        torch.manual_seed(0)
        head = MASK_HEADS[name](cfg, 16).double().train()
        layouts = []
        first_conv = next(m for m in head.modules() if isinstance(m, torch.nn.Conv2d))
        first_conv.register_forward_pre_hook(
            lambda module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
        inputs = x.double().requires_grad_()
        out = head(inputs, iteration=10)  # IFR: past PRETRAINED_STEPS, the implicit solve
        out.square().mean().backward()
        assert layouts and layouts == [channels_last] * len(layouts)
        outputs.append(out.detach())
        gradients.append(inputs.grad)
    assert torch.allclose(outputs[0], outputs[1], atol=1e-10)
    assert torch.allclose(gradients[0], gradients[1], atol=1e-10)
