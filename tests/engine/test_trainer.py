"""Training, evaluation, checkpoints and DDP, end to end on a tiny synthetic dataset (CPU)."""
import json
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from sfpn.data import ShapesSpec, synthetic_dataset
from sfpn.data.synthetic.shapes import CATEGORIES as SHAPES, STUFF_CATEGORIES as STUFF
from sfpn.engine.checkpoint import CheckpointError, check_model_config, config_to_dict, load_checkpoint
from sfpn.engine.build import build_trainer, run_configs
from sfpn import _threads
from sfpn.engine.precision import choose_precision
from sfpn.engine.trainer import WarmupMultiStep

PRESET = "faster_rcnn_r18_sfpn_small"
TINY = ["--set", "log_every=1", "--set", "data.min_size=64", "--set", "data.max_size=96", "--set", "data.test_min_size=64", "--set", "data.num_workers=0"]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny_splits(tmp_path_factory):
    return synthetic_dataset(ShapesSpec(seed=1, num_train=6, num_val=3), root=str(tmp_path_factory.mktemp("synthetic")), progress=False)


@pytest.fixture(scope="module")
def tiny_data(tiny_splits):
    return {name: (split.image_root, split.ann_file) for name, split in tiny_splits.items()}


def data_args(paths):
    return ["--data-root", paths["train"][0], "--ann-file", paths["train"][1], "--val-data-root", paths["val"][0], "--val-ann-file", paths["val"][1]]


def make_trainer(paths, output_dir, iters, num_workers=0, preset=PRESET, amp="auto", **model_overrides):
    overrides = [
        ("solver.max_iters", iters), ("solver.batch_size", 2), ("solver.warmup_iters", 2), ("data.min_size", (64,)),
        ("data.max_size", 96), ("data.test_min_size", 64), ("data.num_workers", num_workers),
        ("checkpoint_every", 1000), ("log_every", 1), ("eval_batch_size", 3), ("solver.amp", amp), *model_overrides.items(),
    ]
    train, detector = run_configs(preset, overrides)
    return build_trainer(preset, paths, str(output_dir), train, detector, progress=False)


