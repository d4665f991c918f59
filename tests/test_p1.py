"""Problem 1: parameter counts, full rank == dense, Eckart-Young, one SVD for every rank, the script itself."""
import pytest
import torch
from torch.utils.data import TensorDataset

import p1_svd
from common.mnist import figures, fused
from common.mnist.data import shifted
from common.mnist.fused import fast, rank_d_product
from common.mnist.mlp import MLP, with_hidden
from common.train import load_checkpoint, n_params
from p1_svd import LowRankLinear, compress, cost, dense_cost, svd, truncate
from conftest import AUTO_PRECISION, copy_checkpoints, low_rank, read_json, run_main


def tiny_mlp(seed=0, width=12, depth=3):
    torch.manual_seed(seed)
    return MLP(width=width, depth=depth, n_in=784).double().eval()


def test_homework_parameter_counts():
    model = MLP()
    assert dense_cost(model)[0] == n_params(model) == 5_012_490
    assert cost(model, 20)[0] == 215_470


@pytest.mark.parametrize("rank", [1, 3, 5, 12, 40])  # tiny_mlp is 12 wide: 12 and above keep every value
def test_parameter_formula_matches_module(rank):
    model = tiny_mlp()
    factors = [svd(layer.weight.detach()) for layer in model.hidden]
    assert cost(model, rank)[0] == n_params(compress(model, factors, rank), buffers=True)  # the factors are buffers


def test_with_hidden_swaps_the_hidden_layers_and_copies_the_head():
    model = tiny_mlp()
    layers = [torch.nn.Linear(784, 12).double(), torch.nn.Linear(12, 12).double(), torch.nn.Identity()]
    net = with_hidden(model, layers, dropout=0.3)
    assert list(net.hidden) == layers and net.dropout.p == 0.3
    assert torch.equal(net.head.weight, model.head.weight) and net.head.weight is not model.head.weight
    x = torch.rand(4, 784, dtype=torch.float64)
    h = torch.relu(layers[1](torch.relu(layers[0]((x - 0.1307) / 0.3081))))  # the identity layer, then its ReLU
    torch.testing.assert_close(net.double().eval()(x), model.head(torch.relu(h)))
    with pytest.raises(ValueError, match="3 hidden layers"):
        with_hidden(model, layers[:2])


def test_full_rank_reproduces_baseline_logits():
    model = tiny_mlp()
    factors = [svd(layer.weight.detach()) for layer in model.hidden]
    x = torch.rand(32, 784, dtype=torch.float64)
    full = compress(model, factors, 12).double()  # the width: full rank
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


