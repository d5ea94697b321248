"""Weight files of every supported kind load by name into the right tensors: the released cvpods
checkpoints (key lists generated here from the documented naming, not from our model), MSRA's Caffe2
R-50.pkl, torchvision's ResNet-50; malicious pickles are refused; export to cvpods names round-trips."""
import logging
import math
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision

from ifr.checkpoint import TORCHVISION, CheckpointError, export_cvpods_checkpoint, ifr_to_cvpods, load_pickle_safely
from ifr.engine import Checkpointer
from ifr.presets import small_model_overrides
from ifr.tools.experiment import load_experiment

from helpers import FOLDERS, ROOT

RESNET50_STAGES = ((2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512))  # (stage, blocks, bottleneck width)


# ---- the released checkpoints' naming (shared/README.md and the cvpods compatibility spec) ----

def _conv_and_norm(prefix, shape):
    norm = {f"{prefix}.norm.{n}": (shape[0],) for n in ("weight", "bias", "running_mean", "running_var")}
    return {f"{prefix}.weight": shape, **norm}


def released_shapes(kind: str) -> dict:
    """Key -> shape of a released cvpods checkpoint of ``kind`` ("ifr", "weight_sharing", "cascade"; "baseline":
    cvpods' Mask R-CNN, whose checkpoint the IFR repository does not release)."""
    shapes = {}
    for level, channels in zip(range(2, 6), (256, 512, 1024, 2048)):
        shapes.update({f"backbone.fpn_lateral{level}.weight": (256, channels, 1, 1),
                       f"backbone.fpn_lateral{level}.bias": (256,),
                       f"backbone.fpn_output{level}.weight": (256, 256, 3, 3),
                       f"backbone.fpn_output{level}.bias": (256,)})
    shapes.update(_conv_and_norm("backbone.bottom_up.stem.conv1", (64, 3, 7, 7)))
    in_channels = 64
    for stage, blocks, width in RESNET50_STAGES:
        for i in range(blocks):
            block = f"backbone.bottom_up.res{stage}.{i}"
            if i == 0:
                shapes.update(_conv_and_norm(f"{block}.shortcut", (4 * width, in_channels, 1, 1)))
            shapes.update(_conv_and_norm(f"{block}.conv1", (width, in_channels if i == 0 else 4 * width, 1, 1)))
            shapes.update(_conv_and_norm(f"{block}.conv2", (width, width, 3, 3)))
            shapes.update(_conv_and_norm(f"{block}.conv3", (4 * width, width, 1, 1)))
        in_channels = 4 * width
    shapes.update({f"proposal_generator.anchor_generator.cell_anchors.{i}": (3, 4) for i in range(5)})
    shapes.update({"proposal_generator.rpn_head.conv.weight": (256, 256, 3, 3), "proposal_generator.rpn_head.conv.bias": (256,),
                   "proposal_generator.rpn_head.objectness_logits.weight": (3, 256, 1, 1),
                   "proposal_generator.rpn_head.objectness_logits.bias": (3,),
                   "proposal_generator.rpn_head.anchor_deltas.weight": (12, 256, 1, 1),
                   "proposal_generator.rpn_head.anchor_deltas.bias": (12,)})
    stages = [f".{k}" for k in range(3)] if kind == "cascade" else [""]
    for s in stages:
        shapes.update({f"roi_heads.box_head{s}.fc1.weight": (1024, 12544), f"roi_heads.box_head{s}.fc1.bias": (1024,),
                       f"roi_heads.box_head{s}.fc2.weight": (1024, 1024), f"roi_heads.box_head{s}.fc2.bias": (1024,),
                       f"roi_heads.box_predictor{s}.cls_score.weight": (81, 1024),
                       f"roi_heads.box_predictor{s}.cls_score.bias": (81,)})
        box_outputs = 4 if kind == "cascade" else 320
        shapes.update({f"roi_heads.box_predictor{s}.bbox_pred.weight": (box_outputs, 1024),
                       f"roi_heads.box_predictor{s}.bbox_pred.bias": (box_outputs,)})
    head = "roi_heads.mask_head."
    norms = {f"gn{i}.{n}": (256,) for i in (1, 2, 3) for n in ("weight", "bias")}
    if kind == "baseline":  # detectron2's / cvpods' MaskRCNNConvUpsampleHead
        shapes.update({head + f"mask_fcn{i}.{n}": (256, 256, 3, 3) if n == "weight" else (256,)
                       for i in range(1, 5) for n in ("weight", "bias")})
    elif kind == "weight_sharing":
        block = {"conv1.weight": (256, 256, 3, 3), "conv2.weight": (256, 256, 3, 3), **norms}
        shapes.update({head + "repeat_block." + k: v for k, v in block.items()})
    else:
        block = {f"conv{i}.{n}": (256, 1, 1, 1) if n == "weight_g" else (256, 256, 3, 3)
                 for i in (1, 2) for n in ("weight_g", "weight_v")}
        copy = {"conv1.weight": (256, 256, 3, 3), "conv2.weight": (256, 256, 3, 3), **norms}
        for prefix, entries in (("repeat_block.", {**block, **norms}), ("deq.func.", {**block, **norms}),
                                ("repeat_block_copy.", copy), ("deq.func_copy.", copy)):
            shapes.update({head + prefix + k: v for k, v in entries.items()})
    shapes.update({head + "deconv.weight": (256, 256, 2, 2), head + "deconv.bias": (256,),
                   head + "predictor.weight": (80, 256, 1, 1), head + "predictor.bias": (80,)})
    return shapes


