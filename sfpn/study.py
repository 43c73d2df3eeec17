"""Seeded studies of detector configurations: ``python -m sfpn.study``.

Trains every configuration of a study over several seeds with ``python -m sfpn.train`` (one
subprocess per run, so a crash or a kill loses one run only), then writes a table and a plot::

    python -m sfpn.study --study main --seeds 0 1 2 --output output-study/shapes
    python -m sfpn.study --study main --dataset clutter --output output-study/clutter
    python -m sfpn.study --config "fpn=faster_rcnn_r18_fpn_small" \\
        --config "sfpn_a05=faster_rcnn_r18_sfpn_small neck.alpha=0.5" --baseline fpn --output out/

Each run lives in ``<output>/<config>/seed<k>/``. A run whose ``eval.json`` exists is finished
and skipped; one with a checkpoint but no ``eval.json`` is resumed (``--resume``); so the same
command continues an interrupted study. Every run records the command, its thread count, its
wall time and the machine's load average at its start and end in ``study_run.json``.

``--jobs N`` trains N runs at a time, each with an equal share of the cores
(``OMP_NUM_THREADS = cores // N``): on a small CPU, two one-thread runs finish sooner than two
two-thread runs one after the other, because a training step's parallel regions scale poorly
past one core. The runs still start in seed-major order.

The table (``study.md``, ``study.json``) gives per configuration and metric the mean, the sample
standard deviation and the number of seeds, and against the baseline the paired difference: the
mean over the seeds both have of (config - baseline) on the same seed, with its standard
deviation and the half-width of its 95% confidence interval (Student's t with n - 1 degrees of
freedom: ``t * std / sqrt(n)``). ``study.png`` shows every seed's value and the mean of each
configuration.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

#: Metrics the table reports: (name, path in eval.json).
METRICS = (
    ("bbox AP", ("bbox", "AP")),
    ("bbox AP50", ("bbox", "AP50")),
    ("segm AP", ("segm", "AP")),
    ("semantic mIoU", ("semantic", "image", "mIoU")),
    ("semantic fgIoU", ("semantic", "image", "fgIoU")),
    ("PQ", ("panoptic", "PQ")),
    ("PQ_th", ("panoptic", "PQ_th")),
    ("PQ_st", ("panoptic", "PQ_st")),
)
#: Metrics whose paired difference against the baseline the markdown table shows.
DIFFERENCE_METRICS = ("bbox AP", "PQ")
#: Two-sided 95% quantiles of Student's t, by degrees of freedom (1..30; the normal's beyond).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
SMALL_FPN = "faster_rcnn_r18_fpn_small"
SMALL_SFPN = "faster_rcnn_r18_sfpn_small"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One configuration: a name, a detector preset and ``--set KEY=VALUE`` overrides."""

    name: str
    preset: str
    overrides: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> "RunConfig":
        """``"name=preset key=value ..."`` -> RunConfig."""
        head, *overrides = spec.split()
        name, sep, preset = head.partition("=")
        if not sep or not name or not preset or "/" in name:
            raise ValueError(f"--config expects 'NAME=PRESET [KEY=VALUE ...]' (NAME without '/'), got {spec!r}")
        for override in overrides:
            if "=" not in override:
                raise ValueError(f"--config {name}: overrides are KEY=VALUE, got {override!r}")
        return cls(name, preset, tuple(overrides))


#: The built-in studies. "main": is the gain from the semantic supervision (alpha=0 keeps the
#: branch's layers but trains no labels) and does it survive labels from boxes only. "loss": the
#: semantic CE's averages other than the paper's pixel mean. "panoptic": Panoptic FPN's layout,
#: the branch trained on the FPN outputs and not fused back, the baseline of the panoptic
#: comparison. "axes": the paper's design axes, one change from the default SFPN each.
STUDIES: dict[str, tuple[RunConfig, ...]] = {
    "main": (
        RunConfig("fpn", SMALL_FPN),
        RunConfig("sfpn", SMALL_SFPN),
        RunConfig("sfpn_alpha0", SMALL_SFPN, ("neck.alpha=0",)),
        RunConfig("sfpn_boxes", SMALL_SFPN, ("data.semantic=boxes",)),
    ),
    "loss": (
        RunConfig("sfpn_fgbg", SMALL_SFPN, ("neck.semantic_loss_average=foreground_background",)),
        RunConfig("sfpn_medfreq", SMALL_SFPN, ("neck.semantic_loss_average=median_frequency",)),
    ),
    "panoptic": (RunConfig("panoptic_fpn", SMALL_SFPN, ("neck.fusion_point=none",)),),
    "axes": (
        RunConfig("fusion_after", SMALL_SFPN, ("neck.fusion_point=after",)),
        RunConfig("fusion_concat", SMALL_SFPN, ("neck.fusion_op=concat",)),
        RunConfig("fusion_gate", SMALL_SFPN, ("neck.fusion_op=gate",)),
        RunConfig("downsample_maxpool", SMALL_SFPN, ("neck.downsample=max_pool",)),
        RunConfig("head_4convs", SMALL_SFPN, ("neck.semantic_convs=4",)),
        RunConfig("head_128ch", SMALL_SFPN, ("neck.semantic_channels=128",)),
        *(RunConfig(f"alpha{a}", SMALL_SFPN, (f"neck.alpha={a}",)) for a in (0.1, 0.5, 1.0)),
    ),
}


