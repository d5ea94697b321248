"""Every key of the base config is read by the run or refused, and the cvpods keys this project
implements (ResNeXt, FPN / head norms, conv box heads, zero-init residuals) change the model."""
import os

import pytest
import torch
from torchvision.models import resnext50_32x4d

from ifr.checkpoint import TORCHVISION
from ifr.config import ConfigError, RCNNFPNConfig
from ifr.config.config_dict import ConfigDict
from ifr.config.support import UNSUPPORTED, check_supported
from ifr.engine import Checkpointer
from ifr.modeling import build_generalized_rcnn
from ifr.tools import quickstart
from ifr.tools.experiment import load_experiment, run_reporting_user_errors

from helpers import FOLDERS, ROOT, TINY


def _leaves(node, prefix=""):
    """(node id, key, dotted path) of every leaf of a config tree."""
    for key in dict.keys(node):
        value = dict.__getitem__(node, key)
        if isinstance(value, ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield id(node), key, prefix + key


def test_every_base_key_is_read_by_a_training_run_or_refused(monkeypatch, tmp_path, val_subset):
    """A 2-iteration quickstart run (training both phases of the IFR head, checkpointing, evaluation)
    with every config access recorded: each leaf of the final config was looked at."""
    read = set()
    original = ConfigDict.__getattr__
    monkeypatch.setattr(ConfigDict, "__getattr__", lambda self, key: read.add((id(self), key)) or original(self, key))
    monkeypatch.setattr(ConfigDict, "__getitem__",
                        lambda self, key: read.add((id(self), key)) or dict.__getitem__(self, key))
    captured = {}
    setup = quickstart.default_setup
    monkeypatch.setattr(quickstart, "default_setup",
                        lambda cfg, args, **kwargs: captured.setdefault("cfg", cfg) and setup(cfg, args, **kwargs))
    monkeypatch.setenv("IFR_OUTPUT_ROOT", str(tmp_path))
    quickstart.main(["--max-iter", "2", "--no-progress", *TINY, "MODEL.ROI_MASK_HEAD.PRETRAINED_STEPS", "1",
                     "DATASETS.TEST", f"('{val_subset}',)"])
    cfg = captured["cfg"]
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True  # the cascade's box heads read the cascade keys
    build_generalized_rcnn(cfg, roi_heads="cascade", mask_head="conv")
    all_keys = {path for _, _, path in _leaves(RCNNFPNConfig())}
    assert {path for _, _, path in _leaves(cfg)} == all_keys
    unread = sorted(path for node, key, path in _leaves(cfg) if (node, key) not in read)
    assert unread == []


@pytest.mark.parametrize("key", sorted(UNSUPPORTED))
def test_unsupported_keys_refuse_other_values_by_name(key):
    cfg = RCNNFPNConfig()
    check_supported(cfg)  # the defaults are the supported values
    supported = UNSUPPORTED[key][0]
    other = {bool: lambda v: not v, int: lambda v: v + 1, str: lambda v: v + "x"}.get(type(supported),
                                                                                     lambda v: [*v, 2])(supported)
    cfg.merge_from_list([key, repr(other)])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ".*not supported"):
        check_supported(cfg)