def cvpods_cell_anchors(level: int) -> torch.Tensor:
    """cvpods' unrounded cell anchors of FPN level ``level`` (0 = p2, size 32): ratios 0.5, 1, 2."""
    size = 32 * 2 ** level
    rows = []
    for ratio in (0.5, 1.0, 2.0):
        w = math.sqrt(size * size / ratio)
        h = ratio * w
        rows.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(rows)


def released_checkpoint(kind: str) -> dict:
    generator = torch.Generator().manual_seed(1)
    state = {k: torch.randn(shape, generator=generator) for k, shape in released_shapes(kind).items()}
    for i in range(5):
        state[f"proposal_generator.anchor_generator.cell_anchors.{i}"] = cvpods_cell_anchors(i)
    for key in [k for k in state if k.endswith("running_var")]:
        state[key] = state[key].abs() + 0.5
    # The DEQ wrapper's entries are the same tensors as the blocks (state_dict does not dedupe).
    head = "roi_heads.mask_head."
    for key in [k for k in state if k.startswith(head + "deq.")]:
        block = "repeat_block_copy." if key.startswith(head + "deq.func_copy.") else "repeat_block."
        state[key] = state[head + block + key.split(".", 4)[4]]
    return {"model": state, "iteration": 89999}


def build(kind: str, *overrides):
    config, build_model = load_experiment(os.path.join(ROOT, FOLDERS[kind]))
    config.merge_from_list(["MODEL.DEVICE", "cpu", *overrides])
    return build_model(config).eval()


@pytest.mark.parametrize("kind,count", [("ifr", 340), ("weight_sharing", 312), ("cascade", 356), ("baseline", 312)])
def test_released_checkpoint_loads_strictly_with_every_tensor_in_place(kind, count, tmp_path):
    checkpoint = released_checkpoint(kind)
    source = checkpoint["model"]
    assert len(source) == count
    path = tmp_path / "released.pth"
    torch.save(checkpoint, path)
    model = build(kind)
    checkpointer = Checkpointer(model, str(tmp_path))
    extra = checkpointer.load(str(path), strict=True)
    report = checkpointer.last_report
    assert extra == {"iteration": 89999}
    assert report.source_format == "cvpods" and report.missing == [] and report.unexpected == []
    assert len(report.loaded) == len(model.state_dict())
    own = model.state_dict()
    stage = ".2" if kind == "cascade" else ""
    # background is the last row in cvpods and in this model: no reordering
    assert torch.equal(own[f"roi_heads.box_predictor{stage}.cls_score.weight"][80],
                       source[f"roi_heads.box_predictor{stage}.cls_score.weight"][80])
    assert torch.equal(own["backbone.body.layer2.0.conv1.weight"], source["backbone.bottom_up.res3.0.conv1.weight"])
    assert torch.equal(own["backbone.body.layer3.0.downsample.1.running_var"],
                       source["backbone.bottom_up.res4.0.shortcut.norm.running_var"])
    assert torch.equal(own["backbone.fpn.inner_blocks.1.0.bias"], source["backbone.fpn_lateral3.bias"])
    assert torch.equal(own["backbone.fpn.layer_blocks.3.0.weight"], source["backbone.fpn_output5.weight"])
    assert torch.equal(own["proposal_generator.rpn_head.anchor_deltas.weight"],
                       source["proposal_generator.rpn_head.anchor_deltas.weight"])
    if kind == "baseline":
        assert torch.equal(own["roi_heads.mask_head.mask_fcn4.weight"], source["roi_heads.mask_head.mask_fcn4.weight"])
        assert report.dropped == []
    elif kind == "weight_sharing":
        assert torch.equal(own["roi_heads.mask_head.refinement.block.conv2.weight"],
                           source["roi_heads.mask_head.repeat_block.conv2.weight"])
    else:
        assert torch.equal(own["roi_heads.mask_head.refinement.block.conv1.weight_g"],
                           source["roi_heads.mask_head.repeat_block.conv1.weight_g"])
        assert len(report.dropped) == 26  # repeat_block_copy (8), deq.func (10), deq.func_copy (8)
    # Export gives back exactly the released naming and shapes.
    exported = ifr_to_cvpods(model.state_dict())
    assert {k: tuple(v.shape) for k, v in exported.items()} == released_shapes(kind)


