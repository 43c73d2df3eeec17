"""The command lines: config validation before any work, one precedence rule, helpful errors."""
import dataclasses
import importlib
import os
import re
import subprocess
import sys

import pytest

import sfpn
from sfpn import eval as sfpn_eval
from sfpn import train
from sfpn.config import PYRAMID_STRIDES, DetectorConfig, NeckConfig, preset_config
from sfpn.engine import build as engine_build
from sfpn.engine.build import all_keys, build_trainer, run_configs
from sfpn.engine.config import SolverConfig, TrainConfig, training_config
from sfpn.modeling.anchors import AnchorGenerator
from sfpn.modeling.backbone import RESNET_STAGES, ResNet
from sfpn.modeling.build import build
from sfpn.modeling.cascade import CascadeRoIHeads
from sfpn.modeling.matcher import Matcher
from sfpn.modeling.semantic_head import SemanticHead
from sfpn.overrides import set_key

modeling_build = importlib.import_module("sfpn.modeling.build")  # the package's `build` is the function
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def no_data(monkeypatch):
    """Any read of the data fails the test: every config error must come before it."""
    def touched(*args, **kwargs):
        raise AssertionError("the data was read before the configs were checked")

    monkeypatch.setattr(train, "resolve_data", touched)
    monkeypatch.setattr(engine_build, "build_datasets", touched)


def train_error(*argv: str) -> str:
    """The one error line ``python -m sfpn.train ARGV`` exits with (checked before any data is read)."""
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--data-root", "/nonexistent", "--ann-file", "a.json", "--val-ann-file", "b.json", *argv])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


