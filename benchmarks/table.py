"""Turn a pytest-benchmark JSON file into a markdown table: per group, each implementation's
median and its speed-up over every peer (peer time / our time, > 1 means ours is faster).

    python benchmarks/table.py results.json [--ours sfpn]

The implementation is the `impl` parameter of a benchmark (or the last `-`-separated part of its
id); CUDA runs report the CUDA-event median (extra_info["cuda_event_median_ms"]) when recorded.
"""
import argparse
import json
import re
from collections import defaultdict


def implementation(bench: dict) -> str:
    params = bench.get("params") or {}
    if "impl" in params:
        return str(params["impl"])
    match = re.search(r"\[(.*)\]$", bench["name"])
    return match.group(1).split("-")[-1] if match else bench["name"]


def median_ms(bench: dict) -> float:
    extra = bench.get("extra_info") or {}
    if "cuda_event_median_ms" in extra:
        return float(extra["cuda_event_median_ms"])
    return bench["stats"]["median"] * 1e3


def table(data: dict, ours: str) -> str:
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        groups[bench.get("group") or bench["name"]][implementation(bench)] = median_ms(bench)
    lines = [
        f"machine: {data.get('machine_info', {}).get('cpu', {}).get('brand_raw', '?')}, "
        f"date: {data.get('datetime', '?')}",
        "",
        "| group | implementation | median (ms) | speed-up of ours |",
        "| --- | --- | ---: | ---: |",
    ]
    for group in sorted(groups):
        by_impl = groups[group]
        mine = by_impl.get(ours)
        for impl in sorted(by_impl, key=lambda name: (name != ours, name)):
            ratio = "" if impl == ours or mine is None else f"{by_impl[impl] / mine:.2f}x"
            lines.append(f"| {group} | {impl} | {by_impl[impl]:.3f} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="a file written by pytest --benchmark-json")
    parser.add_argument("--ours", default="sfpn", help="the implementation the ratios are taken against")
    args = parser.parse_args()
    with open(args.json) as handle:
        print(table(json.load(handle), args.ours))


if __name__ == "__main__":
    main()
