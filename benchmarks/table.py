"""Turn a pytest-benchmark JSON file into one markdown table: per group, our median beside each
peer's and the ratio peer time / our time (> 1 means ours is faster), then the machine, its load
and the benchmarks that were skipped, with why.

    python benchmarks/table.py benchmarks/results/latest.json [--ours sfpn]

``pytest benchmarks/ --benchmark-only`` writes that file and prints this table last.
The implementation is the `impl` parameter of a benchmark (or the last `-`-separated part of its
id). Ours is the implementation named by --ours; a group without it is read against the entry
that marks itself ``extra_info["reference"] = True`` (the shared-CPU step: alone vs shared).
CUDA runs report the CUDA-event median (extra_info["cuda_event_median_ms"]) when recorded. CPU
runs that recorded their process CPU time (extra_info["cpu_time_median_ms"]) get the ratio by CPU
time too, which a shared machine disturbs less than wall time.
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


def load(path: str) -> dict:
    with open(path) as handle:
        return json.load(handle)


def machine_line(data: dict) -> str:
    """The machine in one line: the CPU model (``cpu_model`` as benchmarks/conftest.py records it
    from /proc/cpuinfo, else py-cpuinfo's brand), its bf16, the GPU, the load, torch, the date."""
    machine = data.get("machine_info", {})
    cpu = machine.get("cpu", {})
    model = machine.get("cpu_model") or cpu.get("brand_raw", "?")
    parts = [f"machine: {model}, {machine.get('cpu_count', cpu.get('count', '?'))} CPUs"]
    if "cpu_bf16" in machine:
        parts.append(f"bf16: {machine['cpu_bf16']}")
    if "gpu" in machine:
        parts.append(f"GPU {machine['gpu']}")
    if "load_average_start" in machine:
        start, end = machine["load_average_start"][0], machine["load_average_end"][0]
        parts.append(f"load average {start:.1f} at start, {end:.1f} at end")
    if "torch" in machine:
        parts.append(f"torch {machine['torch']} with {machine['torch_threads']} threads, OMP_WAIT_POLICY={machine['omp_wait_policy']}")
    parts.append(f"date {data.get('datetime', '?')}")
    return "; ".join(parts)


def table(data: dict, ours: str) -> str:
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        groups[bench.get("group") or bench["name"]][implementation(bench)] = bench
    with_cpu = any(cpu_time_ms(bench) is not None for by_impl in groups.values() for bench in by_impl.values())
    header = "| group | ours (ms) | peer | peer (ms) | peer / ours |"
    rule = "| --- | ---: | --- | ---: | ---: |"
    if with_cpu:
        header += " by CPU time |"
        rule += " ---: |"
    lines = [machine_line(data), "", header, rule]

    def ratio(peer, mine):
        return "" if peer is None or mine is None else f"{peer / mine:.2f}x"

    def ms(bench, time=median_ms):
        return None if bench is None else time(bench)

    for group in sorted(groups):
        by_impl = groups[group]
        reference = ours if ours in by_impl else next(
            (impl for impl, bench in by_impl.items() if (bench.get("extra_info") or {}).get("reference")), None
        )
        mine = by_impl.get(reference)
        ours_cell = "-" if mine is None else f"{median_ms(mine):.3f}" if reference == ours else f"{reference}: {median_ms(mine):.3f}"
        for peer in [impl for impl in sorted(by_impl) if impl != reference] or ["-"]:
            bench = by_impl.get(peer)
            peer_cell = "" if bench is None else f"{median_ms(bench):.3f}"
            line = f"| {group} | {ours_cell} | {peer} | {peer_cell} | {ratio(ms(bench), ms(mine))} |"
            if with_cpu:
                line += f" {ratio(ms(bench, cpu_time_ms), ms(mine, cpu_time_ms))} |"
            lines.append(line)
    for reason, ids in sorted((data.get("skipped") or {}).items()):
        lines.append(f"skipped {len(ids)}: {reason}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="a file written by pytest --benchmark-json")
    parser.add_argument("--ours", default="sfpn", help="the implementation the ratios are taken against")
    args = parser.parse_args()
    print(table(load(args.json), args.ours))


if __name__ == "__main__":
    main()
