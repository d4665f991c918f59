"""Problem 1: parameter counts, full rank == dense, Eckart-Young, one SVD for every rank, the script itself."""
import pytest
import torch

import p1_svd
from common.mnist_mlp import MLP
from common.svd import LowRankLinear, compress, cost, low_rank, svd, truncate
from conftest import read_json


def tiny_mlp(seed=0, width=12, depth=3):
    torch.manual_seed(seed)
    return MLP(width=width, depth=depth, n_in=784).double().eval()


def real_count(module):
    """Every number the module stores: parameters and buffers (the rank-D factors are buffers)."""
    return sum(t.numel() for t in module.parameters()) + sum(t.numel() for t in module.buffers())


def test_homework_parameter_counts():
    model = MLP()
    assert cost(model, 0)[0] == sum(p.numel() for p in model.parameters()) == 5_012_490
    assert cost(model, 20)[0] == 215_470


@pytest.mark.parametrize("rank", [1, 3, 5, 12, None])
def test_parameter_formula_matches_module(rank):
    model = tiny_mlp()
    factors = [svd(layer.weight.detach()) for layer in model.hidden]
    assert cost(model, rank)[0] == real_count(compress(model, factors, rank))


def test_full_rank_reproduces_baseline_logits():
    model = tiny_mlp()
    factors = [svd(layer.weight.detach()) for layer in model.hidden]
    x = torch.rand(32, 784, dtype=torch.float64)
    full = compress(model, factors, None).double()
    torch.testing.assert_close(full(x), model(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("rank", [1, 4, 9, 19, 20])
def test_eckart_young_error_is_norm_of_dropped_singular_values(rank):
    g = torch.Generator().manual_seed(rank)
    W = torch.randn(30, 20, dtype=torch.float64, generator=g)
    U, S, Vh = svd(W)
    W_r = low_rank(U, S, Vh, rank)
    assert torch.linalg.matrix_rank(W_r) == rank
    # the oracle, without an SVD: the squared singular values are the eigenvalues of W^T W, so the best
    # rank-r error is the square root of the sum of its 20 - r smallest eigenvalues (0 at full rank)
    eigenvalues = torch.linalg.eigvalsh(W.T @ W)  # ascending
    dropped = eigenvalues[:20 - rank].clamp(min=0).sum().sqrt()
    assert torch.isclose(torch.linalg.norm(W - W_r), dropped, rtol=1e-8, atol=1e-7)
    # and no other rank-r matrix is closer: random ones, and small perturbations of the factors
    for _ in range(20):
        A = torch.randn(30, rank, dtype=torch.float64, generator=g)
        B = torch.randn(rank, 20, dtype=torch.float64, generator=g)
        other = low_rank(U + 1e-2 * torch.randn(U.shape, dtype=torch.float64, generator=g), S, Vh, rank)
        assert torch.linalg.norm(W - A @ B) > torch.linalg.norm(W - W_r)
        assert torch.linalg.norm(W - other) >= torch.linalg.norm(W - W_r) - 1e-12


def test_low_rank_layer_computes_factorized_product():
    W = torch.randn(7, 5, dtype=torch.float64)
    b = torch.randn(7, dtype=torch.float64)
    U, S, Vh = svd(W)
    layer = LowRankLinear(*truncate(U, S, Vh, 3), b)
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ low_rank(U, S, Vh, 3).T + b)


def test_one_svd_serves_every_rank(tmp_path, monkeypatch):
    calls = []

    def counting_svd(W):
        calls.append(tuple(W.shape))
        return svd(W)

    monkeypatch.setattr(p1_svd, "svd", counting_svd)
    p1_svd.main(["--dry-run", "--quiet", "--seeds", "1", "--out", str(tmp_path / "out"),
                 "--ckpt-dir", str(tmp_path / "ckpt")])
    assert calls == [(1024, 784)] + [(1024, 1024)] * 4  # five decompositions for six ranks
    metrics = read_json(tmp_path / "out" / "metrics.json")
    assert set(metrics["ranks"]) == {"dense", "10", "20", "50", "100", "200", "full"}


def test_dry_run_writes_metrics_and_figures(dry_p1):
    out, ckpt = dry_p1
    metrics = read_json(out / "metrics.json")
    assert metrics["dry_run"] is True
    assert metrics["ranks"]["20"]["params"] == 215_470
    # full rank is the baseline itself (up to float32 rounding in the factorized product)
    assert abs(metrics["ranks"]["full"]["test_acc"]["mean"] - metrics["baseline_test_acc"]["mean"]) <= 2e-3
    for name in ("accuracy_vs_rank.png", "params_vs_rank.png", "singular_values.png", "config.json"):
        assert (out / name).stat().st_size > 0
    assert (ckpt / "p1_baseline_seed0.pt").exists()


def test_same_seed_same_numbers(dry_p1, tmp_path):
    out, _ = dry_p1
    p1_svd.main(["--dry-run", "--quiet", "--seeds", "1", "--out", str(tmp_path / "out"),
                 "--ckpt-dir", str(tmp_path / "ckpt")])
    a, b = read_json(out / "metrics.json"), read_json(tmp_path / "out" / "metrics.json")
    assert a["seeds"][0]["rank_test_acc"] == b["seeds"][0]["rank_test_acc"]
    assert a["seeds"][0]["history"][0]["val_loss"] == b["seeds"][0]["history"][0]["val_loss"]