def test_model_anchors_are_cvpods_unrounded_anchors():
    own = build("ifr").state_dict()
    for i in range(5):
        assert torch.allclose(own[f"proposal_generator.anchor_generator.cell_anchors.{i}"], cvpods_cell_anchors(i))


def test_export_writes_the_original_weight_norm_copy():
    model = build("ifr")
    exported = ifr_to_cvpods(model.state_dict())
    head = "roi_heads.mask_head."
    g, v = exported[head + "repeat_block.conv1.weight_g"], exported[head + "repeat_block.conv1.weight_v"]
    expected = v * (g / v.contiguous().view(256, -1).norm(dim=1).view(256, 1, 1, 1))
    assert torch.equal(exported[head + "repeat_block_copy.conv1.weight"], expected)
    assert torch.equal(exported[head + "deq.func_copy.conv1.weight"], expected)
    assert torch.equal(exported[head + "deq.func.gn3.bias"], exported[head + "repeat_block.gn3.bias"])


def test_shape_mismatch_skips_heads_with_a_warning_strict_refuses(tmp_path, caplog):
    checkpoint = released_checkpoint("ifr")
    path = tmp_path / "released.pth"
    torch.save(checkpoint, path)
    model = build("ifr", "MODEL.ROI_HEADS.NUM_CLASSES", "3")
    with caplog.at_level(logging.WARNING, logger="ifr.checkpoint"):
        Checkpointer(model, str(tmp_path)).load(str(path))
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert any("cls_score.weight" in m and "(81, 1024)" in m and "(4, 1024)" in m for m in skipped)
    assert torch.equal(model.state_dict()["roi_heads.box_head.fc1.bias"], checkpoint["model"]["roi_heads.box_head.fc1.bias"])
    with pytest.raises(CheckpointError, match="does not fit this model.*cls_score"):
        Checkpointer(build("ifr", "MODEL.ROI_HEADS.NUM_CLASSES", "3"), str(tmp_path)).load(str(path), strict=True)
    with pytest.raises(CheckpointError, match="backbone.fpn.*Check that the experiment folder"):
        Checkpointer(build("ifr", "MODEL.FPN.OUT_CHANNELS", "128"), str(tmp_path)).load(str(path))


