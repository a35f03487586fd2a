"""examples/walkthrough.py and docs/backprop_through_csr.md: the checks pass and the page cannot go stale.

The doc pastes the script's output in blocks, each one section of it, each marked by an HTML
comment (invisible once rendered) just before a fenced ``text`` block:

    <!-- output: 4 -->
    ```text
    ---- 4. dx = W^T dy through the transpose index ----...
    ...
    ```

Section N is everything from the script's line ``---- N. title ---`` to the next such line.
Every section must appear exactly once, in order, and equal what the script prints now, except
the digits after ``max|diff| =``: those are rounding noise (1e-16, 1e-10) that can differ from
one machine to another, and the checks themselves are asserted on the live output instead.
Code the doc quotes is marked ``<!-- code: path -->`` before a ``python`` block and must be a
verbatim run of lines (indentation aside) of that file.

After changing the script, rewrite the doc's output blocks from the current output with

    python -m tests.test_walkthrough
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "examples", "walkthrough.py")
DOC = os.path.join(REPO, "docs", "backprop_through_csr.md")

HEADER = re.compile(r"^---- (\d+)\. ", re.M)
OUTPUT_BLOCK = re.compile(r"<!-- output: (\d+) -->\n```text\n(.*?)```", re.S)
CODE_BLOCK = re.compile(r"<!-- code: (\S+) -->\n```python\n(.*?)```", re.S)
CHECK_LINE = re.compile(r"^  check (.+?) +max\|diff\| = (\S+) \(tol (\S+)\) (OK|FAIL)$", re.M)
NOISE = re.compile(r"(max\|diff\| = )\S+")
CODE_REF = re.compile(r"sparsenn/(\w+)\.py: (\w+(?:\.\w+)?)((?:, \w+(?:\.\w+)?)*)")


def run_walkthrough(*args):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO)


def sections(stdout: str) -> dict:
    """{"N": text of section N} (header line included, blank lines at the ends stripped)."""
    starts = [m.start() for m in HEADER.finditer(stdout)] + [len(stdout)]
    return {HEADER.match(stdout, a).group(1): stdout[a:b].strip("\n") for a, b in zip(starts, starts[1:])}


def normalise(text: str) -> str:
    return NOISE.sub(r"\1<noise>", text.strip("\n"))


@pytest.fixture(scope="module")
def output():
    proc = run_walkthrough()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def doc():
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def test_every_check_the_walkthrough_prints_passes(output):
    checks = CHECK_LINE.findall(output)
    assert len(checks) >= 16, output
    for what, diff, tol, verdict in checks:
        assert verdict == "OK" and float(diff) <= float(tol) <= 1e-8, (what, diff, tol)
    assert "FAIL" not in output
    assert "failures: 0 OK" in output  # gradcheck.check_layer's line
    assert output.rstrip().endswith(f"all {len(checks) + 1} checks passed")  # + check_layer's


def test_hand_loops_equal_the_kernels_and_central_differences_are_tight(output):
    checks = {what: float(diff) for what, diff, _, _ in CHECK_LINE.findall(output)}
    for what in ("forward: kernel == hand loop", "dx: kernel == hand loop", "dW: kernel == hand loop"):
        assert checks[what] <= 1e-12, what
    for what in ("dx: central difference", "dW: central difference", "db: central difference"):
        assert checks[what] <= 1e-8, what


def test_hand_loops_equal_the_kernels_on_another_pattern(rng):
    """The script's loops, on a pattern with empty rows, empty columns and rows of >= 4 entries
    (the kernels' unrolled paths), against the layer's kernels."""
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        wk = importlib.import_module("walkthrough")
    finally:
        sys.path.pop(0)
    from sparsenn.layers import SparseLinear

    mask = rng.random((7, 11)) < 0.5
    mask[2] = False
    mask[:, 5] = False
    mask[4, :6] = True
    layer = SparseLinear(mask, rng, dtype=np.float64)
    p, w = layer.pattern, layer.weight.value
    x = rng.standard_normal((11, 5))
    dy = rng.standard_normal((7, 5))
    y = layer.forward(x)
    np.testing.assert_allclose(wk.spmm_by_hand(p.indptr, p.indices, w, x), y - layer.bias.value[:, None],
                               rtol=0, atol=1e-12)
    dx = layer.backward(dy)
    np.testing.assert_allclose(wk.spmm_t_by_hand(p.t_indptr, p.t_rows, p.t_perm, w, dy), dx, rtol=0, atol=1e-12)
    np.testing.assert_allclose(wk.sddmm_by_hand(p.indptr, p.indices, dy, x), layer.weight.grad, rtol=0, atol=1e-12)

    def loss():
        return float(np.sum(layer.forward(x) * dy))

    np.testing.assert_allclose(wk.central_difference(loss, x, 1e-6), dx, rtol=0, atol=1e-8)


def test_other_seeds_pass_every_check_too():
    proc = run_walkthrough("--seed", "5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout and "checks passed" in proc.stdout


def test_doc_output_blocks_are_what_the_script_prints(output, doc):
    want = sections(output)
    blocks = OUTPUT_BLOCK.findall(doc)
    assert [n for n, _ in blocks] == list(want), (
        f"the doc's output blocks are sections {[n for n, _ in blocks]}, the script prints {list(want)}; "
        "rewrite them with: python -m tests.test_walkthrough")
    assert "entry 2, W[0, 5]: stored as 0.0000" in want["8"]  # what the doc's prose says of seed 0
    for n, text in blocks:
        doc_lines, now_lines = normalise(text).splitlines(), normalise(want[n]).splitlines()
        diff = "\n".join(difflib.unified_diff(doc_lines, now_lines, "doc", "script", lineterm=""))
        assert doc_lines == now_lines, (
            f"output block {n} of docs/backprop_through_csr.md differs from what examples/walkthrough.py "
            f"prints now; rewrite the blocks with: python -m tests.test_walkthrough\n{diff}")


def test_doc_quotes_code_verbatim(doc):
    quotes = CODE_BLOCK.findall(doc)
    assert quotes
    for path, text in quotes:
        with open(os.path.join(REPO, path), encoding="utf-8") as f:
            source = [line.strip() for line in f.read().splitlines()]
        lines = [line.strip() for line in text.rstrip("\n").splitlines()]
        n = len(lines)
        assert any(source[i:i + n] == lines for i in range(len(source) - n + 1)), (
            f"the doc quotes lines that are no longer in {path}:\n{text}")


def test_code_references_name_real_functions(output, doc):
    """``sparsenn/kernels.py: spmm``-style references in the doc and the output resolve."""
    refs = CODE_REF.findall(doc + output)
    assert len(refs) >= 10
    for module, first, rest in refs:
        mod = importlib.import_module(f"sparsenn.{module}")
        for name in [first] + [r for r in rest.split(", ") if r]:
            obj = mod
            for part in name.split("."):
                assert hasattr(obj, part), f"sparsenn/{module}.py has no {name}"
                obj = getattr(obj, part)


def update_doc() -> int:
    """Rewrite each ``<!-- output: N -->`` block of the doc with section N of the current output."""
    proc = run_walkthrough()
    if proc.returncode != 0:
        sys.exit(proc.stdout + proc.stderr)
    now = sections(proc.stdout)
    with open(DOC, encoding="utf-8") as f:
        doc = f.read()
    missing = set(now) - {n for n, _ in OUTPUT_BLOCK.findall(doc)}
    doc = OUTPUT_BLOCK.sub(lambda m: f"<!-- output: {m.group(1)} -->\n```text\n"
                                     f"{now.get(m.group(1), m.group(2).rstrip())}\n```", doc)
    with open(DOC, "w", encoding="utf-8") as f:
        f.write(doc)
    if missing:
        print(f"sections {sorted(missing, key=int)} have no block in the doc yet: add "
              f"'<!-- output: N -->' and an empty ```text block where each belongs, then run this again")
    return len(now) - len(missing)


if __name__ == "__main__":
    print(f"rewrote {update_doc()} output blocks of {os.path.relpath(DOC, REPO)}")