def run_dir(output: str, config: RunConfig, seed: int) -> str:
    return os.path.join(output, config.name, f"seed{seed}")


def is_finished(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, "eval.json"))


def has_checkpoint(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, "last_checkpoint"))


def train_argv(config: RunConfig, seed: int, directory: str, data_args: Sequence[str], train_args: Sequence[str]) -> list[str]:
    """The ``python -m sfpn.train`` arguments of one run (``--resume`` when it has a checkpoint)."""
    argv = ["--preset", config.preset, "--seed", str(seed), "--output-dir", directory, "--no-progress", *data_args, *train_args]
    for override in config.overrides:
        argv += ["--set", override]
    if has_checkpoint(directory):
        argv.append("--resume")
    return argv


def launch_subprocess(argv: list[str], directory: str, threads: int | None = None) -> int:
    """Runs ``python -m sfpn.train argv`` with its output in ``directory/train.log``, on
    ``threads`` OpenMP threads (None: torch's default)."""
    with open(os.path.join(directory, "train.log"), "a") as log:
        return subprocess.call([sys.executable, "-m", "sfpn.train", *argv], stdout=log, stderr=subprocess.STDOUT,
                               env=job_environment(threads))


def job_environment(threads: int | None) -> dict[str, str]:
    """This process's environment for a job on ``threads`` OpenMP threads (None: as it is, so
    torch's default or the user's ``OMP_NUM_THREADS``; see :func:`threads_per_job`)."""
    return dict(os.environ) if threads is None else dict(os.environ, OMP_NUM_THREADS=str(threads))


