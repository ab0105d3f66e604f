"""The static HTML report: files, relative links, and rendering in headless Chromium with every image loaded."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_table import make_fake_campaign, real_run  # noqa: F401 - real_run is a fixture

from arborseg.cli import main
from arborseg.viz.report import build_report, dashboard_command

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                 if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed "
                                                             "(Debian: apt-get install -y chromium)")


def chromium(args: list[str], profile: Path, timeout: int = 90) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=15000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def image_counts(index: Path, profile: Path) -> dict[str, int]:
    """Load the page in headless Chromium; the page's own script counts loaded images into <body> attributes."""
    dom = chromium(["--dump-dom", index.resolve().as_uri()], profile).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    attrs = dict(re.findall(r'data-images-(\w+)="(\d+)"', body.group(1)))
    assert attrs, f"the image counter did not run: {body.group(0)}"
    return {k: int(v) for k, v in attrs.items()}


def local_refs(index: Path) -> list[str]:
    text = index.read_text()
    return re.findall(r'(?:src|href)="([^"#]+)"', text)


@pytest.fixture(scope="module")
def fake_report(tmp_path_factory) -> Path:
    """A report of two hand-made campaigns (SQLite and journal storage), built once for this module."""
    root = tmp_path_factory.mktemp("fake_report")
    one = make_fake_campaign(root / "runs", name="alpha")
    two = make_fake_campaign(root / "runs", name="beta", storage="journal", offset=0.05)
    return build_report([one, two], root / "report", top=3)


def test_report_files_and_relative_links(fake_report):
    out = fake_report.parent
    assert fake_report.name == "index.html" and (out / "runs.csv").is_file()
    text = fake_report.read_text()
    for section in ("Summary", "Best trees", "Plots", "All trials", "optuna-dashboard"):
        assert section in text
    refs = local_refs(fake_report)
    assert refs, "no images or links"
    for ref in refs:
        assert not re.match(r"^(https?:|//|/|file:)", ref), f"not a relative path: {ref}"
        assert (out / ref).is_file(), f"missing file: {ref}"
    imgs = re.findall(r'<img src="([^"]+)"', text)
    assert sum(r.startswith("plots/") for r in imgs) == 5
    assert sum(r.startswith("trees/") for r in imgs) == 3  # the top 3 trees drawn from their tree.yaml
    assert sum("/overlays/" in r for r in imgs) >= 4 and any("learning_curve" in r for r in imgs)
    assert "<script src" not in text and "<link" not in text  # nothing from the network
    assert "optuna-dashboard sqlite:///" in text and "optuna-dashboard /" in text  # sqlite and journal
    assert "alpha" in text and "beta" in text and "RuntimeError: boom" in text


def test_report_of_a_campaign_with_missing_artifacts(tmp_path):
    run = make_fake_campaign(tmp_path / "runs", artifacts=False)
    index = build_report([run], tmp_path / "r", top=2, formats=("png",))
    text = index.read_text()
    assert "tree picture unavailable" in text and "no error overlays" in text
    for ref in local_refs(index):
        assert (index.parent / ref).is_file()


def test_dashboard_commands():
    assert dashboard_command("sqlite:////runs/q/optuna.sqlite3?timeout=60") == \
        "optuna-dashboard sqlite:////runs/q/optuna.sqlite3"
    assert dashboard_command("journal:///runs/q/optuna.journal") == "optuna-dashboard /runs/q/optuna.journal"
    assert "secret" not in dashboard_command("postgresql+psycopg2://u:secret@host/db")


@needs_chromium
def test_report_renders_in_chromium_with_every_image_loaded(fake_report, tmp_path):
    counts = image_counts(fake_report, tmp_path / "profile")
    assert counts["total"] >= 5 + 3 + 4 and counts["loaded"] == counts["total"] and counts["broken"] == 0
    shot = tmp_path / "shot.png"
    chromium([f"--screenshot={shot}", "--window-size=1400,3000", fake_report.resolve().as_uri()], tmp_path / "p2")
    assert shot.is_file() and shot.stat().st_size > 50_000
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 10 and len(np.unique(pixels)) > 50  # not a blank page


@needs_chromium
def test_a_broken_image_is_counted(fake_report, tmp_path):
    copy = tmp_path / "report"
    shutil.copytree(fake_report.parent, copy)
    (copy / "plots" / "pareto.png").unlink()
    counts = image_counts(copy / "index.html", tmp_path / "profile")
    assert counts["broken"] == 1 and counts["loaded"] == counts["total"] - 1


@needs_chromium
def test_report_command_on_a_real_campaign(real_run, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "real_report"
    assert main(["report", str(real_run), "--out", str(out), "--top", "2"]) == 0
    assert "report:" in capsys.readouterr().out
    index = out / "index.html"
    counts = image_counts(index, tmp_path / "profile")
    assert counts["loaded"] == counts["total"] and counts["total"] >= 5 + 2 + 2  # plots, trees, overlays
    assert len(list((out / "trials").glob("*/overlays/*.png"))) >= 2


def test_plots_command(real_run, tmp_path, capsys):  # noqa: F811
    assert main(["plots", str(real_run), "--out", str(tmp_path / "p"), "--format", "svg", "--only", "history",
                 "pareto"]) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["history.svg", "pareto.svg"]
