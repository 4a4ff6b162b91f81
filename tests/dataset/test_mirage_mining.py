"""Mirage's exact pieces: canonical computation-tree labels and FP-growth."""

from __future__ import annotations

import itertools
import random

import networkx as nx
import pytest
import torch

from anydistill.data.graphs import Graph, undirected
from anydistill.dataset.graph.fpgrowth import TooManyItemsets, fp_growth
from anydistill.dataset.graph.trees import computation_tree, tree_labels


def random_graph(seed: int, n: int = 9, m: int = 12, node_kinds: int = 2, edge_kinds: int = 2) -> Graph:
    rng = random.Random(seed)
    g = nx.gnm_random_graph(n, m, seed=seed)
    edges = list(g.edges())
    index, labels = undirected(edges, [rng.randrange(edge_kinds) for _ in edges])
    return Graph(torch.tensor([rng.randrange(node_kinds) for _ in range(n)]), index, labels, 0)


def permuted(graph: Graph, perm: list[int]) -> Graph:
    """The same graph with node v renamed perm[v] and its edges stored in another order."""
    p = torch.tensor(perm)
    nodes = torch.empty_like(graph.node_labels)
    nodes[p] = graph.node_labels
    order = torch.randperm(graph.edge_index.shape[1], generator=torch.Generator().manual_seed(1))
    return Graph(nodes, p[graph.edge_index][:, order], graph.edge_labels[order], graph.label)


def as_digraph(tree) -> nx.DiGraph:
    out = nx.DiGraph()
    for position, label in enumerate(tree.node_labels):
        out.add_node(position, label=label)
    for child in range(1, len(tree.parent)):
        out.add_edge(tree.parent[child], child, label=tree.edge_labels[child])
    return out


@pytest.mark.parametrize("seed", range(3))
def test_tree_label_is_invariant_to_node_order(seed: int) -> None:
    graph = random_graph(seed)
    perm = list(range(graph.num_nodes))
    random.Random(seed).shuffle(perm)
    before, after = tree_labels(graph, 3), tree_labels(permuted(graph, perm), 3)
    for depth in range(4):
        assert [after[depth][perm[v]] for v in range(graph.num_nodes)] == before[depth]