def test_strict_load_names_what_is_missing(tmp_path):
    checkpoint = released_checkpoint("ifr")
    del checkpoint["model"]["roi_heads.mask_head.predictor.bias"]
    torch.save(checkpoint, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing: roi_heads\.mask_head\.\*"):
        Checkpointer(build("ifr"), str(tmp_path)).load(str(tmp_path / "partial.pth"), strict=True)


def test_released_weights_refuse_a_model_configured_for_rgb(tmp_path):
    torch.save(released_checkpoint("ifr"), tmp_path / "released.pth")
    model = build("ifr", *TORCHVISION.overrides())
    with pytest.raises(CheckpointError, match="INPUT.FORMAT is RGB, not BGR.*Add these overrides: INPUT.FORMAT BGR"):
        Checkpointer(model, str(tmp_path)).load(str(tmp_path / "released.pth"))


# ---- ImageNet backbones ----

def caffe2_r50_blobs() -> dict:
    """MSRA R-50.pkl naming: conv weights ``_w``, affine BN ``_bn_s``/``_bn_b``, no running statistics."""
    rng = np.random.default_rng(0)
    blobs = {"conv1_w": (64, 3, 7, 7), "conv1_b": (64,), "res_conv1_bn_s": (64,), "res_conv1_bn_b": (64,),
             "fc1000_w": (1000, 2048), "fc1000_b": (1000,)}
    in_channels = 64
    for stage, blocks, width in RESNET50_STAGES:
        for i in range(blocks):
            convs = {"branch2a": (width, in_channels if i == 0 else 4 * width, 1, 1),
                     "branch2b": (width, width, 3, 3), "branch2c": (4 * width, width, 1, 1)}
            if i == 0:
                convs["branch1"] = (4 * width, in_channels, 1, 1)
            for branch, shape in convs.items():
                blobs[f"res{stage}_{i}_{branch}_w"] = shape
                blobs[f"res{stage}_{i}_{branch}_bn_s"] = shape[:1]
                blobs[f"res{stage}_{i}_{branch}_bn_b"] = shape[:1]
        in_channels = 4 * width
    return {k: rng.standard_normal(shape).astype(np.float32) for k, shape in blobs.items()}


def test_caffe2_r50_pkl_loads_into_the_backbone(tmp_path):
    blobs = caffe2_r50_blobs()
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump(blobs, f, protocol=2)
    model = build("ifr")
    checkpointer = Checkpointer(model, str(tmp_path))
    checkpointer.load(str(path))
    report = checkpointer.last_report
    own = model.state_dict()
    assert report.source_format == "caffe2" and report.unexpected == []
    assert sorted(report.dropped) == ["conv1_b", "fc1000_b", "fc1000_w"]
    assert all(not k.startswith("backbone.body.") for k in report.missing)  # the whole ResNet is loaded
    pairs = {"backbone.body.conv1.weight": "conv1_w", "backbone.body.bn1.weight": "res_conv1_bn_s",
             "backbone.body.layer1.0.downsample.0.weight": "res2_0_branch1_w",
             "backbone.body.layer1.0.downsample.1.weight": "res2_0_branch1_bn_s",
             "backbone.body.layer2.2.conv2.weight": "res3_2_branch2b_w",
             "backbone.body.layer4.2.bn3.bias": "res5_2_branch2c_bn_b"}
    for ours, theirs in pairs.items():
        assert np.array_equal(own[ours].numpy(), blobs[theirs]), ours
    # cvpods' FrozenBN statistics for weights that carry none: y = x * weight + bias exactly
    assert torch.equal(own["backbone.body.layer3.5.bn2.running_mean"], torch.zeros(256))
    assert torch.equal(own["backbone.body.layer3.5.bn2.running_var"], torch.full((256,), 1.0 - 1e-5))


def test_torchvision_resnet50_weights_need_and_fit_torchvision_conventions(tmp_path):
    torch.manual_seed(3)
    source = torchvision.models.resnet50(weights=None).state_dict()
    for value in source.values():
        if value.is_floating_point():
            value.normal_()
    path = tmp_path / "resnet50.pth"
    torch.save(source, path)
    with pytest.raises(CheckpointError, match="STRIDE_IN_1X1 is True, not False.*MODEL.RESNETS.STRIDE_IN_1X1 False"):
        Checkpointer(build("ifr"), str(tmp_path)).load(str(path))
    model = build("ifr", *TORCHVISION.overrides())
    checkpointer = Checkpointer(model, str(tmp_path))
    checkpointer.load(str(path))
    own = model.state_dict()
    assert checkpointer.last_report.source_format == "torchvision_resnet"
    assert checkpointer.last_report.unexpected == []
    for key, value in source.items():
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(own["backbone.body." + key], value), key
    assert model.backbone.body.layer2[0].conv2.stride == (2, 2)  # torchvision's stride placement


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"conv1_w": np.zeros((64, 3, 7, 7), np.float32), "payload": Exploit()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refusing to load .*posix.system|refusing to load .*os.system"):
        Checkpointer(build("ifr"), str(tmp_path)).load(str(path))
    assert not marker.exists()


def test_safe_unpickler_reads_plain_data(tmp_path):
    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [1, 2.5, "x"], "c": np.float64(2.0)}
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(data, protocol=2))
    loaded = load_pickle_safely(str(tmp_path / "plain.pkl"))
    assert np.array_equal(loaded["a"], data["a"]) and loaded["b"] == data["b"] and loaded["c"] == 2.0


