"""Calls of the ops run in child processes, so that a crash is a test failure rather than the
end of pytest: :func:`run_isolated` evaluates each call after :data:`PRELUDE`."""
import json
import os
import subprocess
import sys


# The valid arguments every case starts from; each case spoils one of them.
PRELUDE = """
import torch
import sfpn.ops as public_ops  # loads the extension
sfpn = torch.ops.sfpn
g = torch.Generator().manual_seed(0)
x = torch.rand(2, 3, 8, 8, generator=g)
top = torch.rand(2, 3, 4, 4, generator=g)
levels = [torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 8, 8, generator=g)]
rois = torch.tensor([[0, 1.0, 1.0, 6.0, 5.0], [1, 0.0, 2.0, 7.5, 7.0]])
grad = torch.rand(2, 3, 2, 2, generator=g)
boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30.0]])
scores = torch.tensor([0.9, 0.8, 0.7])
idxs = torch.tensor([0, 0, 1])
nan, inf = float("nan"), float("inf")
"""

# Runs the (id, call) pairs given on the command line in order; prints "start <id>" before each and
# one JSON line of its outcome (exception or value) after, so that a crash is pinned on the case
# that started last.
RUNNER = PRELUDE + """
import json, sys

def plain(value):  # a result as JSON: tensors as nested lists
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return None

calls = json.loads(sys.argv[1])
for case_id, call in calls:
    print("start", case_id, flush=True)
    try:
        outcome = {"id": case_id, "raised": None, "message": "", "value": plain(eval(call))}
    except Exception as error:
        outcome = {"id": case_id, "raised": type(error).__name__, "message": str(error)}
    print(json.dumps(outcome), flush=True)
"""


def run_isolated(calls: list[tuple[str, str]]) -> dict[str, dict]:
    """Outcome of every (id, call), each run in a child process; a case that kills its process is
    recorded as crashed and the remaining cases run in a fresh one."""
    outcomes: dict[str, dict] = {}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    pending = list(calls)
    while pending:
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, json.dumps(pending)], capture_output=True, text=True, env=env, timeout=600
        )
        started = None
        for line in proc.stdout.splitlines():
            if line.startswith("start "):
                started = line.split(" ", 1)[1]
            elif line.startswith("{"):
                outcome = json.loads(line)
                outcomes[outcome["id"]] = outcome
                started = None
        if started is None and proc.returncode != 0:  # died before or between cases
            raise RuntimeError(f"the case runner failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        if started is not None:
            outcomes[started] = {"id": started, "raised": "crash", "message": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
        pending = [(case_id, call) for case_id, call in pending if case_id not in outcomes]
    return outcomes
