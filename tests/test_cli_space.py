"""`arborseg space validate|sample|show` as a user runs them (real subprocesses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arborseg.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_validate_ok_and_bad(tmp_path):
    ok = run("space", "validate", "search_spaces/hybrid_2d3d.yaml")
    assert ok.returncode == 0, ok.stderr
    assert "structural" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nroot:\n  type: sequence\n  children:\n    - {type: encoder_decoder, depth: {int: [5, 2]}}\n"
                   "    - {type: predictor}\n")
    res = run("space", "validate", str(bad))
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "root.children[0].depth.int" in lines[0] and "Traceback" not in res.stderr


def test_sample_is_reproducible_and_distinct(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, "0"), (b, "0"), (c, "1")):
        res = run("space", "sample", "search_spaces/hybrid_2d3d.yaml", "--n", "3", "--seed", seed, "--out", str(out))
        assert res.returncode == 0, res.stderr
    summary = [line for line in res.stdout.splitlines() if "family=" in line]
    assert len(summary) == 3 and all("params=" in s and "FLOPs/voxel=" in s for s in summary)
    files_a = sorted(a.glob("*.yaml"))
    assert len(files_a) == 3 and len(sorted(a.glob("*.png"))) == 3
    assert [f.read_bytes() for f in files_a] == [f.read_bytes() for f in sorted(b.glob("*.yaml"))]
    assert {f.name for f in files_a} != {f.name for f in c.glob("*.yaml")}
    assert len({f.name.split("-")[-1] for f in files_a}) == 3  # three distinct trees


def test_show_prints_and_draws(tmp_path):
    res = run("space", "sample", "search_spaces/quickstart.yaml", "--n", "1", "--out", str(tmp_path), "--no-pictures")
    tree = next(tmp_path.glob("*.yaml"))
    res = run("space", "show", str(tree), "--out", str(tmp_path / "pic.svg"))
    assert res.returncode == 0, res.stderr
    assert "FLOPs/voxel" in res.stdout and "- sequence" in res.stdout
    assert (tmp_path / "pic.svg").stat().st_size > 1000


def test_show_missing_tree_is_one_line():
    res = run("space", "show", "nope.yaml")
    assert res.returncode == 2
    assert res.stderr.strip() == "arborseg: error: nope.yaml: no such tree file"