@pytest.mark.parametrize("weights,message", [
    ("https://example.com/model_final.pth", "is a URL; weights are never downloaded"),
    ("detectron2://ImageNetPretrained/MSRA/R-50.pkl", "dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"),
])
def test_remote_weights_say_what_to_download(weights, message, tmp_path, monkeypatch):
    monkeypatch.setenv("IFR_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match=message):
        Checkpointer(build("ifr"), str(tmp_path)).load(weights)


# ---- round trip ----

def small_model(tmp_path):
    config, build_model = load_experiment(os.path.join(ROOT, FOLDERS["ifr"]))
    config.merge(small_model_overrides(max_iter=10))
    config.merge_from_list(["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
                            "OUTPUT_DIR", str(tmp_path)])
    return build_model(config).eval()


def test_export_to_cvpods_and_reload_gives_identical_outputs(tmp_path):
    torch.manual_seed(5)
    model = small_model(tmp_path)
    image = {"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8), "height": 192, "width": 256}
    with torch.no_grad():
        before = model([image])[0]["instances"]
    assert len(before["boxes"]) > 0 and before["masks"].any()
    torch.save({"model": model.state_dict()}, tmp_path / "ours.pth")
    export_cvpods_checkpoint(str(tmp_path / "ours.pth"), str(tmp_path / "exported.pth"))
    assert "backbone.bottom_up.stem.conv1.weight" in torch.load(tmp_path / "exported.pth")["model"]
    torch.manual_seed(6)
    reloaded = small_model(tmp_path)
    checkpointer = Checkpointer(reloaded, str(tmp_path))
    checkpointer.load(str(tmp_path / "exported.pth"), strict=True)
    assert checkpointer.last_report.source_format == "cvpods"
    with torch.no_grad():
        after = reloaded([image])[0]["instances"]
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_export_command_turns_a_released_checkpoint_back_into_itself(tmp_path, capsys):
    from ifr.tools import export_cvpods

    source = released_checkpoint("cascade")["model"]
    torch.save(source, tmp_path / "released.pth")
    export_cvpods.main([str(tmp_path / "released.pth"), str(tmp_path / "out" / "exported.pth")])
    assert "wrote 356 tensors" in capsys.readouterr().out
    exported = torch.load(tmp_path / "out" / "exported.pth")["model"]
    assert exported.keys() == source.keys()
    for key, value in source.items():
        if "repeat_block_copy." not in key and "func_copy." not in key:  # copies are recomputed from g, v
            assert torch.equal(exported[key], value), key


def test_detectron2_pkl_of_a_torchvision_backbone_uses_torchvision_conventions(tmp_path):
    # detectron2's conversion of torchvision's ResNet-50: bottom-up names without the backbone prefix
    backbone = {k[len("backbone.bottom_up."):]: shape for k, shape in released_shapes("ifr").items()
                if k.startswith("backbone.bottom_up.")}
    rng = np.random.default_rng(1)
    model_state = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in backbone.items()}
    with open(tmp_path / "R-50-tv.pkl", "wb") as f:
        pickle.dump({"model": model_state, "__author__": "torchvision", "matching_heuristics": True}, f)
    with pytest.raises(CheckpointError, match="torchvision weights"):
        Checkpointer(build("ifr"), str(tmp_path)).load(str(tmp_path / "R-50-tv.pkl"))
    model = build("ifr", *TORCHVISION.overrides())
    checkpointer = Checkpointer(model, str(tmp_path))
    checkpointer.load(str(tmp_path / "R-50-tv.pkl"))
    assert checkpointer.last_report.unexpected == [] and len(checkpointer.last_report.loaded) == 265
    assert np.array_equal(model.state_dict()["backbone.body.layer4.1.bn2.running_mean"].numpy(),
                          model_state["res5.1.conv2.norm.running_mean"])