def threads_per_job(jobs: int) -> int | None:
    """Each of ``jobs`` concurrent runs gets an equal share of the cores; None (torch's default)
    for one job, or when the user fixed ``OMP_NUM_THREADS``."""
    if jobs == 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, (os.cpu_count() or 1) // jobs)


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def run_study(
    configs: Sequence[RunConfig],
    seeds: Sequence[int],
    output: str,
    data_args: Sequence[str] = (),
    train_args: Sequence[str] = (),
    launch: Callable[[list[str], str, int | None], int] = launch_subprocess,
    log: Callable[[str], None] = print,
    jobs: int = 1,
) -> list[str]:
    """Trains every (config, seed) not finished yet, ``jobs`` at a time, started seed-major (so
    that an interrupted study has whole seeds of every configuration). Returns the run folders
    that failed."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    threads = threads_per_job(jobs)
    pending = []
    for seed in seeds:
        for config in configs:
            directory = run_dir(output, config, seed)
            if is_finished(directory):
                log(f"{config.name} seed {seed}: finished, skipped")
            else:
                pending.append((config, seed, directory))

    def train(config: RunConfig, seed: int, directory: str) -> bool:
        os.makedirs(directory, exist_ok=True)
        argv = train_argv(config, seed, directory, data_args, train_args)
        log(f"{config.name} seed {seed}: python -m sfpn.train {shlex.join(argv)}")
        record = {"args": argv, "jobs": jobs, "threads": threads or os.environ.get("OMP_NUM_THREADS"),  # None: torch's default
                  "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "load_start": _load()}
        start = time.monotonic()
        returncode = launch(argv, directory, threads)
        record.update(load_end=_load(), wall_s=round(time.monotonic() - start), returncode=returncode)
        with open(os.path.join(directory, "study_run.json"), "w") as f:
            json.dump(record, f, indent=1)
        if returncode != 0 or not is_finished(directory):
            log(f"{config.name} seed {seed}: FAILED (exit code {returncode}; see {directory}/train.log)")
            return False
        return True

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        succeeded = list(pool.map(lambda run: train(*run), pending))
    return [directory for (_, _, directory), ok in zip(pending, succeeded) if not ok]


# ------------------------------------------------------------------------------------------ table


def _metric(evaluation: dict, path: tuple[str, ...]) -> float | None:
    node = evaluation
    for key in path:
        if not isinstance(node, dict) or node.get(key) is None:
            return None
        node = node[key]
    return float(node)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); None where undefined (no value; one value)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def ci95_half_width(std: float | None, n: int) -> float | None:
    """Half-width of the 95% confidence interval of a mean of ``n`` values of sample std ``std``
    (Student's t); None below two values."""
    if std is None or n < 2:
        return None
    return (T_975[n - 2] if n - 1 <= len(T_975) else 1.960) * std / math.sqrt(n)


def summarise(values: dict[str, dict[int, dict[str, float | None]]], baseline: str | None) -> dict:
    """The table from ``values[config][seed][metric]``.

    Returns ``{config: {metric: {"mean", "std", "n", "seeds": {seed: value}, "diff_mean",
    "diff_std", "diff_n", "diff_ci95"}}}``; the paired difference is over the seeds both the
    config and the baseline have a value for (absent for the baseline itself and without a
    baseline); ``diff_ci95`` is its 95% interval's half-width.
    """
    table = {}
    for config, by_seed in values.items():
        table[config] = {}
        for metric, _ in METRICS:
            seeds = {seed: m[metric] for seed, m in sorted(by_seed.items()) if m.get(metric) is not None}
            mean, std = mean_std(list(seeds.values()))
            row = {"mean": mean, "std": std, "n": len(seeds), "seeds": seeds}
            if baseline is not None and config != baseline and baseline in values:
                base = values[baseline]
                diffs = [v - base[s][metric] for s, v in seeds.items() if s in base and base[s].get(metric) is not None]
                row["diff_mean"], row["diff_std"] = mean_std(diffs)
                row["diff_n"] = len(diffs)
                row["diff_ci95"] = ci95_half_width(row["diff_std"], len(diffs))
            table[config][metric] = row
    return table


def collect(output: str, configs: Sequence[RunConfig], seeds: Sequence[int]) -> tuple[dict, dict]:
    """(``values[config][seed][metric]`` of the finished runs, their ``study_run.json`` records)."""
    values, runs = {}, {}
    for config in configs:
        for seed in seeds:
            directory = run_dir(output, config, seed)
            if not is_finished(directory):
                continue
            with open(os.path.join(directory, "eval.json")) as f:
                evaluation = json.load(f)
            values.setdefault(config.name, {})[seed] = {name: _metric(evaluation, path) for name, path in METRICS}
            record_file = os.path.join(directory, "study_run.json")
            if os.path.isfile(record_file):
                with open(record_file) as f:
                    runs.setdefault(config.name, {})[seed] = json.load(f)
    return values, runs


def _cell(mean, std, digits: int = 1) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_table(table: dict, baseline: str | None, runs: dict | None = None) -> str:
    """Markdown: one row per configuration, mean ± std (n) per metric, then the paired
    difference against the baseline of each of :data:`DIFFERENCE_METRICS` reported, as mean
    ± 95% half-width (pairs)."""
    metrics = [name for name, _ in METRICS if any(table[c][name]["n"] for c in table)]
    compared = [m for m in DIFFERENCE_METRICS if m in metrics] if baseline else []
    header = ["config", *[f"{m} (n)" for m in metrics], *[f"Δ {m} vs {baseline}, 95% (pairs)" for m in compared]]
    header.append("load at start → end")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for config, rows in table.items():
        if not any(row["n"] for row in rows.values()):
            lines.append("| " + " | ".join([config, *["not run"] * (len(header) - 1)]) + " |")
            continue
        cells = [config, *[f"{_cell(rows[m]['mean'], rows[m]['std'])} ({rows[m]['n']})" for m in metrics]]
        for metric in compared:
            row = rows[metric]
            cells.append(f"{_cell(row.get('diff_mean'), row.get('diff_ci95'), 2)} ({row['diff_n']})" if "diff_n" in row else "baseline")
        loads = [f"{r['load_start'].split()[0]} → {r['load_end'].split()[0]}" for _, r in sorted((runs or {}).get(config, {}).items())]
        cells.append("; ".join(loads) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_table(table: dict, output_png: str) -> None:
    """One panel per reported metric: each seed's value (dots) and the mean (bar) per config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [name for name, _ in METRICS if any(table[c][name]["n"] for c in table)]
    figure, axes = plt.subplots(1, max(1, len(metrics)), figsize=(3.2 * max(1, len(metrics)) + 1, 4), squeeze=False)
    configs = [c for c in table if any(row["n"] for row in table[c].values())]
    for axis, metric in zip(axes[0], metrics):
        means = [table[c][metric]["mean"] or 0.0 for c in configs]
        axis.bar(range(len(configs)), means, color="#cfd8e3")
        for x, config in enumerate(configs):
            seeds = table[config][metric]["seeds"]
            axis.plot([x] * len(seeds), list(seeds.values()), "o", color="#1f4e79", markersize=4)
        axis.set_xticks(range(len(configs)), configs, rotation=45, ha="right", fontsize=8)
        axis.set_title(metric)
        axis.grid(True, axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(output_png, dpi=100)
    plt.close(figure)


def write_report(output: str, configs: Sequence[RunConfig], seeds: Sequence[int], baseline: str | None) -> str:
    """Writes study.json, study.md and study.png under ``output``; returns the markdown table."""
    values, runs = collect(output, configs, seeds)
    # In the given order; configurations without a finished run stay in the table, as not run.
    values = {config.name: values.get(config.name, {}) for config in configs}
    table = summarise(values, baseline)
    markdown = format_table(table, baseline, runs)
    with open(os.path.join(output, "study.json"), "w") as f:
        json.dump({"baseline": baseline, "configs": [dataclasses.asdict(c) for c in configs], "seeds": list(seeds), "table": table, "runs": runs}, f, indent=1)
    with open(os.path.join(output, "study.md"), "w") as f:
        f.write(markdown + "\n")
    if any(values.values()):
        plot_table(table, os.path.join(output, "study.png"))
    return markdown


# -------------------------------------------------------------------------------------------- CLI


def dataset_args(name: str | None, progress: bool) -> list[str]:
    """``sfpn.train`` data arguments of the synthetic dataset ``name`` (a key of
    ``sfpn.data.synthetic.DATASETS``), generated here once so that the runs find it cached; none
    for None (``sfpn.train``'s own default, or data given with ``--train-arg``)."""
    if name is None:
        return []
    from .data.synthetic import DATASETS, synthetic_dataset

    synthetic_dataset(DATASETS[name](), progress=progress)
    return ["--dataset", name]


def parse_args(argv=None) -> argparse.Namespace:
    from .data.synthetic import DATASETS

    parser = argparse.ArgumentParser(prog="python -m sfpn.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", choices=sorted(STUDIES), action="append", default=[], help="a built-in list of configurations (repeatable)")
    parser.add_argument("--config", action="append", default=[], metavar="'NAME=PRESET [KEY=VALUE ...]'", help="a configuration (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--baseline", default="fpn", help="configuration the paired differences are taken against (default fpn; 'none' for none)")
    parser.add_argument("--dataset", choices=list(DATASETS), help="a synthetic dataset (default: sfpn.train's, the shapes set; --train-arg=--data-root=... for any COCO dataset)")
    parser.add_argument("--output", required=True, help="study folder: <output>/<config>/seed<k>/ per run, study.md/.json/.png")
    parser.add_argument("--train-arg", action="append", default=[], metavar="ARG", help="extra sfpn.train argument for every run, e.g. --train-arg=--iters=200 (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at a time, each on cores // jobs threads (default 1)")
    parser.add_argument("--report-only", action="store_true", help="train nothing; write the table from the finished runs")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        configs = [c for study in args.study for c in STUDIES[study]] + [RunConfig.parse(spec) for spec in args.config]
        if not configs:
            raise ValueError("give at least one --study or --config")
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"configuration names must be unique, got {names}")
        if args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
        baseline = None if args.baseline == "none" else args.baseline
        if baseline is not None and baseline not in names:
            raise ValueError(f"--baseline {baseline!r} is not one of the configurations {names}")
        data_args = [] if args.report_only else dataset_args(args.dataset, progress=True)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    os.makedirs(args.output, exist_ok=True)
    failed = [] if args.report_only else run_study(configs, args.seeds, args.output, data_args, [a for arg in args.train_arg for a in arg.split("=", 1)], jobs=args.jobs)
    print(write_report(args.output, configs, args.seeds, baseline))
    print(f"wrote {os.path.join(args.output, 'study.md')}, study.json and study.png")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