def test_train_eval_demo_end_to_end(tiny_data, tmp_path, capsys):
    from sfpn import demo, eval as sfpn_eval, train

    output = tmp_path / "run"
    metrics = train.main(data_args(tiny_data) + TINY + ["--iters", "3", "--batch-size", "2", "--eval-every", "2", "--checkpoint-every", "2", "--output-dir", str(output), "--no-progress"])
    printed = capsys.readouterr().out
    assert "AP" in printed
    # The log's first line says what the run computes in, and why, and its thread policy.
    assert printed.splitlines()[0].endswith(f"; CPU threads 1, adaptive; precision {choose_precision('auto', 'cpu').describe()}")
    with open(output / "eval.json") as f:
        written = json.load(f)
    assert written == metrics
    assert set(written) == {"bbox", "segm", "semantic"}
    for where in ("image", "stride"):  # the semantic branch's own scores, at both resolutions
        assert set(written["semantic"][where]) == {"mIoU", "fgIoU", "IoU"}
        assert list(written["semantic"][where]["IoU"]) == ["background", *SHAPES]
    for iou_type in ("bbox", "segm"):  # SFPN's semantic map gives masks: segm is scored too
        assert set(written[iou_type]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert all(v is None or 0 <= v <= 100 for v in written[iou_type].values())
    records = [json.loads(line) for line in open(output / "metrics.jsonl")]
    assert [r["iter"] for r in records if r["type"] == "train"] == [1, 2, 3]
    assert [r["iter"] for r in records if r["type"] == "eval"] == [2, 3]
    assert {"loss", "loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_segm", "lr", "time"} <= set(records[0])
    assert (output / "plot.png").stat().st_size > 0
    assert open(output / "last_checkpoint").read().strip() == "model_final.pth"
    assert sorted(p for p in os.listdir(output) if p.endswith(".pth")) == ["model_0000002.pth", "model_final.pth"]
    state = load_checkpoint(str(output))
    assert state["iteration"] == 3 and state["meta"]["preset"] == PRESET

    evaluated = sfpn_eval.main([str(output), "--results", str(tmp_path / "results.json"), "--no-progress"])
    assert capsys.readouterr().out.splitlines()[0].endswith(f"; CPU threads 1, adaptive; precision {choose_precision('auto', 'cpu').describe()}")
    assert evaluated["bbox"] == metrics["bbox"]
    assert evaluated["semantic"] == metrics["semantic"]
    results = json.load(open(tmp_path / "results.json"))
    assert all({"image_id", "category_id", "bbox", "score", "segmentation"} <= set(r) for r in results)

    image = os.path.join(tiny_data["val"][0], sorted(os.listdir(tiny_data["val"][0]))[0])
    drawn = demo.main([image, str(output / "model_final.pth"), "--output", str(tmp_path / "demo.png"), "--score-threshold", "0"])
    assert os.path.getsize(drawn) > 0


def test_things_and_stuff_train_the_branch_and_are_scored(tiny_splits, tiny_data, tmp_path):
    from sfpn import eval as sfpn_eval

    label_maps = os.path.dirname(tiny_splits["train"].semantic_dir)  # one folder per split below it
    trainer = make_trainer(tiny_data, tmp_path, iters=1, **{"data.semantic": "png", "data.semantic_dir": label_maps})
    # The detector detects the things; its semantic branch segments things and stuff.
    assert trainer.model.config.num_classes == len(SHAPES) and trainer.model.config.num_stuff_classes == len(STUFF)
    assert trainer.model.neck.semantic_head.num_classes == 1 + len(SHAPES) + len(STUFF)
    metrics = trainer.train()
    for where in ("image", "stride"):
        assert list(metrics["semantic"][where]["IoU"]) == ["background", *SHAPES, *STUFF]
        assert any(metrics["semantic"][where]["IoU"][name] is not None for name in STUFF)
    # sfpn.eval finds the val split's label maps from the training config and scores them alike.
    evaluated = sfpn_eval.main([str(tmp_path), "--results", str(tmp_path / "results.json"), "--batch-size", "3", "--no-progress"])
    assert evaluated["semantic"] == metrics["semantic"] and evaluated["bbox"] == metrics["bbox"]


def test_resume_equals_uninterrupted_run(tiny_data, tmp_path):
    straight = make_trainer(tiny_data, tmp_path / "straight", iters=4)
    straight.train()

    interrupted = make_trainer(tiny_data, tmp_path / "resumed", iters=4)
    assert interrupted.train(max_iters=2) is None  # stops as a kill after the checkpoint would
    assert open(tmp_path / "resumed" / "last_checkpoint").read().strip() == "model_0000002.pth"
    del interrupted
    torch.manual_seed(12345)  # a fresh process's RNG: the checkpoint must restore it
    resumed = make_trainer(tiny_data, tmp_path / "resumed", iters=4, num_workers=1)
    resumed.resume(str(tmp_path / "resumed"))
    assert resumed.iteration == 2
    resumed.train()

    expected, actual = straight.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    for a, b in zip(straight.optimizer.state_dict()["state"].values(), resumed.optimizer.state_dict()["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    # The log has each iteration once, as if never interrupted.
    iters = [json.loads(line)["iter"] for line in open(tmp_path / "resumed" / "metrics.jsonl") if '"train"' in line]
    assert iters == [1, 2, 3, 4]


@pytest.mark.parametrize("preset", ["mask_rcnn_r18_sfpn_small", "cascade_rcnn_r18_fpn_small"])
def test_other_detectors_train_and_evaluate(tiny_data, tmp_path, preset):
    trainer = make_trainer(tiny_data, tmp_path, iters=1, preset=preset)
    metrics = trainer.train()
    # Mask R-CNN is scored on its own masks; a detector without masks or semantic map on boxes only.
    assert (metrics["segm"] is None) == preset.startswith("cascade")
    record = json.loads(open(tmp_path / "metrics.jsonl").readline())
    assert ("loss_mask" in record) == preset.startswith("mask_rcnn")


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_cpu_precision_trains_and_evaluates(tiny_data, tmp_path, amp):
    """fp32 and bf16 on the CPU, whatever auto would pick on this machine; channels_last in both."""
    trainer = make_trainer(tiny_data, tmp_path, iters=2, amp=amp)
    assert trainer.precision.dtype == (torch.float32 if amp == "off" else torch.bfloat16)
    weight = trainer.model.backbone.conv1.weight
    assert not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)
    metrics = trainer.train()
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if '"train"' in line]
    assert len(records) == 2 and all(math.isfinite(r["loss"]) for r in records)
    assert set(metrics) == {"bbox", "segm", "semantic"}


def test_cpu_threads_follow_the_free_cores_and_come_back(tiny_data, tmp_path, monkeypatch):
    """With another process on one of two cores (fake counters, a 1 s window per tick), the run
    moves to one thread after two windows, logs it, ticks through its evaluation too, and leaves
    the process at its own count."""
    import functools

    from sfpn._threads import CoreUsage, SharedCoreThreads

    now = [0.0]

    def clock():  # read once per step: each step takes a second
        now[0] += 1.0
        return now[0]

    def usage():  # both cores busy, this process on one of them
        return CoreUsage(2, busy_s=2 * now[0], ours_s=now[0])

    ticks = []

    class CountedTicks(SharedCoreThreads):
        def tick(self):
            ticks.append(self.threads)
            return super().tick()

    # fitted_cpu_threads builds the trainer's governor from its own module's name
    monkeypatch.setattr(_threads, "SharedCoreThreads", functools.partial(CountedTicks, interval_s=1.0, usage=usage, clock=clock))
    torch.set_num_threads(2)
    trainer = make_trainer(tiny_data, tmp_path / "adaptive", iters=4)
    trainer.train()
    records = [json.loads(line) for line in open(tmp_path / "adaptive" / "metrics.jsonl") if '"train"' in line]
    assert [r["cpu_threads"] for r in records] == [2, 1, 1, 1]
    assert ticks == [2, 2, 1, 1, 1]  # four iterations, then the final evaluation's one batch of 3 images
    assert trainer.shared_cores is None
    assert torch.get_num_threads() == 2
    fixed = make_trainer(tiny_data, tmp_path / "fixed", iters=2, cpu_threads="fixed")
    fixed.train()
    assert [json.loads(line)["cpu_threads"] for line in open(tmp_path / "fixed" / "metrics.jsonl") if '"train"' in line] == [2, 2]


def test_checkpoint_errors(tiny_data, tmp_path):
    trainer = make_trainer(tiny_data, tmp_path, iters=1)
    trainer.save("model_0000000.pth")
    other = make_trainer(tiny_data, tmp_path, iters=1, **{"neck.alpha": 0.5})
    with pytest.raises(CheckpointError, match=r"model_0000000\.pth was saved from another model config.*neck\.alpha: checkpoint 0\.2 vs model 0\.5"):
        other.resume(str(tmp_path))
    # A checkpoint from before a config field existed resumes: the field takes its default.
    state = load_checkpoint(str(tmp_path / "model_0000000.pth"))
    del state["meta"]["model_config"]["neck"]["semantic_loss_average"]
    check_model_config(state, config_to_dict(trainer.model.config))
    state["meta"]["model_config"]["neck"]["no_such_field"] = 1
    with pytest.raises(CheckpointError, match="neck.no_such_field: checkpoint 1 vs model '<absent>'"):
        check_model_config(state, config_to_dict(trainer.model.config))
    broken = tmp_path / "broken.pth"
    broken.write_bytes(open(tmp_path / "model_0000000.pth", "rb").read()[:1000])
    with pytest.raises(CheckpointError, match="broken.pth: not a readable sfpn checkpoint"):
        load_checkpoint(str(broken))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        load_checkpoint(str(tmp_path / "empty"))


@pytest.mark.parametrize("labels_from", ["auto", "semantic", "masks", "boxes"])
def test_a_checkpoint_with_the_retired_labels_from_loads_and_resumes(tmp_path, labels_from):
    """Checkpoints written before issue 26 store neck.labels_from in their model config: the key
    is dropped (the detector always takes a target's semantic map, else its masks, else its boxes,
    as the default "auto" did), so the model rebuilds and the run resumes."""
    import sfpn
    from sfpn.engine.checkpoint import model_from_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = sfpn.build_detector(PRESET, len(SHAPES))
    old_config = config_to_dict(model.config)
    old_config["neck"]["labels_from"] = labels_from
    path = str(tmp_path / "model_0000001.pth")
    save_checkpoint(path, {"model": model.state_dict(), "meta": {"preset": PRESET, "model_config": old_config}})
    loaded, meta = model_from_checkpoint(path)
    assert loaded.config == model.config and meta["model_config"] == old_config
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    check_model_config(load_checkpoint(path), config_to_dict(model.config))  # a resume accepts it


def test_warmup_multistep_schedule():
    schedule = WarmupMultiStep(warmup_iters=10, warmup_factor=0.001, milestones=[60, 80], gamma=0.1)
    assert schedule(0) == pytest.approx(0.001)
    assert schedule(5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert [schedule(i) for i in (10, 59, 60, 79, 80, 89)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, paths, output_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from sfpn.engine import distributed

    distributed.init_distributed("cpu")
    try:
        trainer = make_trainer(paths, output_dir, iters=2)
        assert trainer.ddp_model is not trainer.model  # wrapped in DDP
        trainer.train()
        torch.save(trainer.model.state_dict(), os.path.join(output_dir, f"weights_rank{rank}.pt"))
    finally:
        distributed.cleanup()


def test_ddp_two_processes_gloo(tiny_data, tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), tiny_data, str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "weights_rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "weights_rank1.pt", weights_only=True)
    for key in rank0:  # DDP keeps the replicas identical
        assert torch.equal(rank0[key], rank1[key]), key
    # Only rank 0 writes: every record once, every rank's RNG in the checkpoint.
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["iter"] for r in records] == [1, 2, 2]
    assert len(load_checkpoint(str(tmp_path))["rng"]) == 2
    assert json.load(open(tmp_path / "eval.json"))["bbox"] is not None


def test_optimizer_is_fused_sgd_without_decay_on_vectors():
    """The trainer's SGD runs fused, and takes the same step as PyTorch's for-loop SGD with the
    same groups: weight decay on the weights, none on biases and normalisation parameters."""
    from sfpn.engine.config import TrainConfig
    from sfpn.engine.optimizer import FusedSGD
    from sfpn.engine.trainer import build_optimizer

    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
    twin = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
    twin.load_state_dict(model.state_dict())
    config = TrainConfig()
    optimizer = build_optimizer(model, config)
    assert isinstance(optimizer, FusedSGD)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [config.solver.weight_decay, 0.0]
    assert [p.dim() > 1 for p in optimizer.param_groups[0]["params"]] == [True, True]
    decay = [p for p in twin.parameters() if p.dim() > 1]
    reference = torch.optim.SGD([{"params": decay, "weight_decay": config.solver.weight_decay},
                                 {"params": [p for p in twin.parameters() if p.dim() <= 1], "weight_decay": 0.0}],
                                lr=config.solver.lr, momentum=config.solver.momentum, foreach=False)
    for _ in range(3):
        for p, q in zip(model.parameters(), twin.parameters()):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        optimizer.step()
        reference.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
