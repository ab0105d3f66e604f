"""The `arborseg` parser: every command dispatches to a handler, integer options below 1 are refused with one
line, user errors exit 2 and Ctrl-C 130, and `arborseg --help` loads no heavy library."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from arborseg.cli import main
from arborseg.cli.main import build_parser
from arborseg.errors import ArborsegError

COMMANDS = ["space validate", "space sample", "space show", "train", "pretrain", "search", "status", "table", "plots", "report",
            "ensemble", "export", "predict", "bootstrap init", "bootstrap next", "bootstrap ingest",
            "bootstrap status"]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_command_has_a_handler():
    found = {}
    for name, p in _subparsers(build_parser()).items():
        nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        for sub_name, q in (nested[0].choices.items() if nested else [("", p)]):
            found[f"{name} {sub_name}".strip()] = q.get_default("handler")
    assert sorted(found) == sorted(COMMANDS)
    assert all(callable(h) for h in found.values()), found


@pytest.mark.parametrize("argv, option", [
    (["train", "t.yaml", "--data", "d.yaml", "--steps", "-5"], "--steps -5"),
    (["train", "t.yaml", "--data", "d.yaml", "--steps", "0"], "--steps 0"),
    (["train", "t.yaml", "--data", "d.yaml", "--eval-every", "0"], "--eval-every 0"),
    (["train", "t.yaml", "--data", "d.yaml", "--batch-size", "-1"], "--batch-size -1"),
    (["space", "sample", "s.yaml", "--n", "0"], "--n 0"),
    (["pretrain", "p.yaml", "--steps", "0"], "--steps 0"),
    (["space", "show", "t.yaml", "--classes", "0"], "--classes 0"),
    (["search", "c.yaml", "--max-trials", "0"], "--max-trials 0"),
    (["search", "c.yaml", "--top", "-2"], "--top -2"),
    (["plots", "runs", "--out", "p", "--top-trees", "0"], "--top-trees 0"),
    (["report", "runs", "--out", "r", "--top", "0"], "--top 0"),
    (["bootstrap", "init", "f", "--tree", "t.yaml", "--steps", "0"], "--steps 0"),
    (["bootstrap", "next", "f", "--k", "0"], "--k 0"),
])
def test_integers_below_one_are_refused_with_one_line(argv, option, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # none of the files exist: the option is checked first
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("arborseg: error: ") and option in err[0], err


def test_user_error_exits_2_and_interrupt_130(capsys, monkeypatch, tmp_path):
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("arborseg.cli.search._status", interrupted)
    assert main(["status", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "arborseg: interrupted"

    def failing(args):
        raise ArborsegError("something the user can fix")

    monkeypatch.setattr("arborseg.cli.search._status", failing)
    assert main(["status", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "arborseg: error: something the user can fix"


def test_help_lists_every_command_and_loads_no_heavy_library():
    code = ("import sys\nfrom arborseg.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'numpy', 'pandas', 'networkx', 'scipy', 'matplotlib') "
            "if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout
    for name in {c.split()[0] for c in COMMANDS}:
        assert f"    {name} " in res.stdout, name
    module = subprocess.run([sys.executable, "-m", "arborseg.cli", "--help"], capture_output=True, text=True,
                            timeout=300)
    assert module.returncode == 0 and module.stdout == res.stdout.split("HEAVY")[0]
