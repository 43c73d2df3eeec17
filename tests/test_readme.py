"""Every Python block of README.md runs as written, each in a fresh interpreter in an empty folder.

A block can say what it needs in an HTML comment on the line before its fence:

    <!-- readme-test: needs FILE -->      the block reads FILE: STAND_INS makes a stand-in with the
                                          same structure (the block then runs), or the block is
                                          skipped, saying so
    <!-- readme-test: skip, REASON -->    skipped with REASON (a GPU, a dataset)
    <!-- readme-test: slow -->            marked slow (more than a few seconds on a 2-core CPU)
"""
import os
import re
import subprocess
import sys

import pytest
import torch

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
DIRECTIVE = re.compile(r"<!--\s*readme-test:\s*(needs|skip,|slow)\s*(.*?)\s*-->")


def python_blocks(text: str) -> list[tuple[str, str, str, str]]:
    """(id, directive, argument, code) of each ```python block; the id is its section's heading
    and the block's place in that section."""
    blocks, heading, seen, lines = [], "top", {}, text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            heading = re.sub(r"\W+", "-", line.lstrip("#").strip()).strip("-").lower()
        if line.strip() == "```python":
            end = lines.index("```", index + 1)
            previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
            match = DIRECTIVE.search(previous)
            seen[heading] = seen.get(heading, 0) + 1
            directive, argument = (match.group(1).rstrip(","), match.group(2)) if match else ("", "")
            blocks.append((f"{heading}-{seen[heading]}", directive, argument, "\n".join(lines[index + 1:end])))
            index = end
        index += 1
    return blocks


def fasterrcnn_coco_state_dict(path: str) -> None:
    """torchvision's fasterrcnn_resnet50_fpn state dict, randomly initialised: the keys and shapes
    of the COCO checkpoint, without the download."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.save(fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict(), path)


#: Files README blocks read, and how to make a stand-in for each.
STAND_INS = {"fasterrcnn_resnet50_fpn_coco-258fb6c6.pth": fasterrcnn_coco_state_dict}

with open(README) as handle:
    BLOCKS = python_blocks(handle.read())


def _param(block_id, directive, argument, code):
    marks = []
    if directive == "slow":
        marks.append(pytest.mark.slow)
    elif directive == "skip":
        marks.append(pytest.mark.skip(reason=f"README says: {argument}"))
    elif directive == "needs" and argument not in STAND_INS:
        marks.append(pytest.mark.skip(reason=f"needs {argument}, which this test cannot make"))
    return pytest.param(directive, argument, code, id=block_id, marks=marks)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4, f"found only {[b[0] for b in BLOCKS]} in {README}"


@pytest.mark.parametrize("directive,argument,code", [_param(*block) for block in BLOCKS])
def test_readme_block_runs(tmp_path, directive, argument, code):
    if directive == "needs":
        STAND_INS[argument](str(tmp_path / argument))
    # A private dataset cache: the blocks that generate the synthetic dataset do it from scratch.
    env = dict(os.environ, SFPN_CACHE=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, f"README block failed:\n{code}\n\n{run.stderr[-3000:]}"