@pytest.mark.parametrize(
    "argv, expected",
    [
        # each would divide by zero, train nothing and exit 0, or end in a traceback if let through
        (["--set", "checkpoint_every=0"], "'checkpoint_every' must be >= 1, got 0"),
        (["--set", "log_every=0"], "'log_every' must be >= 1, got 0"),
        (["--checkpoint-every", "0"], "'checkpoint_every' must be >= 1, got 0"),
        (["--iters", "0"], "'solver.max_iters' must be >= 1, got 0"),
        (["--iters", "-3"], "'solver.max_iters' must be >= 1, got -3"),
        (["--set", "solver.max_iters=-5"], "'solver.max_iters' must be >= 1, got -5"),
        (["--set", "solver.lr=-1"], "'solver.lr' must be > 0, got -1.0"),
        (["--set", "data.min_size=abc"], "'data.min_size' expects tuple of int, got 'abc'"),
        (["--set", "data.flip_prob=1.5"], "'data.flip_prob' must be in [0, 1], got 1.5"),
        (["--set", "solver.steps=(0.5, 2)"], "'solver.steps' must be in (0, 1], got (0.5, 2.0)"),
        (["--set", "data.semantic=polygons"], "'data.semantic' must be one of"),
        (["--set", "find_unused_parameters=1"], "'find_unused_parameters' expects bool, got '1'"),
        (["--set", "model.neck.alpha=high"], "'neck.alpha' expects float, got 'high'"),
        (["--set", "neck.alpha=-1"], "'neck.alpha' must be >= 0, got -1.0"),
        (["--set", "model.rpn.nms_threshold=1.5"], "'rpn.nms_threshold' must be in [0, 1], got 1.5"),
        (["--set", "cascade.box_coder_weights=((1, 1, 1, 0),)"], "'cascade.box_coder_weights' must be > 0"),
        (["--set", "num_classes=3"], "unknown config key 'num_classes'"),
        (["--set", "solver.lr"], "--set expects KEY=VALUE"),
        # strings are checked with the config, before the datasets are built
        (["--set", "neck.fusion_op=bogus"], "'neck.fusion_op' must be one of ('add', 'concat', 'gate'), got 'bogus'"),
        (["--set", "model.neck.downsample=area"], "'neck.downsample' must be one of ('bilinear', 'max_pool'), got 'area'"),
        (["--set", "neck.semantic_loss_average=mean"], "'neck.semantic_loss_average' must be one of ('pixels', 'foreground_background', 'median_frequency')"),
        (["--set", "neck.upsample_mode=bicubic"], "'neck.upsample_mode' must be one of ('nearest', 'bilinear'), got 'bicubic'"),
        (["--set", "backbone.norm=ln"], "'backbone.norm' must be one of ('frozen_bn', 'bn', 'gn'), got 'ln'"),
        (["--set", "backbone.depth=7"], "'backbone.depth' must be one of (18, 34, 50, 101), got 7"),
        (["--set", "backbone.freeze_at=6"], "'backbone.freeze_at' must be in [0, 5], got 6"),
        (["--set", "meta_architecture=retinanet"], "'meta_architecture' must be one of ('faster_rcnn', 'mask_rcnn', 'cascade_rcnn')"),
        (["--set", "solver.amp=bogus"], "'solver.amp' must be one of ('auto', 'bf16', 'fp16', 'off'), got 'bogus'"),
        (["--amp", "bogus"], "'solver.amp' must be one of ('auto', 'bf16', 'fp16', 'off'), got 'bogus'"),
        (["--set", "data.semantic=png"], "'data.semantic=png' needs data.semantic_dir"),
        (["--set", "neck.labels_from=masks"], "unknown config key 'neck.labels_from'"),
        (["--set", "data.min_size=()"], "config key 'data.min_size' needs at least one entry, got ()"),
        # issue 25: the panoptic merge's thresholds and its ground truth's paths
        (["--set", "panoptic.score_threshold=1.5"], "'panoptic.score_threshold' must be in [0, 1], got 1.5"),
        (["--set", "model.panoptic.overlap_threshold=-0.1"], "'panoptic.overlap_threshold' must be in [0, 1], got -0.1"),
        (["--set", "panoptic.stuff_min_area=-1"], "'panoptic.stuff_min_area' must be >= 0, got -1"),
        (["--set", "panoptic.stuff_min_area=0.5"], "'panoptic.stuff_min_area' expects int, got '0.5'"),
        (["--set", "data.panoptic_dir=pngs"], "config key 'data.panoptic_dir' needs data.panoptic_json"),
    ] + [
        # the rules between detector fields are checked with the config, before the datasets are
        # read
        (["--preset", "faster_rcnn_r50_sfpn_1x", "--set", "neck.semantic_channels=100"],
         "config key 'neck.semantic_channels' must be divisible by neck.num_groups (32), got 100"),
        (["--set", "neck.semantic_channels=100"], "config key 'neck.semantic_channels' must be divisible by neck.num_groups (16), got 100"),
        (["--set", "neck.num_groups=12"], "config key 'neck.semantic_channels' must be divisible by neck.num_groups (12), got 64"),
        (["--set", "rpn.anchor_sizes=(32, 64, 128, 256)"],
         "config key 'rpn.anchor_sizes' must have 5 entries, one anchor size per pyramid level P2..P6, got 4: (32.0, 64.0, 128.0, 256.0)"),
        (["--set", "rpn.aspect_ratios=()"], "config key 'rpn.aspect_ratios' needs at least one entry, got ()"),
        (["--set", "rpn.bg_iou_threshold=0.8"], "config key 'rpn.bg_iou_threshold' must be <= rpn.fg_iou_threshold (0.7), got 0.8"),
        (["--set", "rpn.fg_iou_threshold=0.2"], "config key 'rpn.bg_iou_threshold' must be <= rpn.fg_iou_threshold (0.2), got 0.3"),
        (["--preset", "cascade_rcnn_r18_sfpn_small", "--set", "cascade.stage_weights=(1, 0.5)"],
         "config keys 'cascade.iou_thresholds', 'cascade.stage_weights' and 'cascade.box_coder_weights' must have one entry per "
         "stage, got 3, 2 and 3 entries"),
        (["--set", "meta_architecture=cascade_rcnn", "--set", "cascade.iou_thresholds=(0.5, 0.6, 0.7, 0.8)"],
         "must have one entry per stage, got 4, 3 and 3 entries"),
        (["--preset", "cascade_rcnn_r18_sfpn_small", "--set", "cascade.iou_thresholds=()", "--set", "cascade.stage_weights=()",
          "--set", "cascade.box_coder_weights=()"], "config key 'cascade.iou_thresholds' needs at least one entry, got ()"),
        (["--set", "backbone.norm=gn", "--set", "backbone.width=48"],
         "config key 'backbone.width' with backbone.norm='gn' must make every channel count of the ResNet-18 below 32 or a "
         "multiple of 32 (its GroupNorm groups), got 48: channels (48, 96, 192, 384)"),
        (["--set", "backbone.norm=gn", "--set", "backbone.depth=50", "--set", "backbone.width=3"],
         "got 3: channels (3, 6, 12, 24, 48, 96)"),  # the bottlenecks' 4x wider outputs
        (["--set", "cpu_threads=sometimes"], "config key 'cpu_threads' must be one of ('adaptive', 'fixed'), got 'sometimes'"),
    ],
)
def test_bad_config_values_exit_with_one_line_naming_the_key(argv, expected):
    assert expected in train_error(*argv)


