"""The command lines: config validation before any work, one precedence rule, helpful errors."""
import os
import subprocess
import sys

import pytest

from sfpn import eval as sfpn_eval
from sfpn import train
from sfpn.engine.build import run_configs
from sfpn.engine.config import RANGES, training_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        # issue 13, item 8: each used to divide by zero, train nothing and exit 0, or end in a traceback
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
    ],
)
def test_bad_config_values_exit_with_one_line_naming_the_key(argv, expected):
    assert expected in train_error(*argv)


def test_unknown_keys_suggest_the_closest():
    assert "did you mean solver.lr " in train_error("--set", "solver.lrr=0.1")
    assert "did you mean model.neck.alpha" in train_error("--set", "model.neck.alfa=0.1")
    assert "--list-keys" in train_error("--set", "nothing_like_it=1")


def test_every_numeric_field_has_a_range():
    from sfpn.config import DETECTOR_RANGES, config_keys, preset_config

    def numeric(config):
        return {k for k, v in config_keys(config).items() if isinstance(v, (int, float, tuple)) and not isinstance(v, bool)}

    assert numeric(training_config("faster_rcnn_r50_sfpn_1x")) == set(RANGES)
    unbounded = {"backbone.depth", "roi_heads.sampling_ratio"}  # a choice; <= 0 means adaptive
    assert numeric(preset_config("cascade_rcnn_r50_sfpn_1x")) == set(DETECTOR_RANGES) | unbounded


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
