"""Problem 5: patches round trip, the drawing loop (top half kept, predictions fed back), references, the script."""
import functools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

import p5_draw
from common.drawing import scores
from common.ablation import ablation_configs, read_ablation
from common.cli import UserError
from common.drawing.figures import LINE, framed_grid
from common.processes import run_jobs
from common.mnist.data import load_mnist
from common.train import load_checkpoint
from p5_draw import (SamplingDrawer, MSEDrawer, draw, from_patches, mixture_nll, neighbours, sample_patch, to_patches,
                     with_position)
from conftest import AUTO_PRECISION, ROOT, copy_checkpoints, read_json, run_main


# ----------------------------------------------------------------------------- patches

def test_patch_round_trip_over_many_shapes():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        size, rows, cols, n = (torch.randint(1, k, (1,), generator=g).item() for k in (9, 6, 6, 4))
        images = torch.rand(n, rows * size, cols * size, generator=g, dtype=torch.float64)
        patches = to_patches(images, size)
        assert patches.shape == (n, rows * cols, size * size)
        assert torch.equal(from_patches(patches, rows * size, cols * size), images)
        # the oracle: patch k is the block in patch row k // cols, patch column k % cols, flattened by rows
        k = torch.randint(0, rows * cols, (1,), generator=g).item()
        r, c = divmod(k, cols)
        block = images[:, r * size:(r + 1) * size, c * size:(c + 1) * size]
        assert torch.equal(patches[:, k], block.reshape(n, -1))


def test_mnist_layout_is_sixteen_patches_in_rows():
    images = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 28, 28)
    patches = to_patches(images)
    assert patches.shape == (2, 16, 49)
    assert torch.equal(patches[:, 0], images[:, :7, :7].reshape(2, 49))     # top left
    assert torch.equal(patches[:, 3], images[:, :7, 21:].reshape(2, 49))    # top right
    assert torch.equal(patches[:, 4], images[:, 7:14, :7].reshape(2, 49))   # second row starts at the left
    assert torch.equal(patches[:, 15], images[:, 21:, 21:].reshape(2, 49))  # bottom right
    # the first 8 patches are exactly the top half, rows 0..13
    assert torch.equal(from_patches(torch.cat([patches[:, :8], torch.zeros(2, 8, 49)], 1))[:, :14], images[:, :14])


@pytest.mark.parametrize("shape", [(1, 27, 28), (1, 28, 30)])
def test_images_that_do_not_tile_are_refused(shape):
    with pytest.raises(ValueError, match="patches"):
        to_patches(torch.zeros(shape))


def test_patches_that_do_not_tile_are_refused():
    with pytest.raises(ValueError, match="tile"):
        from_patches(torch.zeros(1, 15, 49))
    with pytest.raises(ValueError, match="tile"):
        from_patches(torch.zeros(1, 16, 48))


# ----------------------------------------------------------------------------- the model and the drawing loop