#: A config that breaks each rule between detector fields (dotted-key overrides of the preset
#: faster_rcnn_r18_sfpn_small, or of its cascade twin), the start of the error and the error of
#: the module that needs the rule, built with the same values as plain arguments.
FIELD_RULES = {
    "semantic channels divisible by groups": (
        {"neck.semantic_channels": 100}, "config key 'neck.semantic_channels' must be divisible by neck.num_groups (16)",
        lambda: SemanticHead([8] * 4, num_classes=4, channels=100, num_groups=16),
        "channels must be divisible by num_groups (16), got 100"),
    "one anchor size per level": (
        {"rpn.anchor_sizes": (32.0, 64.0)}, "config key 'rpn.anchor_sizes' must have 5 entries",
        lambda: AnchorGenerator((32.0, 64.0), (1.0,), PYRAMID_STRIDES),
        "sizes must have 5 entries, one per level of strides (4, 8, 16, 32, 64), got 2: (32.0, 64.0)"),
    "at least one aspect ratio": (
        {"rpn.aspect_ratios": ()}, "config key 'rpn.aspect_ratios' needs at least one entry",
        lambda: AnchorGenerator((32.0,), (), (4,)), "aspect_ratios needs at least one entry, got ()"),
    "background below foreground IoU": (
        {"rpn.bg_iou_threshold": 0.8}, "config key 'rpn.bg_iou_threshold' must be <= rpn.fg_iou_threshold (0.7)",
        lambda: Matcher(0.7, 0.8), "bg_threshold must be <= fg_threshold (0.7), got 0.8"),
    "cascade tuples of one length": (
        {"meta_architecture": "cascade_rcnn", "cascade.stage_weights": (1.0,)},
        "config keys 'cascade.iou_thresholds', 'cascade.stage_weights' and 'cascade.box_coder_weights' must have one entry",
        lambda: CascadeRoIHeads(8, 3, stage_weights=(1.0,)),
        "iou_thresholds, stage_weights and stage_box_coder_weights must have one entry per stage, got 3, 1 and 3 entries"),
    "at least one cascade stage": (
        {"meta_architecture": "cascade_rcnn", "cascade.iou_thresholds": (), "cascade.stage_weights": (),
         "cascade.box_coder_weights": ()}, "config key 'cascade.iou_thresholds' needs at least one entry",
        lambda: CascadeRoIHeads(8, 3, iou_thresholds=(), stage_weights=(), stage_box_coder_weights=()),
        "iou_thresholds needs at least one entry, got ()"),
    "GroupNorm backbone channels": (
        {"backbone.norm": "gn", "backbone.width": 40}, "config key 'backbone.width' with backbone.norm='gn' must make",
        lambda: ResNet(18, 40, "gn"),
        "width with norm='gn' must make every channel count of the ResNet-18 below 32 or a multiple of 32 (its GroupNorm "
        "groups), got 40: channels (40, 80, 160, 320)"),
}


