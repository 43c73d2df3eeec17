"""Turn a pytest-benchmark JSON file into a markdown table: per group, each implementation's
median and its speed-up over every peer (peer time / our time, > 1 means ours is faster).

    python benchmarks/table.py results.json [--ours sfpn]

The implementation is the `impl` parameter of a benchmark (or the last `-`-separated part of its
id); CUDA runs report the CUDA-event median (extra_info["cuda_event_median_ms"]) when recorded.
CPU runs that recorded their process CPU time (extra_info["cpu_time_median_ms"]) get two more
columns: that time and the speed-up by it.
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


def cpu_time_ms(bench: dict):
    return (bench.get("extra_info") or {}).get("cpu_time_median_ms")


def table(data: dict, ours: str) -> str:
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        groups[bench.get("group") or bench["name"]][implementation(bench)] = (median_ms(bench), cpu_time_ms(bench))
    with_cpu = any(cpu is not None for by_impl in groups.values() for _, cpu in by_impl.values())
    header = "| group | implementation | median (ms) | speed-up of ours |"
    rule = "| --- | --- | ---: | ---: |"
    if with_cpu:
        header += " CPU time (ms) | speed-up by CPU time |"
        rule += " ---: | ---: |"
    lines = [
        f"machine: {data.get('machine_info', {}).get('cpu', {}).get('brand_raw', '?')}, "
        f"date: {data.get('datetime', '?')}",
        "",
        header,
        rule,
    ]

    def ratio(peer, mine):
        return "" if peer is None or mine is None else f"{peer / mine:.2f}x"

    for group in sorted(groups):
        by_impl = groups[group]
        mine = by_impl.get(ours, (None, None))
        for impl in sorted(by_impl, key=lambda name: (name != ours, name)):
            wall, cpu = by_impl[impl]
            line = f"| {group} | {impl} | {wall:.3f} | {'' if impl == ours else ratio(wall, mine[0])} |"
            if with_cpu:
                cpu_text = "" if cpu is None else f"{cpu:.3f}"
                line += f" {cpu_text} | {'' if impl == ours else ratio(cpu, mine[1])} |"
            lines.append(line)
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