class Stub(torch.nn.Module):
    """Predicts 'the input plus 1' and counts the steps it has seen in its state; records every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, state=None):
        seen = (0 if state is None else state) + x.shape[1]
        self.calls.append((x.shape[1], state))
        return x + 1, seen


def test_drawing_keeps_the_top_half_and_feeds_predictions_back():
    x = torch.rand(3, 16, 49, generator=torch.Generator().manual_seed(1))
    stub = Stub()
    completed = draw(stub, x)
    assert completed.shape == (3, 16, 49)
    assert torch.equal(completed[:, :8], x[:, :8])  # bit for bit
    # one call with the 8 given patches, then 7 single steps, each continuing from the previous state
    assert stub.calls == [(8, None), (1, 8), (1, 9), (1, 10), (1, 11), (1, 12), (1, 13), (1, 14)]
    # Y[8] = X[8] + 1 and each later step is fed the previous prediction, so patch 8 + k = X[8] + k + 1;
    # the bottom half of x is never read
    for k in range(8):
        torch.testing.assert_close(completed[:, 8 + k], x[:, 7] + k + 1)
    assert torch.equal(draw(stub, torch.cat([x[:, :8], torch.full((3, 8, 49), 9.0)], 1)), completed)


@pytest.mark.parametrize("position, neighbours", [(True, True), (False, False), (True, False)])
def test_drawn_patches_are_what_teacher_forcing_on_the_completion_predicts(position, neighbours):
    """The state (LSTM, last patches, position) is carried: one step at a time equals one pass over the completion."""
    torch.manual_seed(0)
    model = MSEDrawer(hidden=16, layers=2, position=position, head_hidden=8, neighbours=neighbours).double().eval()
    x = torch.rand(5, 16, 49, dtype=torch.float64)
    completed = draw(model, x)
    with torch.no_grad():
        y, _ = model(completed[:, :-1])
    torch.testing.assert_close(y[:, 7:], completed[:, 8:], rtol=1e-12, atol=1e-12)
    image = from_patches(completed)
    assert image.shape == (5, 28, 28)
    assert torch.equal(image[:, :14], from_patches(x)[:, :14])


def test_model_shapes_and_bounded_output():
    model = MSEDrawer(hidden=8, layers=2)
    x = 100 * torch.randn(4, 15, 49)
    y, ((h, c), last, count) = model(x)
    assert y.shape == (4, 15, 49) and h.shape == c.shape == (2, 4, 8)
    assert torch.equal(last, x[:, -3:]) and count == 15
    assert y.min() >= 0 and y.max() <= 1
    (log_w, logits), ((h, c), _, _) = SamplingDrawer(hidden=8, layers=1, components=3)(torch.rand(4, 15, 49))
    assert log_w.shape == (4, 15, 3) and logits.shape == (4, 15, 3, 49) and h.shape == (1, 4, 8)
    torch.testing.assert_close(log_w.exp().sum(-1), torch.ones(4, 15))


def test_position_input_is_the_one_hot_of_each_patch_index():
    x = torch.rand(2, 3, 49)
    z = with_position(x, start=5)
    assert z.shape == (2, 3, 49 + 16) and torch.equal(z[..., :49], x)
    assert torch.equal(z[0, :, 49:], torch.eye(16)[5:8])
    with pytest.raises(ValueError, match="do not fit"):
        with_position(x, start=14)


def test_neighbours_of_the_next_patch_match_the_image_layout():
    """Oracle: next patch q = t + 1 at (row, col) = divmod(q, 4); above is (row - 1, col), above-right
    (row - 1, col + 1), zeros where they fall outside the image. Also from any start, given the 3 patches before."""
    x = torch.rand(2, 16, 49, dtype=torch.float64)
    padded = torch.cat([torch.zeros(2, 3, 49, dtype=torch.float64), x], dim=1)
    for start in range(15):
        got = neighbours(x[:, start:15], padded[:, start:start + 3], start)  # for reading patches start..14
        for j, t in enumerate(range(start, 15)):
            row, col = divmod(t + 1, 4)
            above = x[:, 4 * (row - 1) + col] if row > 0 else torch.zeros(2, 49, dtype=torch.float64)
            right = x[:, 4 * (row - 1) + col + 1] if row > 0 and col < 3 else torch.zeros(2, 49, dtype=torch.float64)
            assert torch.equal(got[:, j], torch.cat([above, right], 1)), (start, t)


def test_the_head_sees_the_neighbours_only_when_asked():
    torch.manual_seed(0)
    x = torch.rand(3, 16, 49)
    changed = x.clone()
    changed[:, 5] += 1  # patch 5 is above patch 9: the prediction of 9, made while reading patch 8, sees it
    for neighbours_on in (True, False):
        model = MSEDrawer(hidden=8, neighbours=neighbours_on).eval()
        with torch.no_grad():
            # from patch 8 on, the LSTM state is the same in both; only the head's input differs
            _, state = model(x[:, :8])
            y, _ = model(x[:, 8:9], state)
            y2, _ = model(x[:, 8:9], (state[0], changed[:, 5:8], 8))
        assert torch.equal(y, y2) != neighbours_on


def test_teacher_forcing_compares_outputs_with_the_next_patch():
    x = torch.rand(6, 16, 49, dtype=torch.float64)
    stub = Stub()  # predicts "the input plus 1"
    loss = p5_draw.teacher_forced_loss(stub, (x,))
    assert stub.calls == [(15, None)]  # fed X[1..15] only
    torch.testing.assert_close(loss, ((x[:, :-1] + 1 - x[:, 1:]) ** 2).mean())
    per_image = p5_draw.teacher_forced_metrics(stub, (x,))["mse"]
    torch.testing.assert_close(per_image.mean(), loss)


# ----------------------------------------------------------------------------- the sampling drawer

def logit(p):
    p = torch.tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p))


def test_mixture_likelihood_by_hand():
    """Two components of two pixels: w = (0.25, 0.75), p_1 = (0.5, 0.9), p_2 = (0.2, 0.4)."""
    log_w = torch.tensor([0.25, 0.75], dtype=torch.float64).log()
    logits = torch.stack([logit([0.5, 0.9]), logit([0.2, 0.4])])
    x = torch.tensor([[1.0, 0.0], [0.5, 1.0]], dtype=torch.float64)
    # x = (1, 0):   0.25 * 0.5 * (1 - 0.9) + 0.75 * 0.2 * (1 - 0.4)               = 0.0125 + 0.09 = 0.1025
    # x = (0.5, 1): 0.25 * 0.5^0.5 0.5^0.5 * 0.9 + 0.75 * 0.2^0.5 0.8^0.5 * 0.4 = 0.1125 + 0.12 = 0.2325
    nll = mixture_nll(log_w.expand(2, 2), logits.expand(2, 2, 2), x)  # the same mixture for both patches
    torch.testing.assert_close(nll, -torch.tensor([0.1025, 0.2325], dtype=torch.float64).log(), rtol=1e-12, atol=0)


def test_mixture_is_a_distribution_over_binary_patches():
    g = torch.Generator().manual_seed(4)
    log_w = torch.randn(5, generator=g, dtype=torch.float64).log_softmax(0)
    logits = 3 * torch.randn(5, 3, generator=g, dtype=torch.float64)
    patches = torch.tensor([[(i >> j) & 1 for j in range(3)] for i in range(8)], dtype=torch.float64)  # all 8
    total = (-mixture_nll(log_w.expand(8, 5), logits.expand(8, 5, 3), patches)).exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64), rtol=1e-12, atol=0)


def test_likelihood_loss_is_the_mean_nll_of_the_next_patches():
    torch.manual_seed(0)
    model = SamplingDrawer(hidden=8, head_hidden=8, components=3).double()
    x = torch.rand(4, 16, 49, dtype=torch.float64)
    (log_w, logits), _ = model(x[:, :-1])
    expected = torch.stack([mixture_nll(log_w[:, t], logits[:, t], x[:, t + 1]) for t in range(15)]).mean()
    torch.testing.assert_close(p5_draw.likelihood_loss(model, (x,)), expected)
    metrics = p5_draw.likelihood_metrics(model, (x,))
    torch.testing.assert_close(metrics["nll"].mean(), expected)
    mean = (log_w.exp()[..., None] * torch.sigmoid(logits)).sum(2)
    torch.testing.assert_close(metrics["mse"], ((mean - x[:, 1:]) ** 2).mean((1, 2)))


def test_sampling_picks_components_by_their_weights():
    logits = torch.stack([torch.full((49,), -30.0), torch.full((49,), 30.0)])  # component 0 all 0, 1 all 1
    log_w = torch.tensor([0.8, 0.2]).log()
    params = (log_w.expand(20000, 1, 2), logits.expand(20000, 1, 2, 49))
    patch = sample_patch(params, torch.Generator().manual_seed(0))
    assert patch.shape == (20000, 1, 49)
    assert torch.equal(patch, patch[:, :, :1].expand(-1, -1, 49))  # one component for the whole patch
    assert abs(patch.mean().item() - 0.2) < 0.01  # 4 standard errors
    assert torch.equal(patch, sample_patch(params, torch.Generator().manual_seed(0)))


def test_sampled_drawing_is_reproducible_and_follows_teacher_forcing():
    """Shapes and ranges; the same seed draws the same; each drawn patch is one of the components that one
    teacher-forced pass over the completed sequence gives at that step."""
    torch.manual_seed(0)
    model = SamplingDrawer(hidden=16, layers=2, head_hidden=8, components=4).double().eval()
    x = torch.rand(6, 16, 49, dtype=torch.float64)

    def sampled(seed):
        return draw(model, x, next_patch=functools.partial(sample_patch, generator=torch.Generator().manual_seed(seed)))

    completed = sampled(1)
    assert completed.shape == (6, 16, 49) and torch.equal(completed[:, :8], x[:, :8])
    assert completed.min() >= 0 and completed.max() <= 1
    assert torch.equal(completed, sampled(1)) and not torch.equal(completed, sampled(2))
    with torch.no_grad():
        (_, logits), _ = model(completed[:, :-1])
    components = torch.sigmoid(logits[:, 7:])                           # (6, 8, K, 49): the choices at steps 8..15
    distance = (components - completed[:, 8:, None]).abs().amax(-1)     # (6, 8, K)
    assert distance.min(-1).values.max() < 1e-12


# ----------------------------------------------------------------------------- references and scores

def test_nearest_neighbour_matches_brute_force():
    g = torch.Generator().manual_seed(2)
    train = torch.rand(50, 16, 49, generator=g, dtype=torch.float64)
    query = torch.rand(7, 16, 49, generator=g, dtype=torch.float64)
    query[3, :8] = train[11, :8]  # an exact match of a top half must find that image
    completed, index = scores.nearest_bottoms(train, query, 8, chunk=3)  # chunks of 3 cover 7 queries unevenly
    oracle = torch.stack([((train[:, :8] - q[:8]) ** 2).sum((1, 2)).argmin() for q in query])
    assert torch.equal(index, oracle) and index[3] == 11
    assert torch.equal(completed[:, :8], query[:, :8])
    assert torch.equal(completed[:, 8:], train[oracle, 8:])


def test_mean_bottom_reference():
    train = torch.rand(20, 16, 49, dtype=torch.float64)
    query = torch.rand(4, 16, 49, dtype=torch.float64)
    completed = scores.mean_bottoms(train, query, 8)
    assert torch.equal(completed[:, :8], query[:, :8])
    torch.testing.assert_close(completed[:, 8:], train[:, 8:].mean(0).expand(4, -1, -1))


def classify_by_brightest_of_ten(sequences):
    """A stand-in classifier of patch sequences: "class = index of the brightest of the image's first 10 pixels"."""
    return from_patches(sequences).flatten(1)[:, :10]


def test_score_of_the_originals_themselves():
    x = torch.rand(10, 16, 49)
    labels = torch.arange(10)
    predicted_ok = from_patches(x).flatten(1)[:, :10].argmax(1)
    s, predicted = scores.score(x[None], x, labels, classify_by_brightest_of_ten, 8)
    assert s["bottom_mse"] == 0.0 and s["best_of_k_bottom_mse"] == 0.0 and s["k"] == 1
    assert torch.equal(predicted, predicted_ok[None])
    assert s["class_kept"] == pytest.approx((predicted_ok == labels).double().mean().item())
    assert s["ink"] == pytest.approx(x[:, 8:].mean().item())


def test_score_of_several_samples_against_an_oracle():
    g = torch.Generator().manual_seed(5)
    original = torch.rand(4, 16, 49, generator=g, dtype=torch.float64)
    samples = torch.rand(3, 4, 16, 49, generator=g, dtype=torch.float64)
    samples[:, :, :8] = original[:, :8]
    samples[2, 1] = original[1]  # image 1's third sample is perfect
    labels = torch.tensor([3, 1, 4, 1])
    s, predicted = scores.score(samples, original, labels, classify_by_brightest_of_ten, 8)
    mse = [[((samples[i, n, 8:] - original[n, 8:]) ** 2).mean().item() for n in range(4)] for i in range(3)]
    assert s["k"] == 3 and mse[2][1] == 0
    assert s["bottom_mse"] == pytest.approx(sum(map(sum, mse)) / 12, rel=1e-12)
    assert s["best_of_k_bottom_mse"] == pytest.approx(sum(min(m[n] for m in mse) for n in range(4)) / 4, rel=1e-12)
    assert predicted.shape == (3, 4)
    assert s["class_kept"] == pytest.approx((predicted == labels).double().mean().item())


def test_sharpness_is_the_share_of_pixels_near_zero_or_one():
    assert scores.sharpness(torch.tensor([0.0, 0.05, 0.08, 0.5, 0.93, 0.95, 1.0, 0.3])) == 6 / 8
    assert scores.sharpness(torch.full((7,), 0.5)) == 0.0


def test_ambiguous_top_halves_are_those_whose_neighbours_disagree():
    neighbour_labels = torch.tensor([[3, 3, 3, 3], [3, 8, 3, 8], [7, 7, 9, 7], [1, 2, 4, 5], [0, 0, 0, 6]])
    index, votes = scores.pick_ambiguous(neighbour_labels, 3)
    assert index.tolist() == [3, 1, 2]  # majorities 1/4, 2/4, 3/4 (3/4 ties: the lower index)
    assert votes[1].tolist() == [0, 0, 0, 2, 0, 0, 0, 0, 2, 0]


def test_k_nearest_top_halves_match_brute_force():
    g = torch.Generator().manual_seed(6)
    train = torch.rand(40, 16, 49, generator=g, dtype=torch.float64)
    query = torch.rand(5, 16, 49, generator=g, dtype=torch.float64)
    index = scores.nearest_tops(train, query, 8, k=4, chunk=2)
    oracle = torch.stack([((train[:, :8] - q[:8]) ** 2).sum((1, 2)).argsort()[:4] for q in query])
    assert torch.equal(index, oracle)


def test_examples_are_per_class_distinct_and_repeatable():
    labels = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(3))
    picked = scores.pick_examples(labels, 4, seed=0)
    assert picked.shape == (40,) and len(set(picked.tolist())) == 40
    assert torch.equal(labels[picked], torch.arange(10).repeat_interleave(4))  # a row per class
    assert torch.equal(picked, scores.pick_examples(labels, 4, seed=0))
    assert not torch.equal(picked, scores.pick_examples(labels, 4, seed=1))
    with pytest.raises(UserError, match="--per-class"):
        scores.pick_examples(labels, 1000, seed=0)


def test_changed_completions_get_a_red_frame_and_a_line_between_the_halves():
    images = torch.ones(4, 28, 28)
    grid = framed_grid(images, per_class=2, changed=torch.tensor([True, False, False, True]))
    assert grid.shape == (3, 2 + 2 * 35, 2 + 2 * 34)  # a 2-pixel frame around 28 x 28 and the line: 33 x 32
    red, black, white, line = torch.tensor([1.0, 0, 0]), torch.zeros(3), torch.ones(3), torch.tensor(LINE)
    assert torch.equal(grid[:, 2, 2], red) and torch.equal(grid[:, 2, 36], black)    # images 0 and 1
    assert torch.equal(grid[:, 37, 2], black) and torch.equal(grid[:, 37, 36], red)  # images 2 and 3
    top = 2 + 2  # image 0's first row: padding, then frame
    assert torch.equal(grid[:, top + 13, 10], white)   # image row 13, the top half's last
    assert torch.equal(grid[:, top + 14, 10], line)    # the line, between the halves
    assert torch.equal(grid[:, top + 15, 10], white)   # image row 14, the bottom half's first
    assert torch.equal(grid[:, top + 28, 10], white) and torch.equal(grid[:, top + 29, 10], red)  # row 27, frame


def test_both_drawers_train_under_bf16_with_fp32_master_weights(tmp_path):
    """P5's own path (train_drawer) forced to --precision bf16 (emulated where the CPU lacks bf16: tiny drawers, two
    steps): finite losses, fp32 weights and optimizer state that moved, the precision in the checkpoint's config."""
    g = torch.Generator().manual_seed(3)
    data = {k: (torch.rand(n, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
            for k, n in (("train", 32), ("val", 16))}
    args, flags = p5_draw.get_args(["--epochs", "1", "--sampler-epochs", "1", "--hidden", "8", "--head-hidden", "8",
                                    "--components", "2", "--batch-size", "16", "--precision", "bf16", "--quiet"])
    for kind in ("mse", "sampler"):
        config = p5_draw.drawer_config(kind, args, flags, data)
        history = p5_draw.train_drawer(config, tmp_path / f"{kind}.pt", data=data, device=torch.device("cpu"),
                                       quiet=True)
        assert len(history) == 1 and torch.isfinite(torch.tensor(list(history[0].values()))).all(), kind
        ckpt = load_checkpoint(tmp_path / f"{kind}.pt")
        torch.manual_seed(config["seed"])  # train_drawer's initialisation, again
        start = p5_draw.make_drawer(config).state_dict()
        assert ckpt["config"]["precision"] == "bf16"
        for name, t in ckpt["model"].items():
            assert t.dtype == torch.float32 and torch.isfinite(t).all() and not torch.equal(t, start[name]), name
        assert all(v.dtype == torch.float32 for s in ckpt["optimizer"]["state"].values() for k, v in s.items()
                   if k != "step")


def test_each_drawer_trains_for_its_own_epochs(tmp_path):
    """--epochs is the MSE drawer's, --sampler-epochs the sampling drawer's; the checkpoint's config says so, and a
    flag of one drawer is no part of the other's config (changing it does not retrain the other)."""
    g = torch.Generator().manual_seed(7)
    data = {k: (torch.rand(n, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
            for k, n in (("train", 64), ("val", 32))}
    args, flags = p5_draw.get_args(["--epochs", "3", "--sampler-epochs", "2", "--hidden", "8", "--head-hidden", "8",
                                    "--components", "2", "--batch-size", "32", "--quiet"])
    args.precision = "fp32"
    for kind, epochs in (("mse", 3), ("sampler", 2)):
        config = p5_draw.drawer_config(kind, args, flags, data)
        history = p5_draw.train_drawer(config, tmp_path / f"{kind}.pt", data=data, device=torch.device("cpu"))
        assert len(history) == config["epochs"] == epochs
        assert load_checkpoint(tmp_path / f"{kind}.pt")["scheduler"]["T_max"] == epochs * 2  # 2 batches
    assert "components" not in p5_draw.drawer_config("mse", args, flags, data)
    assert p5_draw.drawer_config("sampler", args, flags, data)["components"] == 2


def test_jobs_in_turn_run_in_order_on_their_threads():
    """(Side by side in processes, the P5 dry runs below give the same as in turn.)"""
    threads = torch.get_num_threads()
    assert run_jobs(seeded_numbers, [(3,), (5,)], threads=1) == [seeded_numbers(3)[:1] + (1,),
                                                                   seeded_numbers(5)[:1] + (1,)]
    assert torch.get_num_threads() == threads


def marked(mark):
    """The processes alive whose environment holds HW3_TEST_MARK=mark: a run's parent, its jobs' processes and
    multiprocessing's resource tracker (all inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
                if f"HW3_TEST_MARK={mark}".encode() in environ.split(b"\0"):
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile
                pass
    return found


def children(pid):
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError):
                pass
    return found


def start_marked(*args):
    """`python *args` from the repo root in a session of its own, every process it starts marked: (Popen, mark)."""
    mark = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, start_new_session=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "HW3_TEST_MARK": mark},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, mark


def wait_for(condition, what, seconds=120):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"{what} never happened"
        time.sleep(0.02)


def assert_nothing_left(mark):
    """Every process of the run is gone within seconds: no job, no resource tracker outlives it."""
    deadline = time.time() + 30
    while marked(mark) and time.time() < deadline:
        time.sleep(0.1)
    assert not marked(mark), [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in marked(mark)]


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the run's processes in /proc")
@pytest.mark.slow  # three interpreters per case, 10-20 s each on 2 busy cores
@pytest.mark.parametrize("moment, sig, group", [
    ("start", signal.SIGTERM, False),  # while the two processes start (before they could handle a signal)
    ("start", signal.SIGINT, True),    # Ctrl-C in a terminal: the whole process group
    ("training", signal.SIGTERM, False),
    ("training", signal.SIGINT, True)])
def test_a_signal_at_any_moment_stops_side_by_side_jobs_cleanly(tmp_path, moment, sig, group):
    """One line with the stop's own code, no traceback, no process left; in training each job saves its checkpoint,
    and --resume then ends with the numbers of an uninterrupted run."""
    proc, mark = start_marked("tests/tiny_jobs.py", tmp_path / "ckpt", tmp_path / "out.pt", "--jobs", "2")
    if moment == "start":
        wait_for(lambda: len(children(proc.pid)) >= 3, "the start of both jobs")  # the resource tracker, 2 jobs
    else:
        wait_for(lambda: (tmp_path / "ckpt" / "job0.pt").exists(), "a checkpoint")
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 128 + sig and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and not (tmp_path / "out.pt").exists()
    assert_nothing_left(mark)
    if moment == "training":
        assert lines[0].count("checkpoint saved") == 2 and "[job 0]" in lines[0] and "[job 1]" in lines[0], err
        resumed, _ = start_marked("tests/tiny_jobs.py", tmp_path / "ckpt", tmp_path / "out.pt", "--jobs", "2",
                                  "--resume")
        plain, _ = start_marked("tests/tiny_jobs.py", tmp_path / "plain", tmp_path / "plain.pt", "--jobs", "2",
                                "--step-seconds", "0")
        assert resumed.wait(300) == 0 and plain.wait(300) == 0
        for (losses, weights), (plain_losses, plain_weights) in zip(torch.load(tmp_path / "out.pt"),
                                                                    torch.load(tmp_path / "plain.pt")):
            assert losses == plain_losses and all(torch.equal(weights[k], plain_weights[k]) for k in weights)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the run's processes in /proc")
@pytest.mark.slow  # three interpreters, 10-20 s on 2 busy cores
def test_jobs_stop_when_their_parent_is_killed(tmp_path):
    """SIGKILL of the parent: its jobs notice, save their checkpoints and exit; nothing is left running."""
    proc, mark = start_marked("tests/tiny_jobs.py", tmp_path / "ckpt", tmp_path / "out.pt", "--jobs", "2")
    wait_for(lambda: (tmp_path / "ckpt" / "job0.pt").exists(), "a checkpoint")
    proc.kill()
    proc.wait()
    assert_nothing_left(mark)
    assert all(not load_checkpoint(tmp_path / "ckpt" / f"job{k}.pt")["done"] for k in range(2))


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the run's processes in /proc")
@pytest.mark.slow  # P5's dry run with its two training processes
def test_p5_stopped_while_its_training_processes_start(dry_p1, tmp_path):
    proc, mark = start_marked("p5_draw.py", "--dry-run", "--quiet", "--out", tmp_path / "out", "--ckpt-dir",
                              copy_checkpoints(dry_p1[1], tmp_path / "ckpt"))
    wait_for(lambda: len(children(proc.pid)) >= 3, "the start of both drawers' processes")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and not (tmp_path / "out" / "metrics.json").exists()
    assert_nothing_left(mark)


def seeded_numbers(seed):
    """(the numbers a generator seeded with `seed` draws, the threads torch runs on)."""
    return torch.rand(3, generator=torch.Generator().manual_seed(seed)).tolist(), torch.get_num_threads()


def test_ablation_rows_accumulate_their_changes_and_end_at_the_model():
    final = {"hidden": 128, "layers": 1, "lr": 1.0, "epochs": 9}
    rows = [("a", "first", {"hidden": 8, "layers": 2}), ("b", "second", {"hidden": 128}), ("c", "third", {"layers": 1})]
    configs = ablation_configs(final, rows, epochs=2)
    assert configs == {"a": {**final, "hidden": 8, "layers": 2, "epochs": 2},
                       "b": {**final, "layers": 2, "epochs": 2}, "c": {**final, "epochs": 2}}
    with pytest.raises(UserError, match="ablation ends at the default"):
        ablation_configs({**final, "hidden": 12}, rows, epochs=2)


def test_ablation_file_is_used_only_for_its_model_and_a_damaged_one_is_a_clean_error(tmp_path, capsys):
    path = tmp_path / "ablation.json"
    assert read_ablation(path, "make it", config={"a": 1}) is None  # none yet
    path.write_text(json.dumps({"config": {"a": 1}, "rows": []}))
    assert read_ablation(path, "make it", config={"a": 1}) == {"config": {"a": 1}, "rows": []}
    assert read_ablation(path, "make it", config={"a": 2}) is None and "other settings" in capsys.readouterr().out
    for damaged in ('{"config": ', "[1, 2]", b"\xff\xfe"):
        path.write_bytes(damaged.encode() if isinstance(damaged, str) else damaged)
        with pytest.raises(UserError, match="ablation.json .*make it"):
            read_ablation(path, "make it", config={"a": 1})


# ----------------------------------------------------------------------------- the script

def test_dry_run_writes_metrics_and_figures(dry_p5, tmp_path, capsys):
    out, ckpt = dry_p5
    m = read_json(out / "metrics.json")
    assert m["dry_run"] is True and m["epochs_trained"] == 1 and m["sampler"]["epochs_trained"] == 1
    assert m["trained_in_this_run"] is True and m["ablation"] is None and m["machine"]["precision"] == AUTO_PRECISION
    for where in ("test", "examples"):
        assert set(m["drawing"][where]) == {"original", "mse", "sampler", "nearest_neighbour", "mean_bottom"}
        for s in m["drawing"][where].values():
            assert 0 <= s["best_of_k_bottom_mse"] <= s["bottom_mse"] <= 1
            assert 0 <= s["class_kept"] <= 1 and 0 <= s["sharpness"] <= 1 and 0 <= s["ink"] <= 1
        assert m["drawing"][where]["original"]["bottom_mse"] == 0
        assert m["drawing"][where]["sampler"]["k"] == 10 and m["drawing"][where]["mse"]["k"] == 1
    for g in list(m["goals"].values()) + [m["budget"]]:
        assert {"measured", "met", "why"} <= set(g) and isinstance(g["met"], bool)
    # the references against oracles in pixel space (the bottom half is image rows 14..27), without patches
    data = load_mnist(dry_run=True)
    (train_x, _), (test_x, test_y) = data["train"], data["test"]
    mean_bottom = ((test_x[:, 14:] - train_x[:, 14:].mean(0)) ** 2).mean().item()
    assert m["drawing"]["test"]["mean_bottom"]["bottom_mse"] == pytest.approx(mean_bottom, rel=1e-5)
    distances = torch.cdist(test_x[:, :14].flatten(1).double(), train_x[:, :14].flatten(1).double())
    nearest = ((test_x[:, 14:] - train_x[distances.argmin(1), 14:]) ** 2).mean().item()
    assert m["drawing"]["test"]["nearest_neighbour"]["bottom_mse"] == pytest.approx(nearest, rel=1e-5)
    # the share of each digit kept, weighted by how often the digit occurs, is the share kept overall
    counts = torch.bincount(test_y, minlength=10).double()
    per_digit = torch.tensor([m["class_kept_per_digit"][str(c)] for c in range(10)], dtype=torch.float64)
    assert (per_digit @ counts / counts.sum()).item() == pytest.approx(m["drawing"]["test"]["mse"]["class_kept"])
    assert len(m["examples"]["indices"]) == 100
    assert m["examples"]["labels"] == [c for c in range(10) for _ in range(10)]
    assert len(m["ambiguous"]["indices"]) == 10 and all(len(p) == 8 for p in m["ambiguous"]["sampler_predicted"])
    assert m["classifier_config"] == read_json(out / "config.json")["classifier_config"]
    for path in m["figures"].values():  # beside metrics.json
        assert (out / path).stat().st_size > 0
    assert {p.name for p in out.glob("*.png")} == {f"{name}.png" for name in m["figures"]}
    # each drawer's checkpoint holds its config: the flags of both drawers and its own, as config.json has them
    for kind in ("mse", "sampler"):
        config = load_checkpoint(ckpt / f"p5_{kind}_seed0.pt")["config"]
        assert config == (m["config"] if kind == "mse" else m["sampler"]["config"])
        flags = {k: v for k, v in config.items() if k not in ("kind", "epochs", "train_size", "val_size")}
        assert flags == {k: read_json(out / "config.json")[k] for k in flags} and config["precision"] == AUTO_PRECISION

    # a finished checkpoint with the same config is reused, not retrained (and draws the same: see the ablation)
    args, flags = p5_draw.get_args(["--dry-run", "--out", str(tmp_path / "out"), "--ckpt-dir",
                                    str(copy_checkpoints(ckpt, tmp_path / "ckpt"))])
    args.precision = AUTO_PRECISION  # what the dry run resolved
    configs = {kind: p5_draw.drawer_config(kind, args, flags, data) for kind in ("mse", "sampler")}
    capsys.readouterr()
    drawers, written, trained_now = p5_draw.train_drawers(configs, data, args, torch.device("cpu"))
    printed = capsys.readouterr().out
    assert "[p5 mse] reusing the finished run" in printed and "[p5 sampler] reusing the finished run" in printed
    assert trained_now is False and written is None  # a re-run counts the checkpoints' training time
    assert [h for _, h in drawers.values()] == [m["history"], m["sampler"]["history"]]


@pytest.mark.slow  # the ablation's dry run trains seven drawers one after the other
def test_same_seed_same_numbers_side_by_side_or_one_after_the_other(dry_p5, dry_p5_ablation):
    """Two drawers trained in two processes (--jobs 2) equal the same run in one (--jobs 1, there beside the
    ablation's), bit for bit."""
    runs = [read_json(dry_p5[0] / "metrics.json"), read_json(dry_p5_ablation[0] / "metrics.json")]
    assert runs[0]["jobs"] == 2 and runs[1]["jobs"] == 1
    for key in ("val_mse", "train_loss"):
        assert [r[key] for r in runs[0]["history"]] == [r[key] for r in runs[1]["history"]]
    nll = [[r["val_nll"] for r in run["sampler"]["history"]] for run in runs]
    assert nll[0] == nll[1]
    assert runs[0]["drawing"] == runs[1]["drawing"] and runs[0]["ambiguous"] == runs[1]["ambiguous"]


@pytest.mark.slow  # the ablation's dry run trains seven drawers one after the other
def test_ablation_dry_run_ends_at_the_mse_drawer(dry_p5_ablation, tmp_path, capsys):
    out, ckpt = dry_p5_ablation
    m = read_json(out / "metrics.json")
    ablation = read_json(out / "ablation.json")
    assert m["ablation"] == ablation
    # P5's time counts the drawers' training as their checkpoints record it, not the ablation's (jobs 1: in turn)
    drawers = sum(r["train_seconds"] for r in m["history"] + m["sampler"]["history"])
    assert m["budget"]["measured"] == pytest.approx(m["wall_seconds"] - m["seconds"]["train"] + drawers)
    rows = ablation["rows"]
    assert [r["name"] for r in rows] == [name for name, _, _ in p5_draw.ABLATION]
    # the last row is the MSE drawer's settings; in a dry run both train one epoch, so they agree exactly
    assert rows[-1]["config"] == m["config"] and rows[-1]["val_mse"] == m["teacher_forced_mse"]["val"]
    first = rows[0]["config"]
    assert (first["hidden"], first["layers"], first["head_hidden"], first["position"], first["neighbours"]) == (
        64, 2, 0, False, False)
    assert rows[0]["val_mse_change"] is None
    for before, row in zip(rows, rows[1:]):
        assert row["val_mse_change"] == pytest.approx(row["val_mse"] - before["val_mse"])
    # a corrupt ablation.json is a one-line error before any work, and it is left as it was
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ablation.json").write_text('{"rows": [')
    code, err = run_main(p5_draw.main, ["--dry-run", "--quiet", "--out", tmp_path / "out", "--ckpt-dir", ckpt], capsys)
    assert code == 2 and err.count("\n") == 1 and "ablation.json is not readable" in err and "--ablation" in err, err
    assert (tmp_path / "out" / "ablation.json").read_text() == '{"rows": [' and len(list(tmp_path.rglob("*"))) == 2


def test_missing_baseline_and_bad_flags_are_clean_errors(tmp_path, capsys):
    code, err = run_main(p5_draw.main, ["--dry-run", "--quiet", "--out", tmp_path / "out", "--ckpt-dir",
                                        tmp_path / "none"], capsys)
    assert code == 2 and err.count("\n") == 1 and "p1_baseline_seed0.pt" in err and "p1_svd.py" in err, err
    assert not (tmp_path / "out" / "metrics.json").exists()
    for flags in (["--per-class", "0"], ["--samples", "4", "--ambiguous", "5"], ["--precision", "fp16"]):
        code, err = run_main(p5_draw.main, flags, capsys)
        assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and flags[-2] in err, err
