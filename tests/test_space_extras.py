"""Search-space checks beyond the file itself: windows that do not fit, `times` kept in range."""

from __future__ import annotations

import numpy as np
import pytest

from arborseg.cli.space import validate
from arborseg.errors import SpaceError
from arborseg.space import load_space


def _write(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_validate_reports_windows_that_do_not_fit(tmp_path):
    path = _write(tmp_path, "name: bw\nwindow: {z: 1, xy: {choice: [20, 64]}}\nroot:\n  type: sequence\n  children:\n"
                            "    - {type: encoder_decoder, depth: 4, dims: 2d}\n    - {type: predictor}\n")
    with pytest.raises(SpaceError, match=r"window: \d+ of 64 sampled trees .* multiples of"):
        validate(str(path))
    path.write_text(path.read_text().replace("[20, 64]", "[32, 64]"))
    assert "fit their windows" in validate(str(path))


def test_times_products_stay_inside_the_allowed_values(tmp_path):
    path = _write(tmp_path, "name: t\nwindow: {z: 1, xy: 64}\ndefaults: {dims: 2d, width: 600, dropout: 0.6, "
                            "kernel_size: 3}\nroot:\n  type: sequence\n  children:\n    - {type: conv_block, "
                            "kernel_size: {times: 2}, width: {times: 2}, dropout: {times: 2.5}}\n"
                            "    - {type: predictor}\n")
    tree = load_space(path).sample(np.random.default_rng(0))
    block = dict(tree.root.children[0].params)
    assert block["kernel_size"] == 5  # 6 is not allowed: the nearest allowed value (ties go down)
    assert block["width"] == 1024 and block["dropout"] == 0.9  # clipped to the maxima
