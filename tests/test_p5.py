"""Problem 5: patches round trip, the drawing loop (top half kept, predictions fed back), references, the script."""
import pytest
import torch

import p5_draw
from common.data import load_mnist
from p5_draw import PatchLSTM, draw, from_patches, mean_bottoms, nearest_bottoms, to_patches
from conftest import assert_clean_error, read_json, run_script


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


def test_drawn_patches_are_what_teacher_forcing_on_the_completion_predicts():
    """The state is carried correctly: one step at a time equals one pass over the completed sequence."""
    torch.manual_seed(0)
    model = PatchLSTM(hidden=16, layers=2).double().eval()
    x = torch.rand(5, 16, 49, dtype=torch.float64)
    completed = draw(model, x)
    with torch.no_grad():
        y, _ = model(completed[:, :-1])
    torch.testing.assert_close(y[:, 7:], completed[:, 8:], rtol=1e-12, atol=1e-12)
    image = from_patches(completed)
    assert image.shape == (5, 28, 28)
    assert torch.equal(image[:, :14], from_patches(x)[:, :14])


def test_model_shapes_and_bounded_output():
    model = PatchLSTM(hidden=8, layers=2)
    y, (h, c) = model(100 * torch.randn(4, 15, 49))
    assert y.shape == (4, 15, 49) and h.shape == c.shape == (2, 4, 8)
    assert y.min() >= 0 and y.max() <= 1


def test_teacher_forcing_compares_outputs_with_the_next_patch():
    x = torch.rand(6, 16, 49, dtype=torch.float64)
    stub = Stub()  # predicts "the input plus 1"
    loss = p5_draw.teacher_forced_loss(stub, (x,))
    assert stub.calls == [(15, None)]  # fed X[1..15] only
    torch.testing.assert_close(loss, ((x[:, :-1] + 1 - x[:, 1:]) ** 2).mean())
    per_image = p5_draw.teacher_forced_metrics(stub, (x,))["mse"]
    torch.testing.assert_close(per_image.mean(), loss)


# ----------------------------------------------------------------------------- references and scores

def test_nearest_neighbour_matches_brute_force():
    g = torch.Generator().manual_seed(2)
    train = torch.rand(50, 16, 49, generator=g, dtype=torch.float64)
    query = torch.rand(7, 16, 49, generator=g, dtype=torch.float64)
    query[3, :8] = train[11, :8]  # an exact match of a top half must find that image
    completed, index = nearest_bottoms(train, query, chunk=3)  # chunks of 3 cover 7 queries unevenly
    oracle = torch.stack([((train[:, :8] - q[:8]) ** 2).sum((1, 2)).argmin() for q in query])
    assert torch.equal(index, oracle) and index[3] == 11
    assert torch.equal(completed[:, :8], query[:, :8])
    assert torch.equal(completed[:, 8:], train[oracle, 8:])


def test_mean_bottom_reference():
    train = torch.rand(20, 16, 49, dtype=torch.float64)
    query = torch.rand(4, 16, 49, dtype=torch.float64)
    completed = mean_bottoms(train, query)
    assert torch.equal(completed[:, :8], query[:, :8])
    torch.testing.assert_close(completed[:, 8:], train[:, 8:].mean(0).expand(4, -1, -1))


def test_score_counts_the_bottom_half_and_the_true_class():
    original = torch.zeros(4, 16, 49)
    completed = original.clone()
    completed[:, :8] = 0.7      # the top halves differ too: the score must not count them
    completed[0, 8:] = 0.5      # image 0: every bottom pixel off by 0.5
    completed[1, 15, :7] = 1.0  # image 1: 7 pixels off by 1, the first row of the bottom-right patch: image row 21
    labels = torch.tensor([3, 1, 4, 1])

    def classifier(images):  # logits for class 1 if pixel (21, 27) is bright, else for class 3
        logits, bright = torch.zeros(len(images), 10), images[:, 21, 27] > 0.6
        logits[bright, 1] = logits[~bright, 3] = 1.0
        return logits

    s, predicted = p5_draw.score(completed, original, labels, classifier)
    assert s["bottom_mse"] == pytest.approx((8 * 49 * 0.5 ** 2 + 7 * 1.0 ** 2) / (4 * 8 * 49), rel=1e-6)
    assert predicted.tolist() == [3, 1, 3, 3]
    assert s["class_kept"] == 0.5  # images 0 and 1 keep their labels, 2 and 3 do not


