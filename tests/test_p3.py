"""Problem 3: the straight-through gradient, the subspace tracker, parameter counts, the script and its benchmark."""
import pytest
import torch
import torch.nn.functional as F

import p3_svd_ste as p3
from common.mnist_mlp import MLP
from common.svd import compress, cost, low_rank, svd
from common.utils import UserError
from conftest import assert_clean_error, read_json, run_script


def orthonormal(n, k, gen):
    return torch.linalg.qr(torch.randn(n, k, dtype=torch.float64, generator=gen))[0]


def with_spectrum(S, out, gen):
    """A random (out, len(S)) matrix with singular values S."""
    return orthonormal(out, len(S), gen) @ torch.diag(S) @ orthonormal(len(S), len(S), gen).T


def error_ratio(tracker, W):
    """||W - W_hat||_F over the optimal rank-r error, the norm of the dropped singular values (1.0 = optimal)."""
    W_hat = (tracker.U * tracker.S) @ tracker.Vh
    return (torch.linalg.norm(W - W_hat) / svd(W)[1][tracker.rank:].norm()).item()


# ----------------------------------------------------------------------------- the straight-through gradient

@pytest.mark.parametrize("rank", [1, 3, 5])  # below full rank (6), where the projection is not the identity
def test_ste_gradient_is_that_of_a_linear_layer_with_weight_w_hat(rank):
    gen = torch.Generator().manual_seed(rank)
    W, b = torch.randn(8, 6, dtype=torch.float64, generator=gen), torch.randn(8, dtype=torch.float64, generator=gen)
    x = torch.randn(5, 6, dtype=torch.float64, generator=gen)
    probe = torch.randn(5, 8, dtype=torch.float64, generator=gen)  # a loss with a non-trivial dL/dy

    layer = p3.SVDSTELinear(W, b, rank, oversample=2, refresh_every=1).train()  # exact SVD at every step
    x1 = x.clone().requires_grad_()
    (layer(x1) * probe).sum().backward()

    W_hat = low_rank(*svd(W), rank).requires_grad_()  # the oracle: a plain linear layer with weight W_hat
    b2, x2 = b.clone().requires_grad_(), x.clone().requires_grad_()
    y = F.linear(x2, W_hat, b2)
    (y * probe).sum().backward()

    torch.testing.assert_close(layer(x), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, W_hat.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, b2.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=1e-12)

    # not the true derivative of the projection: autograd through torch.linalg.svd gives something else
    W3 = W.clone().requires_grad_()
    (F.linear(x, low_rank(*svd(W3), rank), b) * probe).sum().backward()
    assert not torch.allclose(W3.grad, W_hat.grad, atol=1e-3)


def test_ste_function_alone():
    gen = torch.Generator().manual_seed(0)
    W, b, x = (torch.randn(*s, dtype=torch.float64, generator=gen) for s in [(7, 4), (7,), (3, 4)])
    U, S, Vh = svd(W)
    U, S, Vh = U[:, :2], S[:2], Vh[:2]
    W.requires_grad_()
    torch.autograd.gradcheck(lambda x_, b_: p3.LowRankSTE.apply(x_, W, U, S, Vh, b_),
                             (x.requires_grad_(), b.requires_grad_()))  # exact in x and b
    g = torch.randn(3, 7, dtype=torch.float64, generator=gen)
    (W_grad,) = torch.autograd.grad(p3.LowRankSTE.apply(x, W, U, S, Vh, b), W, g)
    torch.testing.assert_close(W_grad, g.T @ x, rtol=1e-14, atol=1e-14)


# ----------------------------------------------------------------------------- the subspace tracker

def test_tracker_stays_within_one_percent_of_optimal_and_refresh_restores_it():
    gen = torch.Generator().manual_seed(0)
    out, n_in, rank = 120, 100, 20
    S = torch.cat([torch.linspace(10, 5, rank), torch.linspace(2, 0.1, n_in - rank)]).double()  # a gap at 20
    W = with_spectrum(S, out, gen)
    tracker = p3.SubspaceTracker(W, rank, oversample=10, refresh_every=0)  # no refresh: the iteration alone
    assert error_ratio(tracker, W) == pytest.approx(1.0, abs=1e-12)  # it starts from the exact SVD
    for _ in range(200):  # random small steps; together they move W by about 10%
        W = W + 2e-3 * torch.randn(out, n_in, dtype=torch.float64, generator=gen)
        tracker.update(W)
        assert error_ratio(tracker, W) <= 1.01

    jumped = with_spectrum(S, out, gen)  # a large jump: a new matrix, unrelated singular vectors
    tracker.update(jumped)
    assert error_ratio(tracker, jumped) > 1.01  # one iteration cannot follow that ...
    tracker.refresh(jumped)
    assert error_ratio(tracker, jumped) == pytest.approx(1.0, abs=1e-12)  # ... an exact refresh can


