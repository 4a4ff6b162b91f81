"""Mirage end to end: the miner finds the planted motifs, the GNNs see a distilled graph as the
paper says, bad inputs are refused in one line, and a tiny recipe runs through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from anydistill.cli import main
from anydistill.data.graphs import Graph, collate, undirected
from anydistill.data.motif_graphs import MotifGraphsData, planted
from anydistill.dataset.graph.gnn import KINDS, GraphClassifier
from anydistill.dataset.graph.graphset import GraphSet
from anydistill.dataset.graph.mining import mine
from anydistill.dataset.graph.trees import computation_tree, disjoint_union, tree_labels

HOPS = 2


def planted_tree_labels(name: str) -> set[int]:
    """Labels of the motif's trees that every graph of its class holds."""
    alone, far = planted(name, HOPS)
    labels = tree_labels(alone, HOPS)[HOPS]
    return {labels[v] for v in far}


@pytest.mark.parametrize("motifs", [["house", "cycle"], ["house", "cycle", "grid"]])
def test_kept_patterns_contain_the_planted_motif_trees(motifs: list[str]) -> None:
    data = MotifGraphsData(num_graphs=60 * len(motifs), motifs=motifs)
    train = data.split("train")
    sizes = [sum(g.label == c for g in train) for c in range(len(motifs))]
    _, (candidate,) = mine(train, len(motifs), HOPS, [[round(0.6 * n) for n in sizes]])
    planted = {c: planted_tree_labels(name) for c, name in enumerate(motifs)}
    for c, name in enumerate(motifs):
        assert planted[c], name
        assert planted[c] <= set().union(*(items for k, items, _ in candidate.patterns if k == c)), name
        # A tree of this motif alone (the grid's corners look like the house's roof) is a pattern on its own.
        own = planted[c] - set().union(*(planted[d] for d in planted if d != c))
        assert own and all((c, frozenset({t})) in {(k, items) for k, items, _ in candidate.patterns} for t in own), name
    if len(motifs) == 2:  # house and 5-cycle share no tree: neither class's patterns hold the other's
        assert not planted[0] & set().union(*(items for k, items, _ in candidate.patterns if k == 1))
        assert not planted[1] & set().union(*(items for k, items, _ in candidate.patterns if k == 0))
    assert len(candidate.graphs) == len(candidate.patterns)
    assert all(g.roots.sum() == len(items) for g, (_, items, _) in zip(candidate.graphs, candidate.patterns))


def batch_of(graphs: list[Graph], num_node_labels: int = 3):
    return collate(graphs, num_node_labels)