def _small_config(*overrides):
    config, _ = load_experiment(os.path.join(ROOT, FOLDERS["ifr"]))
    config.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
                            "MODEL.RESNETS.NORM", "GN", "MODEL.BACKBONE.FREEZE_AT", "0", *overrides])
    return config


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("overrides, changed", [
    (["MODEL.RESNETS.NUM_GROUPS", "32", "MODEL.RESNETS.WIDTH_PER_GROUP", "4"], "backbone.body.layer1.0.conv2.weight"),
    (["MODEL.RESNETS.DEPTH", "101"], "backbone.body.layer3.22.conv1.weight"),
    (["MODEL.FPN.NORM", "GN"], "backbone.fpn.inner_blocks.0.1.weight"),
    (["MODEL.FPN.OUT_CHANNELS", "64"], "backbone.fpn.layer_blocks.0.0.weight"),
    (["MODEL.ROI_BOX_HEAD.NUM_CONV", "4", "MODEL.ROI_BOX_HEAD.NUM_FC", "1", "MODEL.ROI_BOX_HEAD.NORM", "GN"],
     "roi_heads.box_head.conv4.norm.weight"),
    (["MODEL.ROI_BOX_HEAD.FC_DIM", "512"], "roi_heads.box_head.fc2.weight"),
    (["MODEL.ROI_MASK_HEAD.GN_GROUPS", "8"], None),
    (["MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "True"], "roi_heads.mask_head.predictor.weight"),
])
def test_model_keys_change_the_built_model(overrides, changed):
    torch.manual_seed(0)
    base = build_generalized_rcnn(_small_config(), mask_head="ifr")
    torch.manual_seed(0)
    model = build_generalized_rcnn(_small_config(*overrides), mask_head="ifr")
    if changed is None:  # same parameters, other structure
        assert repr(model) != repr(base)
    else:
        assert _shapes(model).get(changed) != _shapes(base).get(changed)


def test_mask_head_norm_builds_the_gn_4conv_head_and_is_refused_by_the_block():
    head = build_generalized_rcnn(_small_config("MODEL.ROI_MASK_HEAD.NORM", "GN"), mask_head="conv").roi_heads.mask_head
    assert isinstance(head.mask_fcn1.norm, torch.nn.GroupNorm) and head.mask_fcn1.bias is None
    with pytest.raises(ConfigError, match="ROI_MASK_HEAD.NORM 'GN' applies to the 4-conv head"):
        build_generalized_rcnn(_small_config("MODEL.ROI_MASK_HEAD.NORM", "GN"), mask_head="ifr")


def test_zero_init_residual_zeroes_the_last_norm_of_every_branch():
    model = build_generalized_rcnn(_small_config("MODEL.RESNETS.NORM", "FrozenBN", "MODEL.RESNETS.ZERO_INIT_RESIDUAL",
                                                 "True"), mask_head="ifr")
    bn3 = [m.bn3.weight for m in model.backbone.body.modules() if hasattr(m, "bn3")]
    assert len(bn3) == 16 and all(float(w.abs().max()) == 0.0 for w in bn3)
    plain = build_generalized_rcnn(_small_config("MODEL.RESNETS.NORM", "FrozenBN"), mask_head="ifr")
    assert all(float(m.bn3.weight.min()) == 1.0 for m in plain.backbone.body.modules() if hasattr(m, "bn3"))


def test_resnext50_32x4d_matches_torchvision_and_loads_its_checkpoint(tmp_path):
    config = _small_config("MODEL.RESNETS.NUM_GROUPS", "32", "MODEL.RESNETS.WIDTH_PER_GROUP", "4",
                           "MODEL.RESNETS.NORM", "FrozenBN", *TORCHVISION.overrides())
    model = build_generalized_rcnn(config, mask_head="ifr")
    reference = resnext50_32x4d(weights=None)
    trunk = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")
             and not k.endswith("num_batches_tracked")}
    ours = {k[len("backbone.body."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.body.")}
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in trunk.items()}
    trunk_parameters = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
    assert trunk_parameters == 22_979_904  # torchvision's resnext50_32x4d without its classifier
    assert sum(v.numel() for k, v in ours.items() if not k.endswith(("running_mean", "running_var"))) == trunk_parameters
    torch.manual_seed(1)
    for value in trunk.values():
        value.normal_()
    path = tmp_path / "resnext50_32x4d.pth"
    torch.save(reference.state_dict(), path)
    checkpointer = Checkpointer(model, str(tmp_path))
    checkpointer.load(str(path))
    assert checkpointer.last_report.source_format == "torchvision_resnet"
    own = model.state_dict()
    for key, value in trunk.items():
        assert torch.equal(own["backbone.body." + key], value), key
    assert model.backbone.body.layer2[0].conv2.groups == 32


def test_a_misspelled_key_is_one_config_error_line_in_config_py_net_py_and_the_command_line(tmp_path, monkeypatch,
                                                                                            capsys):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(os.path.join(ROOT, FOLDERS["weight_sharing"]), folder)
    config_py = (folder / "config.py").read_text()

    def run(args):
        cfg, build = load_experiment(str(folder))
        cfg.merge_from_list(args)
        build(cfg)

    for config_text, net_text, args, key in [
        (config_py.replace("MASK_ON=True", "MASK_ONN=True"), None, [], "MODEL.MASK_ONN"),
        (None, "cfg.MODEL.ROI_MASK_HEAD.F_TOLL\n", [], "F_TOLL"),
        (None, None, ["MODEL.ROI_MASK_HEAD.F_TRES", "3"], "MODEL.ROI_MASK_HEAD.F_TRES"),
    ]:
        (folder / "config.py").write_text(config_text or config_py)
        net = "from ifr.modeling import build_generalized_rcnn\n\n\ndef build_model(cfg):\n"
        net += f"    {net_text}" if net_text else ""
        net += "    return build_generalized_rcnn(cfg, mask_head='ifr')\n"
        (folder / "net.py").write_text(net)
        with pytest.raises(SystemExit) as exit_info:
            run_reporting_user_errors(run, args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("ERROR: unknown config key") and key in err


def test_fpn_and_head_norms_have_cvpods_names_both_ways():
    from ifr.checkpoint import ifr_to_cvpods
    from ifr.checkpoint.naming import cvpods_to_ifr_key

    model = build_generalized_rcnn(_small_config("MODEL.FPN.NORM", "GN", "MODEL.ROI_BOX_HEAD.NUM_CONV", "2",
                                                 "MODEL.ROI_BOX_HEAD.NORM", "GN", "MODEL.ROI_MASK_HEAD.NORM", "GN"),
                                   mask_head="conv")
    exported = ifr_to_cvpods(model.state_dict())
    for key in ("backbone.fpn_lateral2.weight", "backbone.fpn_lateral2.norm.weight", "backbone.fpn_output5.norm.bias",
                "roi_heads.box_head.conv2.norm.weight", "roi_heads.mask_head.mask_fcn4.norm.weight"):
        assert key in exported, key
    assert "backbone.fpn_lateral2.bias" not in exported  # bias-free convolutions before GroupNorm, as in cvpods
    assert {cvpods_to_ifr_key(k) for k in exported} == set(model.state_dict())


@pytest.mark.parametrize("overrides, message", [
    (["MODEL.RESNETS.NUM_GROUPS", "3", "MODEL.RESNETS.WIDTH_PER_GROUP", "5"],
     "MODEL.RESNETS.NORM 'GN' normalises in 32 groups, but NUM_GROUPS 3 x WIDTH_PER_GROUP 5 makes the 3x3 "
     "convolutions of res2..res5 15, 30, 60, 120 channels wide"),
    (["MODEL.FPN.NORM", "GN", "MODEL.FPN.OUT_CHANNELS", "48"],
     "MODEL.FPN.NORM 'GN' normalises in 32 groups, which must divide the width of every layer it follows, but one "
     "is 48 channels wide"),
    (["MODEL.ROI_BOX_HEAD.NUM_CONV", "2", "MODEL.ROI_BOX_HEAD.NORM", "GN", "MODEL.ROI_BOX_HEAD.CONV_DIM", "100"],
     "MODEL.ROI_BOX_HEAD.NORM 'GN' normalises in 32 groups, .* but one is 100 channels wide"),
    (["MODEL.ROI_MASK_HEAD.GN_GROUPS", "3"], "MODEL.ROI_MASK_HEAD.GN_GROUPS 3 must divide the 256 channels"),
], ids=["resnext-widths", "fpn", "box-head", "ifr-block"])
def test_groupnorm_groups_that_do_not_divide_a_width_are_a_config_error_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_generalized_rcnn(_small_config(*overrides), mask_head="ifr")


def test_groupnorm_in_the_4conv_mask_head_needs_a_width_it_divides():
    with pytest.raises(ConfigError, match="MODEL.ROI_MASK_HEAD.NORM 'GN' normalises in 32 groups.* 100 channels"):
        build_generalized_rcnn(_small_config("MODEL.ROI_MASK_HEAD.NORM", "GN", "MODEL.ROI_MASK_HEAD.CONV_DIM", "100"),
                               mask_head="conv")


def test_resnext_widths_the_small_presets_groupnorm_cannot_split_stop_the_run_before_building(
        tmp_path, monkeypatch, capsys, val_subset):
    """The issue's case, as a user runs it: the quickstart's model (ResNet-18 with GroupNorm) turned
    into a ResNeXt-50 of 3 x 5 widths ends in one ConfigError line, before any model is built."""
    monkeypatch.setenv("IFR_OUTPUT_ROOT", str(tmp_path))
    built = []
    monkeypatch.setattr("torchvision.models.resnet.ResNet.__init__", lambda *a, **k: built.append(1))
    with pytest.raises(SystemExit) as info:
        quickstart.main(["--max-iter", "2", "--no-progress", *TINY, "DATASETS.TEST", f"('{val_subset}',)",
                         "MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.NUM_GROUPS", "3",
                         "MODEL.RESNETS.WIDTH_PER_GROUP", "5"])
    assert info.value.code == 2 and built == []
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("ERROR: MODEL.RESNETS.NORM 'GN' normalises in 32 groups, but NUM_GROUPS 3 x "
                          "WIDTH_PER_GROUP 5")
    assert "choose NUM_GROUPS x WIDTH_PER_GROUP a multiple of 32" in err