@pytest.mark.parametrize("rule", FIELD_RULES)
def test_rules_between_detector_fields_are_refused_before_any_model_is_built(rule, monkeypatch):
    """The config check refuses what the model's modules would, naming the keys, through every
    entry point; the modules, made with plain arguments, refuse it with the same rule."""
    overrides, config_error, make_module, module_error = FIELD_RULES[rule]

    class Unbuilt:
        def __getattr__(self, name):
            raise AssertionError("a module was built before the config was checked")

    with monkeypatch.context() as patch:
        for module in ("ResNet", "SFPN", "RPN", "RoIHeads", "MaskRoIHeads", "CascadeRoIHeads"):
            patch.setattr(modeling_build, module, Unbuilt())
        with pytest.raises(ValueError, match="^" + re.escape(config_error)):
            sfpn.build_detector("faster_rcnn_r18_sfpn_small", 3, **overrides)
        detector = preset_config("faster_rcnn_r18_sfpn_small")
        for key, value in overrides.items():
            set_key(detector, key, value)
        with pytest.raises(ValueError, match="^" + re.escape(config_error)):
            build(detector)
        with pytest.raises(ValueError, match="^" + re.escape(config_error)):
            run_configs("faster_rcnn_r18_sfpn_small", list(overrides.items()))
        with pytest.raises(ValueError, match="^" + re.escape(config_error)):  # the no_data fixture fails a read
            build_trainer("faster_rcnn_r18_sfpn_small", {}, "/nonexistent", TrainConfig(), detector)
    with pytest.raises(ValueError, match="^" + re.escape(module_error) + "$"):
        make_module()


def test_rules_between_fields_hold_only_where_the_model_uses_the_fields():
    """A section the architecture does not build (the cascade's stages for Faster R-CNN, the
    semantic head of plain FPN) is not held to its rules: the model builds as it is."""
    overrides = [("cascade.stage_weights", (1.0,)), ("neck.semantic", False), ("neck.semantic_channels", 100)]
    _, detector = run_configs("faster_rcnn_r18_sfpn_small", overrides)
    model = build(dataclasses.replace(detector, num_classes=3))
    assert not model.neck.has_semantic_branch and model.config.cascade.stage_weights == (1.0,)


def test_unknown_keys_suggest_the_closest():
    assert "did you mean solver.lr " in train_error("--set", "solver.lrr=0.1")
    assert "did you mean model.neck.alpha" in train_error("--set", "model.neck.alfa=0.1")
    assert "--list-keys" in train_error("--set", "nothing_like_it=1")


def test_every_number_and_string_declares_its_allowed_values():
    free = {"data.semantic_dir", "data.panoptic_json", "data.panoptic_dir", "model.backbone.weights", "model.roi_heads.sampling_ratio"}  # paths; <= 0 means adaptive
    keys = all_keys(training_config("cascade_rcnn_r50_sfpn_1x"), preset_config("cascade_rcnn_r50_sfpn_1x"))
    for key, field in keys.items():
        if field.hint is not bool:
            assert (field.allowed is None) == (key in free), key
    # The modules check their arguments against the same declarations; the ResNet builds each depth.
    assert set(RESNET_STAGES) == set(keys["model.backbone.depth"].allowed)


