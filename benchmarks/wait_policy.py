"""A grid of OpenMP wait policies and thread policies: the default run's training step alone and
beside a second training process, each setting in fresh processes, the settings interleaved round
by round.

    python benchmarks/wait_policy.py [--rounds 3] [--steps 6] [--threads 2] [--alone-only] [--json PATH]

The wait policy is read once, when ``import torch`` loads libgomp, so every setting needs its
own processes: a measuring process (``--worker``: warm-up steps for at least ``--warmup-s``
seconds, then ``--steps`` timed steps, printing the median) and, for the shared case, a
competitor running the same step in a loop with the same setting, as two sfpn trainings on one
machine would. The "adaptive threads" settings tick the trainer's ``SharedCoreThreads`` after
every step in both processes, as ``cpu_threads=adaptive`` (the trainer's default) does; the
other settings keep the thread count fixed. The warm-up gives the adaptive ones time to settle. The step is
``default_run.training_step`` (the default preset, a batch of 4 at 256x320, in the precision
that ``solver.amp=auto`` gives here).

Rounds interleave the settings (round 1: every setting alone, then every setting shared; round
2: the same) so that a drift of the machine's speed spreads over all settings instead of
favouring the first. The table gives per setting the median over rounds of the step time alone,
shared, and their ratio, and each setting's time alone relative to libgomp's own default spin.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

#: name -> (environment, whether the thread count adapts). sfpn leaves the wait policy alone
#: when either variable is set (sfpn/_threads.py), so each row is exactly the setting it names.
SETTINGS = {
    "PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, False),
    "spin 1k": ({"GOMP_SPINCOUNT": "1000"}, False),
    "spin 10k": ({"GOMP_SPINCOUNT": "10000"}, False),
    "spin 30k": ({"GOMP_SPINCOUNT": "30000"}, False),
    "spin 100k": ({"GOMP_SPINCOUNT": "100000"}, False),
    "spin 100k, adaptive threads": ({"GOMP_SPINCOUNT": "100000"}, True),
    "PASSIVE, adaptive threads": ({"OMP_WAIT_POLICY": "PASSIVE"}, True),
    "libgomp default (spin 300k)": ({"GOMP_SPINCOUNT": "300000"}, False),
    "ACTIVE": ({"OMP_WAIT_POLICY": "ACTIVE"}, False),
}


def _environment(setting: str, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(SETTINGS[setting][0], OMP_NUM_THREADS=str(threads))
    return env


def _worker(steps: int, warmup_s: float, compete: bool, adaptive: bool) -> None:
    sys.path.insert(0, HERE)
    import torch
    from default_run import training_step
    from sfpn._threads import fitted_cpu_threads

    with fitted_cpu_threads("cpu", "adaptive" if adaptive else "fixed") as shared_cores:
        step = training_step(shared_cores)
        began = time.perf_counter()
        for _ in range(2):
            step()
        if compete:
            print("stepping", flush=True)
            while True:
                step()
        while time.perf_counter() - began < warmup_s:
            step()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        threads = torch.get_num_threads()
    print(json.dumps({"median_s": statistics.median(times), "times_s": times, "threads": threads}), flush=True)


def _measure(setting: str, threads: int, steps: int, warmup_s: float, shared: bool) -> tuple[float, int]:
    """The median step of the setting (alone or shared) and the measuring process's final thread count."""
    env = _environment(setting, threads)
    flags = ["--adaptive"] if SETTINGS[setting][1] else []
    competitor = None
    if shared:
        competitor = subprocess.Popen([sys.executable, __file__, "--worker", "--compete", *flags], env=env, stdout=subprocess.PIPE, text=True)
        if competitor.stdout.readline().strip() != "stepping":
            raise RuntimeError(f"the competing process did not start (exit status {competitor.poll()})")
    try:
        out = subprocess.run([sys.executable, __file__, "--worker", "--steps", str(steps), "--warmup-s", str(warmup_s), *flags],
                             env=env, capture_output=True, text=True, check=True)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    return measured["median_s"], measured["threads"]


def _cpu_model() -> str:
    """As ``sfpn.engine.precision.cpu_model`` words it (name, family, model), read here because
    importing sfpn would set the OpenMP wait policy (sfpn/_threads.py) that this script's child
    processes must each choose for themselves."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if not line.strip():
                    break  # the first processor's block is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup-s", type=float, default=15.0, help="warm up at least this long (both processes' adaptive threads settle in 4-12 s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--alone-only", action="store_true", help="time each setting alone only (more rounds of the idle goal)")
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compete", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--adaptive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.steps, args.warmup_s, args.compete, args.adaptive)
        return

    load_before = os.getloadavg()[0]
    results = {name: {"alone": [], "shared": []} for name in args.settings}
    final_threads = {name: {"alone": [], "shared": []} for name in args.settings}
    for round_index in range(args.rounds):
        for shared in (False,) if args.alone_only else (False, True):
            case = "shared" if shared else "alone"
            for name in args.settings:
                seconds, threads = _measure(name, args.threads, args.steps, args.warmup_s, shared)
                results[name][case].append(seconds)
                final_threads[name][case].append(threads)
                print(f"round {round_index + 1} {case:6s} {name:30s} {seconds:.3f} s, {threads} threads", flush=True)
    load_after = os.getloadavg()[0]

    baseline = "libgomp default (spin 300k)"
    median = {name: {case: statistics.median(values) for case, values in cases.items() if values}
              for name, cases in results.items()}
    print(f"\nCPU: {_cpu_model()}, {args.threads} threads, {args.rounds} rounds of {args.steps} steps; "
          f"1-min load {load_before:.1f} before, {load_after:.1f} after")
    print("| setting | step alone (s) | vs libgomp default | step beside a second training (s) | shared / alone |")
    print("| --- | --- | --- | --- | --- |")
    for name, cases in median.items():
        versus = f"{cases['alone'] / median[baseline]['alone']:.2f}x" if baseline in median else "n/a"
        shared = f"{cases['shared']:.3f} | {cases['shared'] / cases['alone']:.2f}x" if "shared" in cases else "not timed | n/a"
        print(f"| {name} | {cases['alone']:.3f} | {versus} | {shared} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"cpu": _cpu_model(), "threads": args.threads, "rounds": args.rounds, "steps": args.steps,
                       "warmup_s": args.warmup_s, "load": [load_before, load_after], "results": results,
                       "final_threads": final_threads}, handle, indent=1)


if __name__ == "__main__":
    main()
