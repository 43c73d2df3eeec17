"""Per-class IoU of the semantic branch over a study's runs, things and stuff apart.

    python benchmarks/semantic_classes.py output-study/v3/shapes --dataset shapes

Reads ``semantic.image.IoU`` of every finished run's ``eval.json`` under the study folder and
prints, per configuration, each class's IoU (mean over seeds), the mean over thing classes and
over stuff classes, and how many thing classes the runs leave below 1 IoU (a class the branch
never predicts; issue 23's target is none).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

from sfpn.data.synthetic import DATASETS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study")
    parser.add_argument("--dataset", default="shapes", choices=list(DATASETS))
    args = parser.parse_args(argv)
    spec = DATASETS[args.dataset]
    things, stuff = list(spec.categories), list(spec.stuff_categories)
    print("| config | seeds | " + " | ".join(things + stuff) + " | things mean | stuff mean | thing classes < 1 IoU per run |")
    print("|---|---:|" + "---:|" * (len(things) + len(stuff) + 3))
    for config in sorted(os.listdir(args.study)):
        folder = os.path.join(args.study, config)
        runs = []
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            path = os.path.join(folder, name, "eval.json")
            if os.path.isfile(path):
                with open(path) as f:
                    iou = ((json.load(f).get("semantic") or {}).get("image") or {}).get("IoU")  # FPN: "semantic": null
                if iou:
                    runs.append(iou)
        if not runs:
            continue

        def mean(name: str) -> float:
            return statistics.mean(run.get(name) or 0.0 for run in runs)

        missed = [sum((run.get(t) or 0.0) < 1.0 for t in things) for run in runs]
        cells = [f"{mean(c):.1f}" for c in things + stuff]
        cells += [f"{statistics.mean(mean(t) for t in things):.1f}", f"{statistics.mean(mean(s) for s in stuff):.1f}",
                  ", ".join(map(str, missed))]
        print(f"| {config} | {len(runs)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
