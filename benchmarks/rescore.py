"""Rescore a study's runs on a larger validation split of its synthetic dataset.

    python benchmarks/rescore.py output-study/v3/clutter --dataset clutter --val-images 1000 \\
        --output output-study/v3/clutter-val1000 [--jobs 2] [--config fpn --config sfpn ...]

A synthetic image is drawn from (dataset seed, split, index) alone, so a spec with more validation
images holds the study's 200 as its first 200 and adds new ones. Each finished run's last
checkpoint is scored there by ``python -m sfpn.eval``: bbox (and segm) AP, the semantic scores from
the split's label PNGs, PQ from its panoptic ground truth. Each run is a fresh process on
cores // jobs threads (as sfpn.study runs them) and writes ``<output>/<config>/seed<k>/eval.json``
and ``results.json``, the files of a study's run, so that ``python -m sfpn.study --report-only
--output <output>`` (with the study's configurations) and ``benchmarks/variance.py <output>
--val-images N`` read the rescored study as they read the study itself. Runs already rescored
are skipped.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys


def validation_spec(dataset: str, val_images: int | None):
    """The spec whose val split scores a study of ``dataset``: the training default (200 images),
    or one with ``val_images`` validation images and no training split."""
    from sfpn.data.synthetic import DATASETS

    spec = DATASETS[dataset]
    return spec() if val_images is None else spec(num_train=0, num_val=val_images)


def finished_runs(study: str) -> list[tuple[str, str]]:
    """(config, seed<k>) of every finished run under ``study`` (``sfpn.study.is_finished``)."""
    from sfpn.study import is_finished

    runs = []
    for config in sorted(os.listdir(study)):
        folder = os.path.join(study, config)
        if os.path.isdir(folder):
            runs += [(config, name) for name in sorted(os.listdir(folder))
                     if name.startswith("seed") and is_finished(os.path.join(folder, name))]
    return runs


def trained_on_label_pngs(run: str) -> bool:
    """Whether the run's semantic branch trained on label PNGs (``data.semantic=png``): only such a
    branch is scored against the split's label PNGs."""
    from sfpn.engine.checkpoint import load_checkpoint

    meta = load_checkpoint(run)["meta"]
    return meta.get("train_config", {}).get("data", {}).get("semantic") == "png"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="a sfpn.study output folder (<config>/seed<k>/ with checkpoints)")
    parser.add_argument("--dataset", required=True, help="the synthetic dataset the study trained on")
    parser.add_argument("--val-images", type=int, required=True, help="validation images to score on (the study's: 200)")
    parser.add_argument("--output", required=True, help="the rescored study's folder")
    parser.add_argument("--jobs", type=int, default=1, help="runs scored at a time, each on cores // jobs threads")
    parser.add_argument("--config", action="append", help="rescore this configuration's runs only (repeatable; default all)")
    args = parser.parse_args(argv)

    from sfpn.data.synthetic import label_maps_dir, synthetic_dataset
    from sfpn.study import job_environment, threads_per_job

    spec = validation_spec(args.dataset, args.val_images)
    val = synthetic_dataset(spec)["val"]
    threads = threads_per_job(args.jobs)
    commands = []
    for config, seed in finished_runs(args.study):
        if args.config and config not in args.config:
            continue
        run, out = os.path.join(args.study, config, seed), os.path.join(args.output, config, seed)
        if os.path.isfile(os.path.join(out, "eval.json")):
            print(f"{config} {seed}: rescored, skipped")
            continue
        os.makedirs(out, exist_ok=True)
        for name in ("study_run.json", "train.log"):  # what the run was, beside its new scores
            if os.path.isfile(os.path.join(run, name)):
                shutil.copy(os.path.join(run, name), out)
        command = [sys.executable, "-m", "sfpn.eval", run, "--data-root", val.image_root, "--ann-file", val.ann_file,
                   "--panoptic-json", val.panoptic_file, "--panoptic-dir", val.panoptic_dir,
                   "--results", os.path.join(out, "results.json"), "--metrics-json", os.path.join(out, "eval.json.part"),
                   "--no-progress"]
        if trained_on_label_pngs(run):
            command += ["--semantic-dir", label_maps_dir(spec)]
        commands.append((config, seed, out, command))

    def rescore(job) -> str:
        config, seed, out, command = job
        with open(os.path.join(out, "eval.log"), "w") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=job_environment(threads)).returncode
        if code:
            return f"{config} {seed}: sfpn.eval failed ({code}), see {os.path.join(out, 'eval.log')}"
        os.replace(os.path.join(out, "eval.json.part"), os.path.join(out, "eval.json"))  # finished runs only
        return f"{config} {seed}: rescored"

    failed = False
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for message in pool.map(rescore, commands):
            print(message, flush=True)
            failed |= "failed" in message
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