def small_graph() -> Graph:
    index, kinds = undirected([(0, 1), (1, 2), (2, 0), (2, 3), (3, 4)], [0, 1, 0, 1, 0])
    return Graph(torch.tensor([0, 1, 2, 1, 0]), index, kinds, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_gnn_shapes_and_node_permutation_invariance(kind: str) -> None:
    torch.manual_seed(0)
    model = GraphClassifier(kind, 3, 2, 4, hidden=16, layers=2).eval()
    g = small_graph()
    perm = torch.tensor([3, 0, 4, 1, 2])
    nodes = torch.empty_like(g.node_labels)
    nodes[perm] = g.node_labels
    shuffled = Graph(nodes, perm[g.edge_index].flip(1), g.edge_labels.flip(0), 1)
    out = model(batch_of([g, g, small_graph()]))
    assert out.shape == (3, 4)
    torch.testing.assert_close(model(batch_of([shuffled])), out[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["gin", "gat"])
def test_a_graph_of_all_its_computation_trees_is_the_graph_to_an_l_layer_gnn(kind: str) -> None:
    """Mirage's premise, exactly: pooled at the roots, the L-hop trees of every node give a GIN or
    GAT with L layers the same output as the graph itself (GCN's degree normalisation at the
    leaves differs, so it is only close)."""
    torch.manual_seed(0)
    model = GraphClassifier(kind, 3, 2, 2, hidden=16, layers=HOPS).eval()
    g = small_graph()
    trees = disjoint_union([computation_tree(g, v, HOPS) for v in range(g.num_nodes)], g.label)
    torch.testing.assert_close(model(batch_of([trees])), model(batch_of([g])), rtol=1e-5, atol=1e-5)


def test_graph_set_round_trips_through_a_state_dict() -> None:
    data = MotifGraphsData(num_graphs=40)
    _, candidates = mine(data.split("train"), 2, HOPS, [[10, 10], [5, 5]])
    filled = GraphSet(2, data.num_node_labels)
    filled.fill([(c.supports, [(g, p[1]) for g, p in zip(c.graphs, c.patterns)]) for c in candidates])
    empty = GraphSet(2, data.num_node_labels)
    empty.load_state_dict(filled.state_dict())
    assert empty.num_candidates == 2 and empty.patterns(1) == filled.patterns(1)
    assert [g.num_nodes for g in empty.graphs(1)] == [g.num_nodes for g in candidates[1].graphs]


# ---------------------------------------------------------------- through the CLI

TINY = ["--set", "data.num_graphs=60", "--set", "evaluation.epochs=2", "--set", "evaluation.seeds=2",
        "--set", "evaluation.hidden=16", "--set", "methods.mirage.support=15", "--set", "methods.mirage.support_step=5",
        "--set", "trainer.progress_bar=false"]


def run_cli(tmp_path, *args: str) -> int:
    return main(["run", "graphs/motif-graphs", "--runs", str(tmp_path / "runs"), *args])


@pytest.mark.parametrize("override,fragment", [
    ("data.node_labels=false", "these graphs have no node labels"),
    ("methods.mirage.support=100", "support is above the number of training graphs of a class (class 0: 100 > 24"),
])
def test_bad_inputs_exit_2_with_one_error_line_and_write_nothing(override: str, fragment: str, tmp_path, capsys) -> None:
    assert run_cli(tmp_path, *TINY, "--set", override) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert not (tmp_path / "runs").exists()


def test_itemsets_beyond_the_cap_stop_the_run_in_one_line(tmp_path, capsys) -> None:
    capped = ["--set", "methods.mirage.support=3", "--set", "methods.mirage.support_step=1", "--set", "methods.mirage.max_itemsets=50",
              "--set", "evaluation.baselines=[]"]
    assert run_cli(tmp_path, *TINY, *capped) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "more than 50 frequent itemsets at support 3" in lines[0] and "raise support" in lines[0], lines


def test_tiny_recipe_runs_end_to_end(tmp_path, capsys) -> None:
    assert run_cli(tmp_path, *TINY) == 0
    run = tmp_path / "runs" / "motif-graphs-mirage"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"full-data", "mirage", "random-nodes@mirage", "random-graphs@mirage", "k-center@mirage"}
    row = metrics["mirage"]
    assert row["support"] in ([15, 15], [10, 10]) and len(row["supports_tried"]) == 2
    assert len(row["roc_auc_gin_seeds"]) == 2 and 0 < row["compression"] < 1 and row["mining_over_gnn_training"] > 0
    assert abs(metrics["random-nodes@mirage"]["nodes"] - row["nodes"]) < 40  # node-matched (within one graph per class)
    manifest = json.loads((run / "checkpoints" / "mirage" / "manifest.json").read_text())
    assert manifest["graphs"] >= row["graphs"] and (run / "checkpoints" / "mirage" / "graphset.safetensors").is_file()


def test_tiny_nci_alerts_recipe_runs_end_to_end(tmp_path) -> None:
    pytest.importorskip("rdkit")
    tiny = ["--set", "evaluation.epochs=1", "--set", "evaluation.seeds=1", "--set", "evaluation.hidden=8",
            "--set", "evaluation.models=[gin]", "--set", "trainer.progress_bar=false"]
    assert main(["run", "graphs/nci-alerts", "--runs", str(tmp_path / "runs"), *tiny]) == 0
    row = json.loads((tmp_path / "runs" / "nci-alerts-mirage" / "metrics.json").read_text())["mirage"]
    assert row["graphs"] > 0 and row["support"] in ([615, 274], [595, 254]) and row["compression"] < 0.05
