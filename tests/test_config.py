import json
import os

import pytest

from ifr.config import ConfigError, RCNNFPNConfig

_OVERRIDES = dict(
    MODEL=dict(MASK_ON=True, RESNETS=dict(DEPTH=50), ROI_MASK_HEAD=dict(PRETRAINED_STEPS=1000, F_THRES=30)),
    SOLVER=dict(LR_SCHEDULER=dict(STEPS=(60000, 80000), MAX_ITER=90000), OPTIMIZER=dict(BASE_LR=0.02)),
)


class ExperimentConfig(RCNNFPNConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_OVERRIDES)


def test_defaults_and_registered_overrides():
    cfg = ExperimentConfig()
    assert cfg.MODEL.PIXEL_MEAN == [103.53, 116.28, 123.675]
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80 and cfg["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 80
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == "ROIAlignV2"
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN == 1000
    # Overrides merge recursively: siblings of an overridden key keep their defaults.
    assert cfg.SOLVER.OPTIMIZER.BASE_LR == 0.02 and cfg.SOLVER.OPTIMIZER.MOMENTUM == 0.9
    assert cfg.MODEL.ROI_MASK_HEAD.F_THRES == 30 and cfg.MODEL.ROI_MASK_HEAD.NUM_CONV == 4
    # Each instance is independent.
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    assert ExperimentConfig().MODEL.ROI_HEADS.NUM_CLASSES == 80


def test_merge_from_list_parses_literals_and_checks_types():
    cfg = ExperimentConfig()
    cfg.merge_from_list(["SOLVER.OPTIMIZER.BASE_LR", "0.01", "MODEL.ROI_MASK_HEAD.F_THRES", "30",
                         "SOLVER.LR_SCHEDULER.STEPS", "(1000, 2000)", "MODEL.WEIGHTS", "/x/model_final.pth",
                         "SOLVER.OPTIMIZER.MOMENTUM", "1", "MODEL.MASK_ON", "False",
                         "OUTPUT_DIR", "123"])
    assert cfg.SOLVER.OPTIMIZER.BASE_LR == 0.01
    assert cfg.MODEL.ROI_MASK_HEAD.F_THRES == 30
    assert cfg.SOLVER.LR_SCHEDULER.STEPS == (1000, 2000)
    assert cfg.MODEL.WEIGHTS == "/x/model_final.pth"
    assert cfg.SOLVER.OPTIMIZER.MOMENTUM == 1.0 and isinstance(cfg.SOLVER.OPTIMIZER.MOMENTUM, float)
    assert cfg.MODEL.MASK_ON is False
    assert cfg.OUTPUT_DIR == "123"


def test_merge_from_list_rejects_unknown_key_with_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'MODEL.ROI_HEADS.NUM_CLASS'.*"
                                          r"did you mean 'MODEL.ROI_HEADS.NUM_CLASSES'"):
        ExperimentConfig().merge_from_list(["MODEL.ROI_HEADS.NUM_CLASS", "3"])
    with pytest.raises(ConfigError, match="unknown config key 'MODEL.NOPE'"):
        ExperimentConfig().merge_from_list(["MODEL.NOPE", "1"])


@pytest.mark.parametrize("key, value", [
    ("MODEL.ROI_MASK_HEAD.F_THRES", "2.7"),      # no silent truncation to 2
    ("MODEL.RESNETS.DEPTH", "abc"),
    ("MODEL.MASK_ON", "0"),
    ("SOLVER.LR_SCHEDULER.STEPS", "5"),
])
def test_merge_from_list_rejects_wrongly_typed_value(key, value):
    with pytest.raises(ConfigError, match=f"config key {key}: expected a value of type"):
        ExperimentConfig().merge_from_list([key, value])


def test_merge_from_list_needs_pairs():
    with pytest.raises(ConfigError, match="pairs"):
        ExperimentConfig().merge_from_list(["MODEL.WEIGHTS"])


def test_diff_against_parent_and_dump(tmp_path):
    cfg = ExperimentConfig()
    diff = cfg.diff(cfg.base_defaults())
    assert diff.to_dict() == {
        "MODEL": {"MASK_ON": True, "RESNETS": {"DEPTH": 50},
                  "ROI_MASK_HEAD": {"PRETRAINED_STEPS": 1000, "F_THRES": 30}},
        "SOLVER": {"LR_SCHEDULER": {"STEPS": (60000, 80000), "MAX_ITER": 90000},
                   "OPTIMIZER": {"BASE_LR": 0.02}},
    }
    path = tmp_path / "out" / "config.json"
    cfg.dump(str(path))
    assert json.loads(path.read_text())["MODEL"]["ROI_MASK_HEAD"]["F_THRES"] == 30


def test_link_log(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = ExperimentConfig()
    cfg.OUTPUT_DIR = str(tmp_path / "runs" / "a")
    cfg.link_log()
    assert os.path.realpath("log") == str(tmp_path / "runs" / "a")
    cfg.OUTPUT_DIR = str(tmp_path / "runs" / "b")
    cfg.link_log()
    assert os.path.realpath("log") == str(tmp_path / "runs" / "b")


def test_registering_a_key_the_parent_lacks_is_refused_by_name():
    class Misspelled(RCNNFPNConfig):
        def __init__(self):
            super().__init__()
            self._register_configuration({"MODEL": {"ROI_MASK_HEAD": {"F_TOLL": 1e-3}}})

    with pytest.raises(ConfigError, match="unknown config key 'MODEL.ROI_MASK_HEAD.F_TOLL'.*did you mean "
                                          "'MODEL.ROI_MASK_HEAD.F_TOL'"):
        Misspelled()


def test_attribute_errors_suggest_keys():
    with pytest.raises(AttributeError, match="did you mean 'MASK_ON'"):
        ExperimentConfig().MODEL.MASK_ONN