def test_tree_label_separates_exactly_the_non_isomorphic_trees() -> None:
    """Over every pair of nodes of a few random graphs: equal labels iff isomorphic labelled rooted trees."""
    # Few labels, so that some trees coincide: both outcomes are checked.
    graphs = [random_graph(seed, n=7, m=8, node_kinds=1 + seed % 2, edge_kinds=1 + seed // 2) for seed in range(4)]
    nodes = [(g, v) for g in graphs for v in range(g.num_nodes)]
    labels = [tree_labels(g, 2)[2][v] for g, v in nodes]
    trees = [as_digraph(computation_tree(g, v, 2)) for g, v in nodes]
    same = lambda a, b: a["label"] == b["label"]
    equal_pairs = 0
    for i, j in itertools.combinations(range(len(nodes)), 2):
        isomorphic = len(trees[i]) == len(trees[j]) and nx.is_isomorphic(trees[i], trees[j], node_match=same, edge_match=same)
        assert (labels[i] == labels[j]) == isomorphic, (i, j)
        equal_pairs += isomorphic
    assert equal_pairs > 0  # the check saw both outcomes


def test_trees_with_the_same_labels_per_depth_but_another_shape_differ() -> None:
    # r has children a, b; graph 1 hangs (y, y) under a and (z, z) under b, graph 2 (y, z) under both.
    def graph(edges: list[tuple[int, int]], labels: list[int]) -> Graph:
        index, kinds = undirected(edges, [0] * len(edges))
        return Graph(torch.tensor(labels), index, kinds, 0)

    one = graph([(0, 1), (0, 2), (1, 3), (1, 4), (2, 5), (2, 6)], [0, 1, 1, 2, 2, 3, 3])
    two = graph([(0, 1), (0, 2), (1, 3), (1, 4), (2, 5), (2, 6)], [0, 1, 1, 2, 3, 2, 3])
    assert tree_labels(one, 1)[1][0] == tree_labels(two, 1)[1][0]
    assert tree_labels(one, 2)[2][0] != tree_labels(two, 2)[2][0]


def test_tree_partition_matches_networkx_weisfeiler_lehman() -> None:
    graph = random_graph(7, n=12, m=16)
    g = nx.Graph()
    for v, label in enumerate(graph.node_labels.tolist()):
        g.add_node(v, label=str(label))
    for (u, v), e in zip(graph.edge_index.t().tolist(), graph.edge_labels.tolist()):
        g.add_edge(u, v, label=str(e))
    hashes = nx.weisfeiler_lehman_subgraph_hashes(g, node_attr="label", edge_attr="label", iterations=3)
    ours = tree_labels(graph, 3)
    for depth in range(1, 4):
        for u, v in itertools.combinations(range(graph.num_nodes), 2):
            assert (ours[depth][u] == ours[depth][v]) == (hashes[u][depth - 1] == hashes[v][depth - 1])


def test_graph_without_node_labels_is_refused_in_one_line() -> None:
    index, kinds = undirected([(0, 1)], [0])
    with pytest.raises(ValueError) as error:
        tree_labels(Graph(None, index, kinds, 0), 2)
    assert "no node labels" in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------- FP-growth


def random_transactions(seed: int, count: int = 60, items: int = 12) -> list[list[int]]:
    rng = random.Random(seed)
    return [sorted(rng.sample(range(items), rng.randint(1, 7))) for _ in range(count)]


def brute_force(transactions: list[list[int]], min_support: int) -> dict[frozenset, int]:
    rows = [set(t) for t in transactions]
    items = sorted(set().union(*rows))
    found = {}
    for size in range(1, len(items) + 1):
        level = {}
        for itemset in itertools.combinations(items, size):
            support = sum(set(itemset) <= row for row in rows)
            if support >= min_support:
                level[frozenset(itemset)] = support
        if not level:
            break
        found.update(level)
    return found


@pytest.mark.parametrize("seed,min_support", [(0, 3), (1, 6), (2, 10), (3, 20)])
def test_fp_growth_equals_brute_force(seed: int, min_support: int) -> None:
    transactions = random_transactions(seed, count=40, items=9)
    assert fp_growth(transactions, min_support) == brute_force(transactions, min_support)


@pytest.mark.parametrize("seed,min_support", [(0, 4), (1, 8), (2, 12), (3, 25), (4, 2)])
def test_fp_growth_itemsets_equal_mlxtend(seed: int, min_support: int) -> None:
    pytest.importorskip("mlxtend")
    import pandas as pd
    from mlxtend.frequent_patterns import fpgrowth
    from mlxtend.preprocessing import TransactionEncoder

    transactions = random_transactions(seed)
    encoder = TransactionEncoder()
    table = pd.DataFrame(encoder.fit(transactions).transform(transactions), columns=encoder.columns_)
    found = fpgrowth(table, min_support=(min_support - 0.5) / len(transactions), use_colnames=True)  # mlxtend takes a fraction
    theirs = {frozenset(itemset): round(support * len(transactions)) for support, itemset in zip(found["support"], found["itemsets"])}
    assert fp_growth(transactions, min_support) == theirs


@pytest.mark.parametrize("seed,min_support", [(0, 4), (1, 8), (2, 12), (3, 25), (4, 2)])
def test_fp_growth_itemsets_equal_pyfpgrowth_where_it_finds_them(seed: int, min_support: int) -> None:
    """pyfpgrowth 1.0 (the official miner) returns no wrong itemset or support, but it drops an
    itemset whose conditional FP-tree branches (about 11 % of them on such data): ours has them all."""
    pyfpgrowth = pytest.importorskip("pyfpgrowth")
    # Every transaction lists its items in one order: pyfpgrowth breaks support ties by that order.
    transactions = random_transactions(seed)
    theirs = pyfpgrowth.find_frequent_patterns(transactions, min_support)
    ours = {tuple(sorted(itemset)): n for itemset, n in fp_growth(transactions, min_support).items()}
    assert {itemset: ours.get(itemset) for itemset in theirs} == theirs
    assert ours == {tuple(sorted(k)): n for k, n in brute_force(transactions, min_support).items()}


def test_pyfpgrowth_drops_an_itemset_whose_conditional_tree_branches() -> None:
    pyfpgrowth = pytest.importorskip("pyfpgrowth")
    transactions = [[1, 2, 3, 4], [0, 4], [0, 3]]  # item 4's conditional tree: two branches (3) and (0)
    assert (4,) not in pyfpgrowth.find_frequent_patterns(transactions, 1)
    assert fp_growth(transactions, 1)[frozenset({4})] == 2


def test_fp_growth_counts_each_item_once_per_transaction_and_caps_the_output() -> None:
    assert fp_growth([[1, 1, 2], [1, 2], [2]], 2) == {frozenset({1}): 2, frozenset({2}): 3, frozenset({1, 2}): 2}
    with pytest.raises(TooManyItemsets):
        fp_growth([list(range(12))] * 3, 2, max_itemsets=100)
