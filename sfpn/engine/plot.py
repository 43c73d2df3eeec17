"""The training curves: losses, APs and the semantic branch's mIoU from metrics.jsonl, as a PNG."""
from __future__ import annotations

import json


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_metrics(metrics_file: str, output_png: str) -> None:
    """Left: total and per-term losses against iterations (log scale); right: val AP and, for a
    detector with a semantic branch, its mIoU at image size and at its stride and its foreground
    IoU, and the panoptic PQ (overall, things, stuff) where the val split has panoptic ground truth
    (all in percent)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_file)
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    figure, (loss_axis, ap_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    if train:
        iters = [r["iter"] for r in train]
        loss_axis.plot(iters, [r["loss"] for r in train], label="loss", color="black", linewidth=2)
        for key in sorted(k for k in train[-1] if k.startswith("loss_")):
            loss_axis.plot(iters, [r.get(key, float("nan")) for r in train], label=key, linewidth=1)
        loss_axis.set_yscale("log")
    loss_axis.set(xlabel="iteration", ylabel="loss", title="training loss")
    loss_axis.grid(True, alpha=0.3)
    loss_axis.legend(fontsize=8)
    for iou_type, marker in (("bbox", "o"), ("segm", "s")):
        points = [(r["iter"], r[iou_type]["AP"]) for r in evals if r.get(iou_type)]
        if points:
            ap_axis.plot(*zip(*points), marker=marker, label=f"{iou_type} AP")
    # mIoU counts background as a class; foreground IoU shows a head that predicts no object at all.
    for where, score, marker, style in (("image", "mIoU", "^", "-"), ("stride", "mIoU", "^", ":"), ("image", "fgIoU", "v", "-")):
        scores = [(r["iter"], ((r.get("semantic") or {}).get(where) or {}).get(score)) for r in evals]
        points = [(iteration, value) for iteration, value in scores if value is not None]
        if points:
            ap_axis.plot(*zip(*points), marker=marker, linestyle=style, label=f"semantic {score} ({where})")
    for score, style in (("PQ", "-"), ("PQ_th", ":"), ("PQ_st", "--")):
        points = [(r["iter"], r["panoptic"][score]) for r in evals if (r.get("panoptic") or {}).get(score) is not None]
        if points:
            ap_axis.plot(*zip(*points), marker="D", linestyle=style, label=f"panoptic {score}")
    last = max((r["iter"] for r in records), default=0)
    ap_axis.set(xlabel="iteration", ylabel="%", title="validation AP, semantic mIoU, panoptic PQ", xlim=(0, max(1, last) * 1.05))
    ap_axis.grid(True, alpha=0.3)
    if evals:
        ap_axis.legend()
    figure.tight_layout()
    figure.savefig(output_png, dpi=100)
    plt.close(figure)