def test_list_keys_shows_what_every_key_accepts(capsys):
    train.main(["--list-keys"])
    lines = dict(line.split("  ", 1) for line in capsys.readouterr().out.splitlines())
    keys = all_keys(training_config(train.DEFAULT_PRESET), preset_config(train.DEFAULT_PRESET))
    assert {line.split("=", 1)[0] for line in lines} == set(keys)
    assert lines["model.neck.fusion_op='add'"] == "(one of ('add', 'concat', 'gate'))"
    assert lines["solver.amp='auto'"] == "(one of ('auto', 'bf16', 'fp16', 'off'))"
    assert lines["data.semantic='png'"] == "(one of ('masks', 'boxes', 'png', 'none'))"  # the synthetic set's label maps
    assert lines["solver.steps=(0.75, 0.92)"] == "(tuple of float, each in (0, 1])"
    assert lines["model.roi_heads.box_coder_weights=(10.0, 10.0, 5.0, 5.0)"] == "(4-tuple of float, each > 0)"
    assert lines["checkpoint_every=250"] == "(>= 1)"
    assert lines["model.backbone.weights=None"] == "(str or None)"
    assert lines["model.neck.semantic=True"] == "(bool)"


def test_bad_configs_are_refused_before_any_data_through_the_api(tmp_path):
    """The same checks serve the Python entry points: run_configs, build_trainer with configs
    made by hand, build_detector and build."""
    with pytest.raises(ValueError, match=r"^config key 'neck.fusion_op' must be one of \('add', 'concat', 'gate'\), got 'bogus'$"):
        run_configs("faster_rcnn_r18_sfpn_small", [("neck.fusion_op", "bogus")])
    with pytest.raises(ValueError, match=r"^config key 'solver.amp' must be one of \('auto', 'bf16', 'fp16', 'off'\), got 'bogus'$"):
        run_configs("faster_rcnn_r18_sfpn_small", [("solver.amp", "bogus")])
    paths = {"train": ("/nonexistent", "a.json"), "val": ("/nonexistent", "b.json")}
    detector = preset_config("faster_rcnn_r18_sfpn_small")
    bad_train = TrainConfig(solver=SolverConfig(amp="bogus"))
    with pytest.raises(ValueError, match="'solver.amp' must be one of"):  # the no_data fixture fails a read
        build_trainer("faster_rcnn_r18_sfpn_small", paths, str(tmp_path), bad_train, detector)
    bad_detector = DetectorConfig(neck=NeckConfig(fusion_op="bogus"))
    with pytest.raises(ValueError, match="'neck.fusion_op' must be one of"):
        build_trainer("faster_rcnn_r18_sfpn_small", paths, str(tmp_path), TrainConfig(), bad_detector)
    with pytest.raises(ValueError, match=r"^config key 'neck.fusion_op' must be one of \('add', 'concat', 'gate'\)"):
        sfpn.build_detector("faster_rcnn_r18_sfpn_small", 3, **{"neck.fusion_op": "bogus"})
    with pytest.raises(ValueError, match="^config key 'neck.fusion_op' must be one of"):
        build(bad_detector)
    with pytest.raises(ValueError, match=r"^config key 'neck.alpha' expects float, got 'high'$"):
        build(DetectorConfig(neck=NeckConfig(alpha="high")))
    with pytest.raises(ValueError, match=r"^config key 'rpn.anchor_sizes' expects tuple of float, got \[16, 32\]$"):
        build(dataclasses.replace(detector, rpn=dataclasses.replace(detector.rpn, anchor_sizes=[16, 32])))