def test_examples_are_per_class_distinct_and_repeatable():
    labels = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(3))
    picked = p5_draw.pick_examples(labels, 4, seed=0)
    assert picked.shape == (40,) and len(set(picked.tolist())) == 40
    assert torch.equal(labels[picked], torch.arange(10).repeat_interleave(4))  # a row per class
    assert torch.equal(picked, p5_draw.pick_examples(labels, 4, seed=0))
    assert not torch.equal(picked, p5_draw.pick_examples(labels, 4, seed=1))
    with pytest.raises(p5_draw.UserError, match="--per-class"):
        p5_draw.pick_examples(labels, 1000, seed=0)


def test_changed_completions_get_a_red_frame():
    images = torch.zeros(4, 28, 28)
    grid = p5_draw.framed_grid(images, per_class=2, changed=torch.tensor([True, False, False, True]))
    assert grid.shape == (3, 2 + 2 * 34, 2 + 2 * 34)
    red, black = torch.tensor([1.0, 0, 0]), torch.zeros(3)
    assert torch.equal(grid[:, 2, 2], red) and torch.equal(grid[:, 2, 36], black)    # images 0 and 1
    assert torch.equal(grid[:, 36, 2], black) and torch.equal(grid[:, 36, 36], red)  # images 2 and 3
    assert torch.equal(grid[:, 10, 10], black)  # inside a frame: the image itself


# ----------------------------------------------------------------------------- the script

@pytest.fixture
def ckpt_with_baseline(dry_p1, tmp_path):
    """A fresh checkpoint folder holding (a link to) the dry-run P1 baseline."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "p1_baseline_seed0.pt").symlink_to(dry_p1[1] / "p1_baseline_seed0.pt")
    return ckpt


def test_dry_run_writes_metrics_and_figures(ckpt_with_baseline, tmp_path, capsys):
    proc = run_script("p5_draw.py", "--dry-run", "--quiet", "--out", tmp_path / "out", "--ckpt-dir", ckpt_with_baseline)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    m = read_json(out / "metrics.json")
    assert m["dry_run"] is True and m["epochs_trained"] == 1
    for where in ("test", "examples"):
        assert set(m["drawing"][where]) == {"original", "lstm", "nearest_neighbour", "mean_bottom"}
        assert m["drawing"][where]["original"]["bottom_mse"] == 0
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
    assert (per_digit @ counts / counts.sum()).item() == pytest.approx(m["drawing"]["test"]["lstm"]["class_kept"])
    assert len(m["examples"]["indices"]) == 100
    assert m["examples"]["labels"] == [c for c in range(10) for _ in range(10)]
    assert m["classifier_config"] == read_json(out / "config.json")["classifier_config"]
    for name in ("completions.png", "originals.png", "side_by_side.png", "learning_curve.png"):
        assert (out / name).stat().st_size > 0
    assert (ckpt_with_baseline / "p5_lstm_seed0.pt").exists()

    # a finished checkpoint with the same config is reused, not retrained
    p5_draw.main(["--dry-run", "--out", str(tmp_path / "reused"), "--ckpt-dir", str(ckpt_with_baseline)])
    assert "reusing the finished run" in capsys.readouterr().out
    assert read_json(tmp_path / "reused" / "metrics.json")["drawing"] == m["drawing"]


def test_same_seed_same_numbers(ckpt_with_baseline, tmp_path):
    runs = []
    for name in ("a", "b"):
        ckpt = tmp_path / f"ckpt_{name}"
        ckpt.mkdir()
        (ckpt / "p1_baseline_seed0.pt").symlink_to(ckpt_with_baseline / "p1_baseline_seed0.pt")
        p5_draw.main(["--dry-run", "--quiet", "--out", str(tmp_path / name), "--ckpt-dir", str(ckpt)])
        runs.append(read_json(tmp_path / name / "metrics.json"))
    assert [r["val_mse"] for r in runs[0]["history"]] == [r["val_mse"] for r in runs[1]["history"]]
    assert runs[0]["drawing"] == runs[1]["drawing"]


def test_missing_baseline_is_a_clean_error(tmp_path):
    proc = run_script("p5_draw.py", "--dry-run", "--quiet", "--out", tmp_path / "out", "--ckpt-dir", tmp_path / "none")
    assert_clean_error(proc, "p1_baseline_seed0.pt", "p1_svd.py")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_bad_flag_is_a_clean_error():
    assert_clean_error(run_script("p5_draw.py", "--per-class", "0"), "--per-class")