@pytest.mark.skipif(fused.LINEAR_POINTWISE is None, reason="this torch has no oneDNN linear_pointwise")
def test_the_fused_rank_d_forward_equals_the_plain_one():
    """At a large batch, without grad, a rank-D layer's ReLU(U (S * (Vh x)) + b) is two oneDNN products with the ReLU
    fused: the same fp32 numbers to rounding (1e-5 relative); below the batch threshold or with grad, the plain path."""
    torch.manual_seed(0)
    model = MLP(width=96, depth=3).eval()
    net = fast(compress(model, [svd(layer.weight.detach()) for layer in model.hidden], 20))
    x = torch.rand(fused.FUSED_MIN_BATCH, 784)
    with torch.no_grad():
        assert fused.fused_linear_pays(x) and not fused.fused_linear_pays(x[:-1])
        fused_logits = net(x)
        layer = net.hidden[0]
        factors = (layer.U, layer.S, layer.Vh, layer.bias)
        torch.testing.assert_close(rank_d_product(x, *factors, relu=True, fused=True), layer(x).relu_(), rtol=1e-5,
                                   atol=1e-6)
    assert not fused.fused_linear_pays(x)  # grad enabled
    plain = net(x)
    torch.testing.assert_close(fused_logits, plain, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # and at full rank, fused, the dense network's logits
        full = fast(compress(model, [svd(layer.weight.detach()) for layer in model.hidden], 96))
        torch.testing.assert_close(full(x), model(x), rtol=1e-4, atol=1e-5)


def test_the_rank_d_network_gathers_its_factors_again_after_a_conversion():
    model = tiny_mlp()
    net = fast(compress(model, [svd(layer.weight.detach()) for layer in model.hidden], 5)).double()
    x = torch.rand(4, 784, dtype=torch.float64)
    before = net(x)  # gathers the float64 factors
    net.float()  # new buffers: a forward on the old ones would fail on dtypes
    after = net(x.float())
    assert after.dtype == torch.float32 and torch.allclose(after, before.float(), atol=1e-5)


def test_one_svd_serves_every_rank(monkeypatch):
    calls = []

    def counting_svd(W):
        calls.append(tuple(W.shape))
        return svd(W)

    monkeypatch.setattr(p1_svd, "svd", counting_svd)
    model = tiny_mlp().float()
    g = torch.Generator().manual_seed(0)
    test_set = TensorDataset(torch.rand(50, 28, 28, generator=g), torch.randint(0, 10, (50,), generator=g))
    factors, test_acc, accs = p1_svd.rank_d_accuracy(model, [2, 5, 12], test_set, "cpu")
    assert calls == [(12, 784), (12, 12), (12, 12)] and len(factors) == 3  # one decomposition per layer
    assert set(accs) == {"2", "5", "full"} and accs["full"] == test_acc


def test_ranks_are_ints_and_full_is_the_width():
    args = p1_svd.get_args(["--ranks", "20", "full", "20", "5"])[0]
    assert args.ranks == [5, 20, 1024] and p1_svd.rank_name(1024, 1024) == "full" and p1_svd.rank_name(20, 1024) == "20"
    assert p1_svd.get_args([])[0].ranks == [10, 20, 50, 100, 200, 1024]
    assert p1_svd.get_args(["--dry-run"])[0].ranks == [10, 20, 50, 64]  # below the dry run's width of 64, and full
    with pytest.raises(SystemExit):
        p1_svd.get_args(["--ranks", "1025"])


def test_dry_run_defaults_to_a_narrow_network_unless_told():
    assert p1_svd.get_args([])[0].width == 1024 and p1_svd.get_args([])[0].batch_size == 512
    args, train = p1_svd.get_args(["--dry-run"])
    assert (args.width, args.batch_size, args.epochs) == (64, 64, 1)
    assert p1_svd.get_args(["--dry-run", "--width", "32", "--batch-size", "8"])[0].width == 32
    assert set(train.values(args)) == {"width", "epochs", "batch_size", "lr", "weight_decay", "dropout", "shift",
                                       "tail_decay", "tail_rank", "refresh", "precision"}


def test_shifted_moves_each_digit_by_its_own_whole_pixel_offset():
    torch.manual_seed(0)
    x = torch.zeros(64, 28, 28)
    x[:, 10:18, 9:20] = torch.rand(64, 8, 11)  # ink away from the border: a shift of 2 loses none of it
    y = shifted(x, 2)
    offsets = set()
    for a, b in zip(x, y):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(torch.roll(b, (dy, dx), (0, 1)), a)]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 10  # per digit, not one offset for the batch
    assert torch.equal(shifted(x, 0), x)


def test_tail_decay_is_the_energy_beyond_rank_r_and_carries_its_state():
    """Right after a refresh the decay term is (decay / 2) * sum of the dropped squared singular values (an exact
    SVD oracle); between refreshes the bases stay, and they are state_dict buffers (the checkpoint carries them)."""
    model = tiny_mlp(width=12)
    batch = (torch.rand(5, 28, 28, dtype=torch.float64), torch.randint(0, 10, (5,)))
    plain = p1_svd.BaselineLoss(model, 0, 0.0, 4, 3).double()
    decay = p1_svd.BaselineLoss(model, 0, 0.5, 4, 3).double()
    dropped = sum(torch.linalg.svdvals(layer.weight)[4:].square().sum() for layer in model.hidden)
    torch.testing.assert_close(decay(model, batch) - plain(model, batch), 0.25 * dropped)
    assert decay.step.item() == 1 and set(decay.state_dict()) == {*(f"{n}{i}" for n in "UV" for i in range(3)), "step"}
    U0 = decay.U0.clone()
    with torch.no_grad():
        model.hidden[0].weight.mul_(2)  # not refreshed until step 3: the old bases
    decay(model, batch)
    assert torch.equal(decay.U0, U0)


def test_the_tail_energy_and_its_gradient_are_the_formulas():
    """TailEnergy (the tail decay under the bf16 policy) in float64: the energy beyond rank R and autograd's gradient
    of it, which is twice the tail (the projection's own share vanishes for orthonormal bases); in bf16, close."""
    torch.manual_seed(0)
    W = torch.randn(12, 9, dtype=torch.float64, requires_grad=True)
    U, _, Vh = torch.linalg.svd(torch.randn(12, 9, dtype=torch.float64), full_matrices=False)
    U, V = U[:, :3], Vh[:3].T  # some other matrix's bases: the tail of W is not W's own
    formula = (W - U @ (U.T @ W @ V) @ V.T).square().sum()
    expected, = torch.autograd.grad(formula, W)
    energy = p1_svd.TailEnergy.apply(W, U, V, torch.float64)
    got, = torch.autograd.grad(energy, W)
    torch.testing.assert_close(energy, formula, rtol=1e-12, atol=0)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    W32 = W.detach().float().requires_grad_()
    energy = p1_svd.TailEnergy.apply(W32, U.float(), V.float(), torch.bfloat16)
    got, = torch.autograd.grad(energy, W32)
    assert energy.dtype == got.dtype == torch.float32
    torch.testing.assert_close(energy.double(), formula.detach(), rtol=2e-2, atol=0)
    assert (got.double() - expected).norm() < 2e-2 * expected.norm()


