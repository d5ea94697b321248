"""Multi-process training (DDP on gloo), exact resume, interrupted checkpoint writes, non-finite
losses, dying workers and unreadable images."""
import json
import os
import shutil

import pytest
import torch
import torch.distributed as dist

from ifr.engine import Checkpointer
from ifr.engine.launch import WorkerError, launch
from ifr.engine.train_loop import SimpleTrainer
from ifr.errors import TrainingDivergedError, UserError
from ifr.presets import small_model_overrides
from ifr.tools import quickstart, train_net
from ifr.tools.config_reference import config_leaves
from ifr.utils import comm

import fake_cuda
from helpers import FOLDERS, ROOT, TINY


# ---- data-parallel equivalence ----

def _regression_batches(steps: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(11)
    return [(torch.randn(batch, 6, generator=generator), torch.randn(batch, 2, generator=generator))
            for _ in range(steps)]


class _Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

    def forward(self, batch, iteration=None):
        x, y = batch
        return {"loss_mse": ((self.net(x) - y) ** 2).mean()}


def _train_regression(output: str, steps: int = 4, total_batch: int = 8) -> None:
    """SimpleTrainer on this process's share of every batch; rank 0 saves the weights."""
    rank, world = comm.get_rank(), comm.get_world_size()
    share = total_batch // world
    batches = [(x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share])
               for x, y in _regression_batches(steps, total_batch)]
    model = _Regression()
    trained = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    trainer = SimpleTrainer(trained, batches, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    trainer.train(0, steps)
    if comm.is_main_process():
        torch.save(model.state_dict(), output)


def test_two_process_ddp_equals_one_process_on_the_whole_batch(tmp_path, monkeypatch):
    monkeypatch.setenv(fake_cuda.REPORT_CUDA, "1")  # CPU processes on a machine with a GPU: gloo still
    launch(_train_regression, 2, args=(str(tmp_path / "ddp.pth"),), device="cpu")
    _train_regression(str(tmp_path / "single.pth"))
    ddp, single = torch.load(tmp_path / "ddp.pth"), torch.load(tmp_path / "single.pth")
    assert ddp.keys() == single.keys()
    for key in single:
        assert torch.allclose(ddp[key], single[key], atol=1e-6, rtol=1e-5), key
    assert not torch.equal(single["net.0.weight"], _Regression().state_dict()["net.0.weight"])  # it trained


def _fail_on_rank_1(kind: str) -> None:
    if comm.get_rank() == 1:
        if kind == "raise":
            raise UserError("rank 1 cannot continue")
        os._exit(3)
    dist.barrier()  # rank 0 waits for a peer that never comes


@pytest.mark.parametrize("kind,message", [("raise", "worker process 1 failed.*rank 1 cannot continue"),
                                          ("exit", "worker process 1 died")])
def test_a_failing_worker_ends_the_job_with_a_clear_error(kind, message):
    with pytest.raises(WorkerError, match=message):
        launch(_fail_on_rank_1, 2, args=(kind,), device="cpu")


def test_pods_train_with_two_processes_on_cpu(tmp_path, monkeypatch, val_subset, capfd):
    # The README's `--num-gpus 2 MODEL.DEVICE cpu` on a machine that has one GPU: the workers report it,
    # and still form a gloo group of CPU processes (NCCL would refuse CPU tensors, and one GPU is too few).
    monkeypatch.setenv(fake_cuda.REPORT_CUDA, "1")
    monkeypatch.setattr(train_net, "train_worker", fake_cuda.train_worker)
    folder = tmp_path / FOLDERS["ifr"]
    shutil.copytree(os.path.join(ROOT, FOLDERS["ifr"]), folder)
    monkeypatch.chdir(folder)
    output = tmp_path / "out"
    overrides = {**dict(zip(*[iter(quickstart_overrides())] * 2)), "MODEL.DEVICE": "cpu",
                 "SOLVER.IMS_PER_BATCH": "4", "SOLVER.IMS_PER_DEVICE": "2", "SOLVER.LR_SCHEDULER.MAX_ITER": "4",
                 "SOLVER.LR_SCHEDULER.STEPS": "(3,)", "SOLVER.CHECKPOINT_PERIOD": "2",
                 "MODEL.ROI_MASK_HEAD.PRETRAINED_STEPS": "2", "OUTPUT_DIR": str(output),
                 # spawned workers know the built-in datasets only (not the test's registered subset)
                 "DATASETS.TEST": "('synthetic_shapes_val',)", "TEST.DETECTIONS_PER_IMAGE": "5"}
    train_net.main(["--num-gpus", "2", *[x for kv in overrides.items() for x in kv]])
    metrics = [json.loads(line) for line in open(output / "metrics.json")]
    assert [m["iteration"] for m in metrics if "total_loss" in m] == [0, 1, 2, 3]
    assert os.path.isfile(output / "model_0000002.pth") and os.path.isfile(output / "model_final.pth")
    assert "log.txt" in os.listdir(output) and not any(f.startswith("log.txt.rank") for f in os.listdir(output))
    results = json.load(open(output / "inference" / "coco_eval_results.json"))
    assert set(results) == {"bbox", "segm"}
    # the mask head's weights share its channels_last layout, so DDP's gradient buckets fit them
    assert "Grad strides do not match bucket view strides" not in capfd.readouterr().err


def quickstart_overrides() -> list[str]:
    """The quickstart's small model as KEY VALUE pairs, made seconds-sized with TINY."""
    preset = small_model_overrides(max_iter=4, num_workers=0)
    return [x for key, value in config_leaves(preset) for x in (key, repr(value))] + TINY


# ---- exact resume, interrupted saves, non-finite losses ----

def _quickstart(output_root, monkeypatch, max_iter, *extra, resume=False):
    monkeypatch.setenv("IFR_OUTPUT_ROOT", str(output_root))
    quickstart.main(["--max-iter", str(max_iter), "--no-progress", *(["--resume"] if resume else []), *TINY,
                     "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "2", *extra])
    return os.path.join(str(output_root), "quickstart")


# Multi-scale training (two short edges drawn per image) and flips, as the folders and the quickstart train.
TWO_SCALES = ["INPUT.AUG.TRAIN_PIPELINES", "[('ResizeShortestEdge', {'short_edge_length': (56, 64), 'max_size': 128, "
                                           "'sample_style': 'choice'}), ('RandomFlip', {})]"]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, monkeypatch, val_subset):
    """N + resume + N iterations == 2N, bit for bit, with two training scales and 2 loader workers."""
    steps = 6  # the last 2 iterations implicit (PRETRAINED_STEPS = 80%)
    run = ("SOLVER.CHECKPOINT_PERIOD", "3", *TWO_SCALES)
    straight = _quickstart(tmp_path / "straight", monkeypatch, steps, *run)
    interrupted = _quickstart(tmp_path / "interrupted", monkeypatch, steps, *run)
    # as if killed after iteration 3: the final checkpoint never happened
    os.remove(os.path.join(interrupted, "model_final.pth"))
    with open(os.path.join(interrupted, "last_checkpoint"), "w") as f:
        f.write("model_0000003.pth")
    _quickstart(tmp_path / "interrupted", monkeypatch, steps, *run, resume=True)
    a = torch.load(os.path.join(straight, "model_final.pth"))
    b = torch.load(os.path.join(interrupted, "model_final.pth"))
    assert a["iteration"] == b["iteration"] == steps - 1
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_a_checkpoint_write_interrupted_midway_leaves_the_previous_one(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    checkpointer = Checkpointer(model, str(tmp_path))
    checkpointer.save("model_0000001", iteration=0)
    real_save = torch.save

    def dies_halfway(data, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 truncated")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000002", iteration=1)
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpointer.last_checkpoint() == str(tmp_path / "model_0000001.pth")
    assert not (tmp_path / "model_0000002.pth").exists()
    fresh = torch.nn.Linear(3, 2)
    extra = Checkpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 0 and not torch.equal(fresh.weight, model.weight)


def test_non_finite_loss_stops_with_the_iteration_and_terms_keeping_the_last_checkpoint(tmp_path, monkeypatch,
                                                                                        val_subset, capsys):
    from ifr.modeling.meta_arch import GeneralizedRCNN

    forward = GeneralizedRCNN.forward

    def nan_at_4(self, batched_inputs, iteration=None):
        losses = forward(self, batched_inputs, iteration=iteration)
        if iteration == 4:
            losses["loss_mask"] = losses["loss_mask"] * float("nan")
        return losses

    monkeypatch.setattr(GeneralizedRCNN, "forward", nan_at_4)
    with pytest.raises(SystemExit) as info:
        _quickstart(tmp_path, monkeypatch, 8, "SOLVER.CHECKPOINT_PERIOD", "2", "DATALOADER.NUM_WORKERS", "0")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "non-finite at iteration 4" in err and "loss_mask=nan" in err and "Traceback" not in err
    out = os.path.join(str(tmp_path), "quickstart")
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000004.pth"
    checkpoint = torch.load(os.path.join(out, "model_0000004.pth"))
    assert checkpoint["iteration"] == 3
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def test_non_finite_loss_message_names_iteration_and_terms():
    class Exploding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, batch, iteration=None):
            return {"loss_a": self.w.sum(), "loss_b": self.w.sum() * (float("inf") if iteration == 2 else 1.0)}

    model = Exploding()
    trainer = SimpleTrainer(model, [None] * 5, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TrainingDivergedError, match=r"iteration 2: loss_a=.*, loss_b=inf.*lower SOLVER.OPTIMIZER.BASE_LR"):
        trainer.train(0, 5)


# ---- mixed precision ----

def test_mixed_precision_training_keeps_the_solve_in_float32(tmp_path, monkeypatch, val_subset):
    out = _quickstart(tmp_path, monkeypatch, 5, "TRAINER.FP16.ENABLED", "True", "DATALOADER.NUM_WORKERS", "0")
    metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    assert len(losses) == 5 and all(torch.isfinite(torch.tensor(losses)))
    assert "deq/mask_head.refinement/forward_rel_residual" in metrics[-1]
    assert metrics[-1]["deq/mask_head.refinement/forward_rel_residual"] < 1e-2


# ---- bad input ----

def test_unreadable_images_stop_with_the_file_name_or_are_skipped_and_counted(tmp_path, caplog):
    from ifr.data.build import MapDataset
    from ifr.data.mapper import DatasetMapper, ImageReadError
    from PIL import Image

    Image.new("RGB", (20, 10), "red").save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    records = [{"file_name": str(tmp_path / name), "height": 10, "width": 20, "image_id": i, "annotations": []}
               for i, name in enumerate(["broken.png", "missing.png", "good.png"])]
    mapper = DatasetMapper([], "BGR", is_train=False)
    with pytest.raises(ImageReadError, match="broken.png cannot be decoded.*SKIP_CORRUPT_IMAGES"):
        MapDataset(records, mapper)[0]
    skipping = MapDataset(records, mapper, skip_unreadable=True)
    with caplog.at_level("WARNING", logger="ifr.data.build"):
        out = skipping[(0, 5)]
    assert out["image_id"] == 2 and skipping.skipped == 2
    assert "broken.png (1 images skipped" in caplog.text and "missing.png (2 images skipped" in caplog.text


def test_an_empty_training_set_after_filtering_is_a_clear_error(tmp_path):
    from ifr.data import register_coco_instances
    from ifr.data.build import load_train_records

    (tmp_path / "images").mkdir()
    (tmp_path / "a.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "x.png", "height": 5, "width": 5}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 3], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}]}))
    register_coco_instances("only_degenerate_boxes", str(tmp_path / "a.json"), str(tmp_path / "images"))
    with pytest.raises(UserError, match=r"no training images with annotations in \['only_degenerate_boxes'\]"):
        load_train_records(["only_degenerate_boxes"], filter_empty=True)


class _Expanding(torch.nn.Module):
    """f(z, x) = 3 z + x: plain iteration moves away from the fixed point -x / 2."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(3.0))

    def forward(self, z, x):
        return self.scale * z + x


def test_diverged_solves_fall_back_and_are_counted_in_the_metrics():
    from ifr.deq import EquilibriumRefinement, SolverConfig
    from ifr.engine.events import EventStorage
    from ifr.engine.hooks import EquilibriumStatsHook

    # stop_mode "rel" as in the IFR head: the relative residual of a runaway iterate stays bounded, so
    # divergence is judged (and the best iterate chosen) on the absolute residual
    layer = EquilibriumRefinement(_Expanding(), mode="implicit",
                                  solver=SolverConfig("fixed_point", max_iter=8, tol=1e-9, stop_mode="rel",
                                                      options={"divergence_ratio": 10}))
    holder = torch.nn.Module()
    holder.mask_head = layer
    hook = EquilibriumStatsHook(holder)
    hook.trainer = type("Trainer", (), {"storage": EventStorage(), "iter": 0, "max_iter": 10})()
    x = torch.randn(3, 2, 4, 4)
    with torch.no_grad():
        out = layer(x)
    hook.after_step()
    assert torch.equal(out, torch.zeros_like(x))  # the lowest-residual iterate: the start, z = 0
    assert hook.trainer.storage.latest("deq/mask_head/forward_diverged") == 3.0
    assert hook.trainer.storage.latest("deq/mask_head/forward_unconverged") == 3.0
