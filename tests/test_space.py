"""Search-space language: parsing, inheritance, classification and every kind of invalid space."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from arborseg.errors import SpaceError
from arborseg.space import RandomDraw, load_space, parse_space
from arborseg.space.sampler import sample_distinct

SPACES = sorted(Path(__file__).parents[1].joinpath("search_spaces").glob("*.yaml"))

BASE = {
    "name": "t",
    "window": {"z": 1, "xy": 32},
    "defaults": {"width": 8, "norm": "instance"},
    "root": {"type": "sequence", "children": [
        {"type": "encoder_decoder", "dims": "2d", "depth": {"int": [2, 3]}, "width": {"times": 2}},
        {"type": "predictor"},
    ]},
}


def test_builtin_spaces_exist_and_validate():
    names = {p.stem for p in SPACES}
    assert {"unet2d", "thin3d_unet", "hybrid_2d3d", "hybrid_2d3d_crf", "dilated_2d", "quickstart"} <= names
    for path in SPACES:
        space = load_space(path)
        assert space.hyperparameters(), path


def test_inheritance_and_times_adjustment():
    tree = parse_space(BASE).sample(0)
    ed = tree.root.children[0]
    assert ed.get("width") == 16  # 8 from defaults, times 2
    assert ed.get("norm") == "instance"
    assert ed.get("dims") == "2d"


def test_child_override_beats_parent():
    data = copy.deepcopy(BASE)
    data["root"]["norm"] = "batch"  # set on the parent sequence
    data["root"]["children"][0]["norm"] = "group"  # overridden on the child
    data["root"]["children"].insert(1, {"type": "conv_block"})
    tree = parse_space(data).sample(0)
    assert tree.root.children[0].get("norm") == "group"
    assert tree.root.children[1].get("norm") == "batch"
    assert tree.root.children[1].get("width") == 8


def test_structural_and_refinable_classification():
    space = load_space(Path(__file__).parents[1] / "search_spaces" / "thin3d_unet.yaml")
    classes = dict(space.hyperparameters())
    assert classes["root.children[0].depth"] is True
    assert classes["root.children[0].pooling"] is True
    assert classes["defaults.width"] is False
    assert classes["defaults.norm"] is False
    assert classes["training.lr"] is False
    tree = space.sample(3)
    assert "root.children[0].depth" in tree.structural_choices()
    assert "training.lr" in tree.refinable_choices()


def test_oneof_and_repeat_are_structural_and_expand():
    space = load_space(Path(__file__).parents[1] / "search_spaces" / "dilated_2d.yaml")
    for seed in range(10):
        tree = space.sample(seed)
        assert any(k.endswith(".oneof") for k in tree.structural_choices())
        assert "root.children[1].times" in tree.structural
        repeated = tree.root.children[1]
        assert repeated.type == "sequence"
        assert len(repeated.children) == dict(tree.choices)["root.children[1].times"]


def test_sampling_is_seeded():
    space = load_space(SPACES[0])
    assert space.sample(5).id == space.sample(5).id
    assert len({space.sample(s).id for s in range(10)}) > 1


def test_random_draw_respects_ranges_and_steps():
    draw = RandomDraw(0)
    ints = [draw.int(f"a{i}", 2, 10, False, 2, False) for i in range(200)]
    assert set(ints) <= {2, 4, 6, 8, 10} and len(set(ints)) == 5
    logs = [draw.int(f"b{i}", 1, 64, True, 1, False) for i in range(500)]
    assert min(logs) >= 1 and max(logs) <= 64 and np.median(logs) < 20
    floats = [draw.float(f"c{i}", 1e-4, 1e-2, True, False) for i in range(200)]
    assert all(1e-4 <= f <= 1e-2 for f in floats)


def _broken(mutate):
    data = copy.deepcopy(BASE)
    mutate(data)
    return data


INVALID = {
    "unknown module": (lambda d: d["root"]["children"][0].update(type="conv_blok"),
                       "root.children[0].type", "did you mean 'conv_block'"),
    "unknown key": (lambda d: d["root"]["children"][0].update(depht=3), "root.children[0].depht", "'depth'"),
    "bad range": (lambda d: d["root"]["children"][0].update(depth={"int": [2]}), "root.children[0].depth.int",
                  "expected a range [low, high]"),
    "min > max": (lambda d: d["root"]["children"][0].update(depth={"int": [4, 2]}), "root.children[0].depth.int",
                  "greater than high"),
    "wrong type": (lambda d: d["defaults"].update(width="wide"), "defaults.width", "expected int"),
    "missing required key": (lambda d: d.pop("root"), "root", "missing required key"),
    "missing type": (lambda d: d["root"]["children"][1].pop("type"), "root.children[1]", "missing required key 'type'"),
    "bad choice": (lambda d: d["defaults"].update(norm={"choice": ["instance", "layer"]}), "defaults.norm.choice[1]",
                   "'layer' is not one of"),
    "bad constant option": (lambda d: d["root"]["children"][0].update(pooling="avg"), "root.children[0].pooling",
                            "is not one of"),
    "bad reference": (lambda d: d["root"]["children"].insert(0, {"use": "stem"}), "root.children[0].use",
                      "'stem' is not defined"),
    "circular reference": (lambda d: d.update(definitions={"a": {"use": "b"}, "b": {"use": "a"}}),
                           "definitions.b.use", "circular reference a -> b -> a"),
    "log with low <= 0": (lambda d: d["defaults"].update(width={"int": [0, 8], "log": True}), "defaults.width.int",
                          "log-scale range needs low > 0"),
    "out of bounds": (lambda d: d["root"]["children"][0].update(depth=0), "root.children[0].depth",
                      "below the minimum"),
    "unknown distribution key": (lambda d: d["defaults"].update(width={"int": [4, 8], "logg": True}),
                                 "defaults.width.logg", "did you mean 'log'"),
    "unknown top-level key": (lambda d: d.update(trainig={}), "trainig", "did you mean 'training'"),
    "empty children": (lambda d: d["root"].update(children=[]), "root.children", "non-empty list"),
    "does not end in predictor": (lambda d: d["root"]["children"].pop(), "root.children[0]",
                                  "must end with a predictor"),
    "range for a string": (lambda d: d["defaults"].update(norm={"int": [1, 2]}), "defaults.norm",
                           "takes str values"),
    "times on a non-inherited": (lambda d: d["root"]["children"][0].update(depth={"times": 2}),
                                 "root.children[0].depth.times", "adjusts an inherited number"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_spaces_name_the_key_path(case):
    mutate, path, hint = INVALID[case]
    with pytest.raises(SpaceError) as info:
        parse_space(_broken(mutate), source="bad.yaml")
    message = str(info.value)
    assert message.startswith("bad.yaml: "), message
    assert path in message, message
    assert hint in message, message
    assert "\n" not in message


def test_invalid_yaml_syntax_names_the_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: x\nroot: {type: sequence, children: [\n")
    with pytest.raises(SpaceError, match=r"broken.yaml: not valid YAML at line"):
        load_space(bad)


def test_missing_file():
    with pytest.raises(SpaceError, match="no such search-space file"):
        load_space("does/not/exist.yaml")


def test_yaml_files_are_plain_yaml():
    for path in SPACES:
        assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_space_settings_campaign_config_and_tree_import_without_torch():
    code = ("import sys\nimport arborseg.space, arborseg.space.sampler, arborseg.train.settings, "
            "arborseg.campaign.config, arborseg.tree\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stdout


def test_sample_distinct_is_seeded_distinct_and_filtered():
    space = Path(__file__).parents[1] / "search_spaces" / "hybrid_2d3d.yaml"
    trees = sample_distinct(space, 4, 3)
    assert [t.id for t in trees] == [t.id for t in sample_distinct(space, 4, 3)]
    assert len({t.id for t in trees}) == 4
    turned_down = trees[0].id
    kept = sample_distinct(space, 4, 3, accept=lambda t: t.id != turned_down)
    assert turned_down not in {t.id for t in kept} and [t.id for t in kept[:3]] == [t.id for t in trees[1:]]
