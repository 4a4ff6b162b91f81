"""Graph sources: generated or read from installed packages (never downloaded), split 80/10/10 by class."""

from __future__ import annotations

import socket

import pytest
import torch

from anydistill.data.graphs import collate, stratified_split
from anydistill.data.motif_graphs import MotifGraphsData
from anydistill.data.nci_alerts import NCIAlertsData, _alert_graphs
from anydistill.data.wehi_pains import WEHIPainsData


def test_split_is_stratified_seeded_and_disjoint() -> None:
    labels = [0] * 70 + [1] * 30
    rows = stratified_split(labels, seed=3)
    assert [len(rows[s]) for s in ("train", "val", "test")] == [80, 10, 10]
    assert sum(labels[i] for i in rows["val"]) == 3 and sum(labels[i] for i in rows["test"]) == 3
    assert sorted(rows["train"] + rows["val"] + rows["test"]) == list(range(100))
    assert stratified_split(labels, seed=3) == rows != stratified_split(labels, seed=4)


def test_motif_graphs_are_deterministic_and_balanced() -> None:
    one, two = MotifGraphsData(num_graphs=100), MotifGraphsData(num_graphs=100)
    assert one.fingerprint("train") == two.fingerprint("train")
    assert one.fingerprint("train") != MotifGraphsData(num_graphs=100, seed=1).fingerprint("train")
    train = one.split("train")
    assert len(train) == 80 and sum(g.label for g in train) == 40
    g = train[0]
    assert g.num_nodes == 25 and (g.node_labels == 0).sum() == 5 and g.edge_index.shape[1] == 2 * (19 + 6 + 1) - 2 * (g.label == 1)
    batch = collate(train[:3], one.num_node_labels)
    assert batch.x.shape == (75, 3) and batch.batch.tolist() == [0] * 25 + [1] * 25 + [2] * 25 and batch.pool.all()


def test_motif_graph_options_add_noise_where_asked() -> None:
    clean = MotifGraphsData(num_graphs=100)
    noisy = MotifGraphsData(num_graphs=100, label_noise=0.1, noise_edges=3)
    flipped = sum(a.label != b.label for a, b in zip(clean.split("train"), noisy.split("train")))
    assert flipped == 8  # 10 % of the 80 training graphs; validation and test stay clean
    assert [g.label for g in clean.split("test")] == [g.label for g in noisy.split("test")]
    extra = [b.edge_index.shape[1] - a.edge_index.shape[1] for a, b in zip(clean.split("test"), noisy.split("test"))]
    assert max(extra) == 6 and min(extra) >= 0
    assert MotifGraphsData(num_graphs=10, node_labels=False).split("train")[0].node_labels is None
    assert MotifGraphsData(num_graphs=30, motifs=["house", "cycle", "grid"]).num_classes == 3
    with pytest.raises(ValueError, match="at least 2 different motifs"):
        MotifGraphsData(motifs=["house", "house"])


def test_nci_alerts_reads_the_rdkit_wheel() -> None:
    pytest.importorskip("rdkit")
    data = NCIAlertsData()
    graphs = data.split("train") + data.split("val") + data.split("test")
    assert len(graphs) == 4991 and round(sum(g.label for g in graphs) / len(graphs), 3) == 0.229
    nodes = torch.cat([g.node_labels for g in graphs])
    edges = torch.cat([g.edge_labels for g in graphs])
    assert 0 <= nodes.min() and nodes.max() < data.num_node_labels and edges.max() < data.num_edge_labels
    assert round(sum(g.label for g in data.split("val")) / len(data.split("val")), 2) == 0.23


def test_wehi_pains_labels_are_computed_once_and_cached(tmp_path, monkeypatch) -> None:
    pytest.importorskip("rdkit")
    first = WEHIPainsData(limit=300, cache_dir=str(tmp_path))
    labels = [g.label for g in first.split("train")]
    (cache,) = tmp_path.glob("wehi-pains-*.json")
    assert 0 < sum(labels) < len(labels) and first.num_node_labels == 14

    import rdkit.Chem.FilterCatalog as filters

    monkeypatch.setattr(filters, "FilterCatalog", None)  # a second load must not match again
    assert [g.label for g in WEHIPainsData(limit=300, cache_dir=str(tmp_path)).split("train")] == labels
    cache.write_text('{"labels": [1, 0]}')  # stale: another length
    monkeypatch.undo()
    assert [g.label for g in WEHIPainsData(limit=300, cache_dir=str(tmp_path)).split("train")] == labels


def test_graph_sources_download_nothing(monkeypatch, tmp_path) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a graph source tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    assert len(MotifGraphsData(num_graphs=20, seed=5).split("train")) == 16
    if NCIAlertsData.missing_package() is None:
        _alert_graphs.cache_clear()  # read the file again, with the network blocked
        assert len(NCIAlertsData(split_seed=2).split("test")) > 400
        assert len(WEHIPainsData(limit=50, cache_dir=str(tmp_path)).split("val")) == 5
