"""Module trees: YAML round trip, id stability, names, graphs and pictures."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest

from arborseg.errors import TreeError
from arborseg.space import load_space
from arborseg.tree import ModuleTree
from arborseg.viz.treeplot import draw_tree

SPACES = sorted(Path(__file__).parents[1].joinpath("search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("space_path", SPACES, ids=lambda p: p.stem)
def test_yaml_round_trip_is_exact(space_path, tmp_path):
    space = load_space(space_path)
    for seed in range(8):
        tree = space.sample(seed)
        text = tree.to_yaml()
        again = ModuleTree.from_yaml(text)
        assert again == tree
        assert again.id == tree.id
        assert again.to_yaml() == text
        path = tree.save(tmp_path / f"{seed}.yaml")
        assert ModuleTree.load(path).to_yaml() == text


def test_id_is_stable_and_content_based():
    space = load_space(SPACES[0])
    tree = space.sample(1)
    assert len(tree.id) == 40
    assert tree.id == space.sample(1).id
    other = tree.with_window((tree.window[0], tree.window[1] * 2, tree.window[2] * 2))
    assert other.id != tree.id
    # the id ignores provenance (space name, recorded draws)
    data = tree.to_dict()
    data["space"] = "renamed"
    data["choices"] = {}
    assert ModuleTree.from_dict(data).id == tree.id


def test_hand_edited_tree_is_caught():
    tree = load_space(SPACES[0]).sample(0)
    data = tree.to_dict()
    data["window"] = [tree.window[0], 512, 512]
    with pytest.raises(TreeError, match="does not match the content"):
        ModuleTree.from_dict(data, "edited.yaml")
    data.pop("id")
    assert ModuleTree.from_dict(data).window == (tree.window[0], 512, 512)


def test_bad_tree_files(tmp_path):
    with pytest.raises(TreeError, match="no such tree file"):
        ModuleTree.load(tmp_path / "missing.yaml")
    (tmp_path / "x.yaml").write_text("name: 3\n")
    with pytest.raises(TreeError, match="not a module tree"):
        ModuleTree.load(tmp_path / "x.yaml")
    (tmp_path / "w.yaml").write_text("window: [1, -2, 3]\nroot: {type: predictor}\n")
    with pytest.raises(TreeError, match="window"):
        ModuleTree.load(tmp_path / "w.yaml")


def test_names_and_families():
    families = {}
    for path in SPACES:
        space = load_space(path)
        for seed in range(6):
            tree = space.sample(seed)
            families.setdefault(path.stem, set()).add(tree.family)
            assert tree.name.endswith(tree.id[:6])
            assert len(tree.name) < 32
    assert families["unet2d"] == {"2d"}
    assert families["thin3d_unet"] == {"thin3d"}
    assert families["hybrid_2d3d"] == {"hybrid"}
    assert families["hybrid_2d3d_crf"] == {"hybrid+crf"}


def test_graph_is_a_dag_from_input_to_output():
    space = load_space(Path(__file__).parents[1] / "search_spaces" / "hybrid_2d3d.yaml")
    g = space.sample(0).graph()
    assert nx.is_directed_acyclic_graph(g)
    assert nx.has_path(g, "input", "output")
    merges = [n for n, d in g.nodes(data=True) if d["type"] == "merge"]
    assert len(merges) == 1 and g.in_degree(merges[0]) == 2
    types = [d["type"] for _, d in g.nodes(data=True)]
    assert types.count("predictor") == 2 and "spatial_pyramid" in types


def test_picture_is_written(tmp_path):
    tree = load_space(SPACES[0]).sample(0)
    png = tmp_path / "tree.png"
    svg = tmp_path / "tree.svg"
    draw_tree(tree, png)
    draw_tree(tree, svg)
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in svg.read_text()[:500]
