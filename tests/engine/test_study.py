"""The study runner: the table's statistics, skipping and resuming runs, and one real tiny study."""
import json
import math
import os
import statistics

import pytest

from sfpn import study
from sfpn.study import RunConfig

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIGS = (RunConfig("fpn", study.SMALL_FPN), RunConfig("sfpn", study.SMALL_SFPN, ("neck.alpha=0.5",)))


def fake_launch(evaluations, calls):
    """A launcher that 'trains' by writing eval.json with the AP given for (config dir, seed)."""
    def launch(argv, directory, threads):
        calls.append(argv)
        seed = int(argv[argv.index("--seed") + 1])
        name = os.path.basename(os.path.dirname(directory))
        with open(os.path.join(directory, "eval.json"), "w") as f:
            json.dump(evaluations[name, seed], f)
        return 0
    return launch


def evaluation(ap, miou=None):
    result = {"bbox": {"AP": ap, "AP50": ap + 10}, "segm": None, "semantic": None}
    if miou is not None:
        result["semantic"] = {"image": {"mIoU": miou, "fgIoU": miou + 1}, "stride": {"mIoU": miou, "fgIoU": miou}}
    return result


def test_mean_std_match_statistics(generator):
    import torch

    values = torch.rand(5, generator=generator).mul(100).tolist()
    mean, std = study.mean_std(values)
    assert mean == pytest.approx(statistics.mean(values), rel=1e-12)
    assert std == pytest.approx(statistics.stdev(values), rel=1e-12)
    assert study.mean_std([3.0]) == (3.0, None)
    assert study.mean_std([]) == (None, None)


def _student_t_cdf(x: float, df: int, steps: int = 20000) -> float:
    """P(T <= x) for x >= 0: 1/2 plus Simpson's rule on the t density over [0, x]."""
    norm = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    density = lambda t: norm * (1 + t * t / df) ** (-(df + 1) / 2)  # noqa: E731
    h = x / steps
    total = density(0) + density(x) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
    return 0.5 + total * h / 3


@pytest.mark.parametrize("df", [1, 2, 3, 5, 10, 29, 30])
def test_t_quantiles_are_students(df):
    """The 95% interval's t quantiles, checked against the t distribution integrated here."""
    assert _student_t_cdf(study.T_975[df - 1], df) == pytest.approx(0.975, abs=2e-5)
    assert study.ci95_half_width(2.0, df + 1) == pytest.approx(study.T_975[df - 1] * 2.0 / math.sqrt(df + 1))
    assert study.ci95_half_width(None, 3) is None and study.ci95_half_width(1.0, 1) is None


def test_summary_pairs_differences_by_seed(generator):
    import torch

    base = torch.rand(3, generator=generator).mul(50).tolist()
    other = torch.rand(3, generator=generator).mul(50).tolist()
    values = {
        "fpn": {s: {"bbox AP": v} for s, v in zip((0, 1, 2), base)},
        # seed 2 missing and seed 5 without a baseline partner: the pairs are seeds 0 and 1 only
        "sfpn": {0: {"bbox AP": other[0]}, 1: {"bbox AP": other[1]}, 5: {"bbox AP": other[2]}},
    }
    table = study.summarise(values, "fpn")
    row = table["sfpn"]["bbox AP"]
    assert row["n"] == 3 and row["mean"] == pytest.approx(statistics.mean(other), rel=1e-12)
    diffs = [other[0] - base[0], other[1] - base[1]]
    assert row["diff_n"] == 2
    assert row["diff_mean"] == pytest.approx(statistics.mean(diffs), rel=1e-12)
    assert row["diff_std"] == pytest.approx(statistics.stdev(diffs), rel=1e-12)
    assert row["diff_ci95"] == pytest.approx(12.706 * statistics.stdev(diffs) / 2 ** 0.5, rel=1e-12)
    assert "diff_n" not in table["fpn"]["bbox AP"]  # the baseline has no difference with itself
    assert table["fpn"]["semantic mIoU"]["n"] == 0 and table["fpn"]["semantic mIoU"]["mean"] is None


def test_runs_are_skipped_once_finished_and_resumed_from_a_checkpoint(tmp_path):
    evaluations = {("fpn", s): evaluation(10.0 + s) for s in (0, 1)} | {("sfpn", s): evaluation(12.0 + 2 * s, 30.0 + s) for s in (0, 1)}
    calls = []
    launch = fake_launch(evaluations, calls)
    assert study.run_study(CONFIGS, [0, 1], str(tmp_path), launch=launch, log=lambda _: None) == []
    assert len(calls) == 4
    assert calls[1][:2] == ["--preset", study.SMALL_SFPN] and calls[1][-2:] == ["--set", "neck.alpha=0.5"]
    record = json.load(open(tmp_path / "sfpn" / "seed0" / "study_run.json"))
    assert {"args", "started", "load_start", "load_end", "wall_s", "returncode"} <= set(record)

    calls.clear()
    os.remove(tmp_path / "sfpn" / "seed1" / "eval.json")  # an interrupted run with a checkpoint
    (tmp_path / "sfpn" / "seed1" / "last_checkpoint").write_text("model_0000100.pth\n")
    study.run_study(CONFIGS, [0, 1], str(tmp_path), launch=launch, log=lambda _: None)
    assert len(calls) == 1 and calls[0][-1] == "--resume" and "seed1" in calls[0][calls[0].index("--output-dir") + 1]

    markdown = study.write_report(str(tmp_path), CONFIGS, [0, 1], "fpn")
    table = json.load(open(tmp_path / "study.json"))["table"]
    assert table["sfpn"]["bbox AP"]["diff_mean"] == pytest.approx(((12 - 10) + (14 - 11)) / 2)
    assert table["sfpn"]["semantic mIoU"]["mean"] == pytest.approx(30.5)
    assert "| sfpn |" in markdown and (tmp_path / "study.png").stat().st_size > 0
    with_unrun = study.write_report(str(tmp_path), CONFIGS + (RunConfig("sfpn_boxes", study.SMALL_SFPN, ("data.semantic=boxes",)),), [0, 1], "fpn")
    assert "| sfpn_boxes | not run |" in with_unrun