def test_under_bf16_autocast_the_baseline_loss_is_the_fp32_one_up_to_bf16():
    torch.manual_seed(0)
    model = MLP(width=16, depth=2)
    batch = (torch.rand(8, 28, 28), torch.randint(0, 10, (8,)))
    losses = {}
    for precision in ("fp32", "bf16"):
        loss_fn = p1_svd.BaselineLoss(model, 0, 0.5, 4, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            losses[precision] = loss_fn(model, batch)
        losses[precision].backward()
        losses[precision] = losses[precision].item(), torch.cat([p.grad.flatten() for p in model.parameters()])
        model.zero_grad()
    assert losses["bf16"][0] == pytest.approx(losses["fp32"][0], rel=1e-2)
    assert (losses["bf16"][1] - losses["fp32"][1]).norm() < 2e-2 * losses["fp32"][1].norm()


def tiny_mnist(n=32, seed=0):
    """MNIST-shaped random digits, n per split: enough for two steps of batch 16."""
    g = torch.Generator().manual_seed(seed)
    return {split: (torch.rand(n, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
            for split in ("train", "val", "test")}


def train_tiny_baseline(ckpt_dir, precision):
    """P1's own training path (train_baseline) on `tiny_mnist`: 16-unit layers, one epoch of two steps, the bases
    of the tail decay refreshed (an exact SVD) at every step. Returns (model, history, args)."""
    args, train = p1_svd.get_args(["--width", "16", "--epochs", "1", "--batch-size", "16", "--refresh", "1",
                                   "--precision", precision, "--ckpt-dir", str(ckpt_dir), "--quiet"])
    model, history = p1_svd.train_baseline(0, tiny_mnist(), train.values(args), args, torch.device("cpu"))
    return model, history, args


def test_the_baseline_trains_under_bf16_with_fp32_master_weights(tmp_path):
    """--precision bf16 forced (emulated where the CPU lacks bf16, hence the tiny shapes): finite losses, fp32
    weights and optimizer state that moved, fp32 orthonormal bases, and the precision in the checkpoint's config."""
    model, history, _ = train_tiny_baseline(tmp_path, "bf16")
    assert len(history) == 1 and torch.isfinite(torch.tensor([history[0]["train_loss"], history[0]["val_loss"]])).all()
    torch.manual_seed(0)  # train_baseline's initialisation, again
    start = MLP(16, 5, 0.2).state_dict()
    ckpt = load_checkpoint(tmp_path / "p1_baseline_seed0.pt")
    assert ckpt["config"]["precision"] == "bf16"
    for state in (ckpt["model"], model.state_dict()):
        assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in state.values())
        assert all(not torch.equal(state[k], start[k]) for k in start)  # every weight and bias moved
    assert all(v.dtype == torch.float32 for s in ckpt["optimizer"]["state"].values() for k, v in s.items()
               if k != "step")
    U = ckpt["loss"]["U0"]
    assert U.dtype == torch.float32 and torch.allclose(U.T @ U, torch.eye(U.shape[1]), atol=1e-5)


def test_dry_run_writes_metrics_and_figures(dry_p1):
    out, ckpt = dry_p1
    metrics = read_json(out / "metrics.json")
    assert metrics["dry_run"] is True and metrics["width"] == 64
    assert metrics["ranks"]["20"]["params"] == cost(MLP(width=64), 20)[0]
    # full rank is the baseline itself (up to float32 rounding in the factorized product)
    assert abs(metrics["ranks"]["full"]["test_acc"]["mean"] - metrics["baseline_test_acc"]["mean"]) <= 2e-3
    for name in ("accuracy_vs_rank.png", "params_vs_rank.png", "singular_values.png", "config.json"):
        assert (out / name).stat().st_size > 0
    # the flags that define the baseline are its checkpoint's config and config.json's, precision resolved
    config = load_checkpoint(ckpt / "p1_baseline_seed0.pt")["config"]
    assert config["width"] == 64 and config["precision"] == metrics["machine"]["precision"] == AUTO_PRECISION
    flags = {k: v for k, v in config.items() if k not in ("depth", "seed", "train_size")}
    assert flags == {k: read_json(out / "config.json")[k] for k in flags}


def test_accuracy_plot_has_every_rank_and_full(monkeypatch, tmp_path):
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig))
    ranks = {d: {"test_acc": {"mean": 0.9, "std": 0.01}} for d in ("10", "20", "200", "full")}
    figures.plot_accuracy_vs_rank({"ranks": {"dense": {}, **ranks}, "width": 1024, "seeds": [0],
                                        "baseline_test_acc": {"mean": 0.98}}, tmp_path / "a.png")
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "20", "200", "full\n(1024)"]
    assert list(ax.get_xticks()) == [10, 20, 200, 1024]