def test_periodic_refresh_and_no_op_update():
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(30, 20, dtype=torch.float64, generator=gen)
    tracker = p3.SubspaceTracker(W, 4, oversample=3, refresh_every=3)
    exact = svd(W)
    for _ in range(2):  # W does not change: the subspace iteration keeps the exact answer
        tracker.update(W)
        torch.testing.assert_close((tracker.U * tracker.S) @ tracker.Vh, low_rank(*exact, 4), rtol=1e-10, atol=1e-10)
    jumped = torch.randn(30, 20, dtype=torch.float64, generator=gen)
    tracker.update(jumped)  # the 3rd update is an exact SVD
    torch.testing.assert_close(tracker.S, svd(jumped)[1][:4], rtol=1e-12, atol=1e-12)
    assert int(tracker.updates) == 3


def test_tracker_state_survives_a_checkpoint():
    gen = torch.Generator().manual_seed(2)
    W = torch.randn(40, 30, dtype=torch.float64, generator=gen)
    a = p3.SubspaceTracker(W, 5, oversample=5, refresh_every=4)
    steps = [W + 0.1 * torch.randn(40, 30, dtype=torch.float64, generator=gen) for _ in range(6)]
    for Wi in steps[:3]:
        a.update(Wi)
    b = p3.SubspaceTracker(torch.randn(40, 30, dtype=torch.float64, generator=gen), 5, oversample=5, refresh_every=4)
    b.load_state_dict(a.state_dict())  # what fit's checkpoint and --resume do
    for Wi in steps[3:]:
        a.update(Wi)
        b.update(Wi)
    for name, t in a.state_dict().items():
        assert torch.equal(t, b.state_dict()[name]), name


# ----------------------------------------------------------------------------- the network and the script

def test_rank_network_parameter_count_and_logits():
    model = MLP()
    net, factors = p3.rank_network(model, 20)
    stored = sum(t.numel() for t in net.parameters()) + sum(t.numel() for t in net.buffers())
    assert stored == cost(model, 20)[0] == 215_470

    torch.manual_seed(0)
    small = MLP(width=16, depth=3).double()
    ste = p3.ste_network(small, rank=4, oversample=2, refresh_every=0).double().eval()
    x = torch.rand(8, 784, dtype=torch.float64)
    reference = compress(small, [svd(layer.weight.detach()) for layer in small.hidden], 4).double()
    torch.testing.assert_close(ste(x), reference(x), rtol=1e-10, atol=1e-10)  # the forward pass is rank 4
    torch.testing.assert_close(p3.dense_network(ste).double()(x), small(x), rtol=1e-12, atol=1e-12)


def test_tracking_errors_of_an_exact_tracker():
    torch.manual_seed(0)
    small = MLP(width=16, depth=3).double()
    ste = p3.ste_network(small, rank=4, oversample=3, refresh_every=0).double()
    with torch.no_grad():
        ste.hidden[1].weight.add_(1.0 * torch.randn_like(ste.hidden[1].weight))  # a jump the tracker has not seen
    ratios, distances = p3.tracking_errors(ste, p3.rank_network(ste, 4)[1])
    assert ratios[0] == pytest.approx(1.0, abs=1e-10) and distances[0] == pytest.approx(0.0, abs=1e-10)
    assert ratios[1] > 1.0 + 1e-6 and distances[1] > 1e-3  # after a jump one iteration is not exact


def test_dry_run(dry_p1, tmp_path):
    p1_out, ckpt = dry_p1
    proc = run_script("p3_svd_ste.py", "--dry-run", "--quiet", "--seeds", "1", "--out", tmp_path / "out",
                      "--ckpt-dir", ckpt)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_json(tmp_path / "out" / "metrics.json")
    assert metrics["dry_run"] is True and metrics["params"] == 215_470
    for name in ("finetune_curve.png", "tracking_error.png", "singular_values.png", "config.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    run = metrics["seeds"][0]
    # it starts from P1's rank-20 network, built the same way from the same baseline
    assert run["initial_test_acc"] == read_json(p1_out / "metrics.json")["seeds"][0]["rank_test_acc"]["20"]
    assert metrics["tracking_error_ratio_max"] <= 1.01 and metrics["tracking_distance_max"] < 0.5
    assert (ckpt / "p3_ste_seed0.pt").exists()


def test_bad_input(tmp_path):
    with pytest.raises(UserError, match="p1_svd.py"):
        p3.main(["--dry-run", "--quiet", "--out", str(tmp_path / "o"), "--ckpt-dir", str(tmp_path / "empty")])
    proc = run_script("p3_svd_ste.py", "--dry-run", "--rank", "900", "--out", tmp_path / "o")
    assert_clean_error(proc, "--rank")
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_benchmark_dry_run(dry_p1, tmp_path):
    _, ckpt = dry_p1
    proc = run_script("benchmarks/p3_svd_step.py", "--dry-run", "--out", tmp_path, "--ckpt-dir", ckpt)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = read_json(tmp_path / "benchmark.json")
    assert list(result["methods"]) == ["plain", "exact", "lowrank", "tracker", "no_oversampling"]
    assert result["methods"]["plain"]["ratio_to_plain"] == 1.0
    assert result["methods"]["exact"]["error_ratio_max"] == pytest.approx(1.0, abs=1e-4)  # float32 rounding
    assert result["methods"]["tracker"]["error_ratio_max"] <= 1.01
    assert "P3, subspace tracker" in proc.stdout