def test_a_failed_run_is_reported_and_retried(tmp_path):
    calls = []
    assert study.run_study(CONFIGS[:1], [0], str(tmp_path), launch=lambda argv, d, t: calls.append(argv) or 3, log=lambda _: None) == [str(tmp_path / "fpn" / "seed0")]
    assert json.load(open(tmp_path / "fpn" / "seed0" / "study_run.json"))["returncode"] == 3
    study.run_study(CONFIGS[:1], [0], str(tmp_path), launch=lambda argv, d, t: calls.append(argv) or 3, log=lambda _: None)
    assert len(calls) == 2


def test_jobs_run_every_pending_run_once_on_a_share_of_the_cores(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    evaluations = {(c.name, s): evaluation(10.0 + s) for c in CONFIGS for s in (0, 1, 2)}
    calls, threads_seen = [], set()
    record_evaluation = fake_launch(evaluations, calls)

    def launch(argv, directory, threads):
        threads_seen.add(threads)
        return record_evaluation(argv, directory, threads)

    assert study.run_study(CONFIGS, [0, 1, 2], str(tmp_path), launch=launch, log=lambda _: None, jobs=3) == []
    assert threads_seen == {2}  # 8 cores // 3 jobs
    assert sorted((a[1], a[a.index("--seed") + 1]) for a in calls) == sorted((c.preset, str(s)) for c in CONFIGS for s in (0, 1, 2))
    assert json.load(open(tmp_path / "fpn" / "seed2" / "study_run.json"))["threads"] == 2
    assert study.threads_per_job(1) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert study.threads_per_job(4) is None  # the user's setting wins
    with pytest.raises(ValueError, match="jobs"):
        study.run_study(CONFIGS, [0], str(tmp_path), launch=launch, jobs=0)


@pytest.mark.parametrize("spec, message", [("fpn", "NAME=PRESET"), ("a/b=x", "NAME=PRESET"), ("x=p alpha", "KEY=VALUE")])
def test_bad_config_specs_are_rejected(spec, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.parse(spec)


def test_cli_rejects_an_unknown_baseline(tmp_path):
    with pytest.raises(SystemExit, match="baseline"):
        study.main(["--config", "a=faster_rcnn_r18_fpn_small", "--baseline", "b", "--output", str(tmp_path), "--report-only"])


def test_a_real_two_iteration_study(tmp_path):
    from sfpn.data import ShapesSpec, synthetic_dataset

    splits = synthetic_dataset(ShapesSpec(seed=3, num_train=4, num_val=2), root=str(tmp_path / "data"), progress=False)
    data = ["--data-root", splits["train"].image_root, "--ann-file", splits["train"].ann_file,
            "--val-data-root", splits["val"].image_root, "--val-ann-file", splits["val"].ann_file]
    tiny = ["--iters=2", "--batch-size=2", "--set=data.min_size=64", "--set=data.max_size=96", "--set=data.test_min_size=64", "--set=data.num_workers=0"]
    argv = ["--config", "fpn=faster_rcnn_r18_fpn_small", "--config", "sfpn=faster_rcnn_r18_sfpn_small", "--seeds", "0",
            "--output", str(tmp_path / "study")] + [f"--train-arg={a}" for a in data + tiny]
    assert study.main(argv) == 0
    table = json.load(open(tmp_path / "study" / "study.json"))["table"]
    assert table["sfpn"]["semantic mIoU"]["n"] == 1 and table["fpn"]["semantic mIoU"]["n"] == 0
    assert table["sfpn"]["bbox AP"]["diff_n"] == 1


def test_the_dataset_registry_drives_train_and_study(tmp_path, monkeypatch, capsys):
    import dataclasses

    from sfpn import train
    from sfpn.data.synthetic import DATASETS, ShapesSpec

    @dataclasses.dataclass(frozen=True)
    class TinySpec(ShapesSpec):
        name = "tiny"
        num_train: int = 2
        num_val: int = 1

    monkeypatch.setitem(DATASETS, "tiny", TinySpec)
    monkeypatch.setenv("SFPN_CACHE", str(tmp_path))
    # An unknown name is refused by both, with the registry's names.
    for parse in (train.parse_args, lambda argv: study.parse_args(argv + ["--output", str(tmp_path)])):
        with pytest.raises(SystemExit):
            parse(["--dataset", "nope"])
        message = capsys.readouterr().err
        assert "nope" in message and all(name in message for name in DATASETS)
    # A registered name: the study generates it once and hands its name to sfpn.train, which finds it.
    assert study.parse_args(["--dataset", "tiny", "--output", str(tmp_path)]).dataset == "tiny"
    data_args = study.dataset_args("tiny", progress=False)
    assert data_args == ["--dataset", "tiny"] and study.dataset_args(None, progress=False) == []
    folder = tmp_path / TinySpec().folder_name()
    assert folder.name.startswith("tiny-") and (folder / "annotations" / "train.json").is_file()
    paths = train.resolve_data(train.parse_args(data_args + ["--no-progress"]))
    assert paths["train"] == (str(folder / "train"), str(folder / "annotations" / "train.json"))
    assert paths["val"] == (str(folder / "val"), str(folder / "annotations" / "val.json"))
    with pytest.raises(SystemExit, match="--dataset"):
        train.resolve_data(train.parse_args(["--dataset", "tiny", "--data-root", str(tmp_path)]))