def test_accuracy_plot_shows_the_range_near_the_baseline(monkeypatch, tmp_path):
    """A rank far below the baseline (D = 10 at 60%) does not flatten the others: the axis spans the ranks near the
    baseline, and the far one is marked on its floor with its accuracy."""
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig))
    acc = {"10": 0.60, "20": 0.978, "50": 0.986, "full": 0.987}
    ranks = {d: {"test_acc": {"mean": a, "std": 0.001}} for d, a in acc.items()}
    figures.plot_accuracy_vs_rank({"ranks": {"dense": {}, **ranks}, "width": 1024, "seeds": [0, 1],
                                   "baseline_test_acc": {"mean": 0.987}}, tmp_path / "a.png")
    ax = drawn[0].axes[0]
    low, high = ax.get_ylim()
    assert 97.0 < low < 97.7 and 98.7 < high < 99.5
    assert [t.get_text() for t in ax.texts] == ["D = 10: 60.0%"]


def test_same_seed_same_numbers(dry_p1, tmp_path):
    out, _ = dry_p1
    p1_svd.main(["--dry-run", "--quiet", "--seeds", "1", "--out", str(tmp_path / "out"),
                 "--ckpt-dir", str(tmp_path / "ckpt")])
    a, b = read_json(out / "metrics.json"), read_json(tmp_path / "out" / "metrics.json")
    assert a["seeds"][0]["rank_test_acc"] == b["seeds"][0]["rank_test_acc"]
    assert a["seeds"][0]["history"][0]["val_loss"] == b["seeds"][0]["history"][0]["val_loss"]


def test_the_rank_d_network_computes_what_its_layers_compute_one_by_one():
    torch.manual_seed(0)
    model = MLP(width=24, depth=3).eval()
    factors = [svd(layer.weight.detach()) for layer in model.hidden]
    net = compress(model, factors, 5)
    x = torch.rand(7, 784)
    h = (x - 0.1307) / 0.3081
    for layer in net.hidden:
        assert isinstance(layer, LowRankLinear)
        h = torch.relu(h @ (layer.U * layer.S @ layer.Vh).T + layer.bias)
    expected = h @ model.head.weight.T + model.head.bias
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
    for inference in (net, fast(net)):  # in-place operations under inference_mode, and the fast path: the same
        with torch.inference_mode():
            torch.testing.assert_close(inference(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ranks", [["full"], ["7"], ["7", "full"]])
def test_figures_draw_any_set_of_ranks(ranks, tmp_path):
    """`--ranks full` alone (or one number) still draws both figures: full rank sits at the width on the log axis."""
    metrics = {"ranks": {"dense": {"params": 100}, **{d: {"params": 50, "test_acc": {"mean": 0.9, "std": 0.0}}
                                                       for d in ranks}},
               "width": 64, "seeds": [0], "baseline_test_acc": {"mean": 0.95}}
    figures.plot_accuracy_vs_rank(metrics, tmp_path / "a.png")
    figures.plot_params_vs_rank(metrics, tmp_path / "p.png")
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "p.png").stat().st_size > 0


def test_a_finished_baseline_is_never_replaced_silently(dry_p1, tmp_path, capsys):
    """Other flags: refused before any training, naming what differs and --overwrite; a read-only baseline is kept
    even with --overwrite; --overwrite replaces a writable one."""
    ckpt = copy_checkpoints(dry_p1[1], tmp_path / "ckpt")
    path = ckpt / "p1_baseline_seed0.pt"
    before = path.read_bytes()
    argv = ["--dry-run", "--quiet", "--seeds", "1", "--lr", "0.001", "--out", tmp_path / "out", "--ckpt-dir", ckpt]
    code, err = run_main(p1_svd.main, argv, capsys)
    assert code == 2 and err.count("\n") == 1 and "holds a finished run with other settings: lr=0.002 but this run " \
        "asks for lr=0.001; pass --overwrite to replace it" in err, err
    assert path.read_bytes() == before and not (tmp_path / "out" / "metrics.json").exists()
    path.chmod(0o444)
    code, err = run_main(p1_svd.main, argv + ["--overwrite"], capsys)
    assert code == 2 and err.count("\n") == 1 and "read-only" in err, err
    assert path.read_bytes() == before and path.stat().st_mode & 0o777 == 0o444
    path.chmod(0o644)
    code, err = run_main(p1_svd.main, argv + ["--overwrite"], capsys)
    assert code == 0 and load_checkpoint(path)["config"]["lr"] == 0.001, err
    code, err = run_main(p1_svd.main, argv + ["--resume", "--overwrite"], capsys)  # one or the other
    assert code == 2 and "not allowed with argument" in err, err