def test_flags_win_over_set_and_set_applies_in_order(capsys):
    train.main(["--set", "solver.lr=0.5", "--lr", "0.1", "--set", "data.min_size=300", "--set", "data.min_size=(200, 240)",
                "--set", "neck.alpha=0.3", "--list-keys"])
    keys = dict(line.split("  ")[0].split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert keys["solver.lr"] == "0.1" and keys["data.min_size"] == "(200, 240)"
    assert keys["model.neck.alpha"] == "0.3"  # the detector key without its model. prefix
    assert keys["eval_every"] == "250" and "model.num_classes" not in keys
    train_config, detector = run_configs("faster_rcnn_r18_sfpn_small", [("model.neck.alpha", "0.3"), ("solver.lr", 0.1)])
    assert detector.neck.alpha == 0.3 and train_config.solver.lr == 0.1


def test_the_data_sets_its_label_maps_before_set_and_the_flags(capsys, tmp_path, monkeypatch):
    from sfpn.data.synthetic import ClutterSpec, label_maps_dir

    def keys(*argv):
        train.main([*argv, "--list-keys"])
        return dict(line.split("  ")[0].split("=", 1) for line in capsys.readouterr().out.splitlines())

    monkeypatch.setenv("SFPN_CACHE", str(tmp_path / "cache"))
    # A synthetic dataset: things and stuff from its own label maps (nothing is generated to list keys).
    listed = keys("--dataset", "clutter", "--synthetic-seed", "2")
    assert listed["data.semantic"] == "'png'" and listed["data.semantic_dir"] == repr(label_maps_dir(ClutterSpec(seed=2)))
    assert not (tmp_path / "cache").exists()
    assert keys("--set", "data.semantic=boxes")["data.semantic"] == "'boxes'"  # --set wins over the data
    # A COCO root with COCO-stuff's label maps: things from COCO, stuff from COCO-stuff.
    (tmp_path / "coco" / "stuffthingmaps_trainval2017").mkdir(parents=True)
    listed = keys("--data-root", str(tmp_path / "coco"))
    assert listed["data.semantic"] == "'png'" and listed["data.coco_stuff"] == "True"
    assert listed["data.semantic_dir"] == repr(str(tmp_path / "coco" / "stuffthingmaps_trainval2017"))
    # Files given by path: the training config's own default (labels from the instance masks).
    listed = keys("--data-root", str(tmp_path / "coco"), "--ann-file", "a.json", "--val-ann-file", "b.json")
    assert listed["data.semantic"] == "'masks'" and listed["data.coco_stuff"] == "False"


def test_help_shows_defaults_and_how_to_list_keys(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--list-keys" in text and "a flag wins over --set" in text
    for flag in ("--preset", "--iters", "--lr", "--batch-size", "--eval-every", "--checkpoint-every", "--seed",
                 "--num-workers", "--amp", "--device", "--output-dir", "--synthetic-seed"):
        help_entry = text[text.index(f"\n  {flag}") + 1:].split("\n  -")[0]
        assert "default" in help_entry, flag
    defaults = training_config(train.DEFAULT_PRESET)
    assert f"sets solver.max_iters (default {defaults.solver.max_iters})" in " ".join(text.split())


def test_eval_of_a_missing_checkpoint_is_one_error_line(tmp_path):
    for path in ("/nonexistent", str(tmp_path)):
        with pytest.raises(SystemExit) as exit_info:
            sfpn_eval.main([path, "--device", "cpu"])
        message = str(exit_info.value.code)
        assert message.startswith("error: ") and "\n" not in message and path in message


def test_entry_points_exit_nonzero_with_one_line_not_a_traceback():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for argv in (["sfpn.train", "--iters", "0"], ["sfpn.eval", "/nonexistent"]):
        result = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, env=env, cwd=REPO)
        assert result.returncode != 0, argv
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr, result.stderr


def test_a_checkout_named_sfpn_in_the_working_directory_is_named(tmp_path):
    (tmp_path / "sfpn" / "sfpn").mkdir(parents=True)  # a checkout of this repository, named sfpn
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    probe = subprocess.run([sys.executable, "-c", "import sfpn; print(sfpn.__file__)"], capture_output=True, text=True,
                           env=env, cwd=tmp_path)
    if probe.stdout.strip() != "None":
        pytest.skip("this install of sfpn is not shadowed by a folder in the working directory (only editable installs are)")
    for entry in ("sfpn.train", "sfpn.eval"):
        result = subprocess.run([sys.executable, "-m", entry, "x"], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert result.returncode != 0
        assert result.stderr.strip() == (
            f"error: 'import sfpn' found the folder {tmp_path / 'sfpn'} (a checkout named sfpn?), which shadows the "
            "installed sfpn package; run from another folder, or rename that one"
        )
