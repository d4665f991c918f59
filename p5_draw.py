"""Problem 5: LSTMs that draw the bottom half of MNIST digits, one 7x7 patch at a time.

Each 28x28 image becomes a sequence of 16 patches of 7x7 pixels (rows of patches, top-left to
bottom-right, each flattened to 49 values). Two drawers share one recurrent structure: an LSTM reads
the patches, each beside the one-hot of its position (patch 4 -> 5 jumps to the next row; told where
it is, the LSTM need not count), and a dense head looks at its state.

- The MSE drawer (the homework's): the head and a sigmoid predict the next patch; trained with teacher
  forcing (feed X[1..15], compare with X[2..16], MSE). Its drawings are the average of the plausible
  strokes, which is what minimises the MSE, so they are blurry.
- The sampling drawer (beyond the homework): the head gives a distribution over the next patch, a
  mixture of K patches of independent Bernoulli pixels, trained by likelihood with teacher forcing.
  It draws by sampling: a component per patch, whose pixel probabilities become the patch. A component
  is one coherent stroke, so the drawing commits to one of the plausible digits.

Both train on the 50,000 training images, with model selection on the other 10,000 (the homework
validates on the test set; here the test set is kept for the final numbers only). To draw, a drawer
reads the first 8 patches (the top half), then runs 7 single steps, each fed its own previous patch;
X[1..8] and the 8 drawn patches make the completed image. The P1 baseline classifier (seed 0) checks
whether a completion keeps its class; two references set the bar: the bottom half of the training
image whose top half is nearest (L2), and the mean bottom half.

    python p5_draw.py              # full quality (about 3 minutes on 2 CPU cores; needs P1's seed-0 baseline)
    python p5_draw.py --ablation   # also trains the MSE drawer's ablation variants (longer; writes ablation.json)
    python p5_draw.py --dry-run    # a tiny end-to-end run in seconds (needs `python p1_svd.py --dry-run`)

Writes results/p5/{metrics.json, config.json, completions.png, samples.png, ambiguous.png, originals.png,
side_by_side.png, learning_curve.png, mse_per_patch.png} and checkpoints/p5_{mse,sampler}_seed{seed}.pt;
a finished checkpoint whose config is unchanged is reused, not retrained.
"""
import argparse
import contextlib
import functools
import json
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset
from torchvision.utils import make_grid, save_image

from common.data import load_mnist
from common.mnist_mlp import load_baseline
from common.plot import plt, save_figure
from common.train import evaluate, init_distributed, is_main, load_checkpoint, load_finished, train_or_reuse, world
from common.utils import (ArgumentParser, UserError, add_common_args, atomic_path, goal, nonnegative_float,
                          nonnegative_int, pick_device, positive_float, positive_int, resolve_dirs, run_cli,
                          save_config, save_json, seed_everything, seed_int)

PATCH = 7                # patches are PATCH x PATCH pixels
PIXELS = PATCH * PATCH   # 49 values per patch
N_PATCHES = 16           # a 28 x 28 image is 4 x 4 patches
N_GIVEN = 8              # the top half: two rows of patches (image rows 0..13)


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seed of the LSTMs' initialisation, their batches and the sampling")
    p.add_argument("--hidden", type=positive_int, default=128, help="LSTM units per layer (both drawers)")
    p.add_argument("--layers", type=positive_int, default=1, help="stacked LSTM layers (both drawers)")
    p.add_argument("--position", action=argparse.BooleanOptionalAction, default=True,
                   help="feed each patch's position (a one-hot of 16) beside its pixels")
    p.add_argument("--head-hidden", type=nonnegative_int, default=256,
                   help="units of the heads' hidden ReLU layer (0: a single linear layer, as in the homework)")
    p.add_argument("--neighbours", action=argparse.BooleanOptionalAction, default=True,
                   help="the heads also see the next patch's left, above and above-right neighbours")
    p.add_argument("--components", type=positive_int, default=8,
                   help="mixture components of the sampling drawer's next-patch distribution")
    p.add_argument("--epochs", type=positive_int, default=8,
                   help="most training epochs of the MSE drawer (early stopping may end sooner; 8 fit P5's budget)")
    p.add_argument("--sampler-epochs", type=positive_int, default=5,
                   help="most training epochs of the sampling drawer (its head costs more per step)")
    p.add_argument("--patience", type=positive_int, default=4,
                   help="stop after this many epochs without a better validation score")
    p.add_argument("--batch-size", type=positive_int, default=64, help="mini-batch size")
    p.add_argument("--lr", type=positive_float, default=3e-3,
                   help="initial Adam learning rate (cosine decay to 0 over --epochs)")
    p.add_argument("--clip-grad", type=nonnegative_float, default=1.0, help="clip the gradient norm to this (0: no clipping)")
    p.add_argument("--samples", type=positive_int, default=10,
                   help="samples drawn by the sampling drawer for every test image (best-of-N scores)")
    p.add_argument("--per-class", type=positive_int, default=10,
                   help="test images drawn per digit class for the figures (a row per class)")
    p.add_argument("--examples-seed", type=seed_int, default=0,
                   help="seed that picks the test images of the figures")
    p.add_argument("--ambiguous", type=positive_int, default=10,
                   help="ambiguous top halves shown with several samples each")
    p.add_argument("--threads", type=nonnegative_int, default=1,
                   help="CPU threads for each training (0: torch's default); a small LSTM runs fastest on one")
    p.add_argument("--jobs", type=positive_int, default=2,
                   help="trainings run side by side on the CPU, each in its own process (1: one after the other)")
    p.add_argument("--ablation", action="store_true",
                   help="also train the MSE drawer's ablation variants and write ablation.json (several minutes)")
    p.add_argument("--ablation-epochs", type=positive_int, default=8,
                   help="epochs of each ablation variant (the same for every row, the final settings included)")
    add_common_args(p, out="results/p5")
    args = p.parse_args(argv)
    if args.ambiguous > args.samples:
        p.error(f"--ambiguous needs at least as many --samples ({args.samples}) as it shows; raise --samples")
    return args


# ----------------------------------------------------------------------------- 1. images <-> patch sequences

def to_patches(images, size=PATCH):
    """(N, H, W) -> (N, (H / size) * (W / size), size * size): patches in rows, top-left to bottom-right."""
    n, height, width = images.shape
    if height % size or width % size:
        raise ValueError(f"a {height}x{width} image does not split into {size}x{size} patches")
    rows, cols = height // size, width // size
    return (images.reshape(n, rows, size, cols, size)  # (N, patch row, pixel row, patch col, pixel col)
            .transpose(2, 3)
            .reshape(n, rows * cols, size * size))


def from_patches(patches, height=28, width=28):
    """The inverse of to_patches: (N, (H / size) * (W / size), size * size) -> (N, H, W)."""
    n, count, area = patches.shape
    size = round(area ** 0.5)
    rows, cols = height // size, width // size
    if size * size != area or rows * size != height or cols * size != width or rows * cols != count:
        raise ValueError(f"{count} patches of {area} pixels do not tile a {height}x{width} image")
    return (patches.reshape(n, rows, cols, size, size)
            .transpose(2, 3)
            .reshape(n, height, width))


def with_position(patches, start=0):
    """(batch, steps, 49) -> (batch, steps, 49 + 16): each patch followed by the one-hot of its index start, start + 1, ..."""
    n, steps, _ = patches.shape
    if start + steps > N_PATCHES:
        raise ValueError(f"patches {start}..{start + steps - 1} do not fit in a sequence of {N_PATCHES}")
    position = torch.eye(N_PATCHES, dtype=patches.dtype, device=patches.device)[start:start + steps]
    return torch.cat([patches, position.expand(n, steps, N_PATCHES)], dim=2)


def neighbours(patches, before, start=0, cols=4):
    """The patches above and above-right of each next patch: (batch, steps, 49) -> (batch, steps, 98).

    patches: the sequence's patches start, start + 1, ...; before: (batch, 3, 49), the three read before them
    (zeros at the sequence's start). Patch t + 1 lies below patch t - 3 and below-left of patch t - 2; in the
    first row there is nothing above (zeros), and in the last column nothing above-right (zeros).
    """
    steps = patches.shape[1]
    seq = torch.cat([before, patches], dim=1)  # index i holds patch start - 3 + i
    above, above_right = seq[:, :steps], seq[:, 1:steps + 1]
    next_col = torch.arange(start + 1, start + steps + 1, device=patches.device) % cols
    return torch.cat([above, above_right * (next_col != cols - 1)[None, :, None]], dim=2)


# ----------------------------------------------------------------------------- 2. the drawers

class PatchLSTM(nn.Module):
    """The MSE drawer: (batch, steps, 49) patches -> (batch, steps, 49) predictions of the next patch, in [0, 1].

    The LSTM reads each patch beside its position; the head, a ReLU layer, sees the LSTM's output and, with
    `neighbours`, the next patch's neighbours: left (the patch just read), above and above-right (read 3 and 2
    steps ago), which the LSTM would otherwise have to remember pixel by pixel. forward also takes and returns
    the state ((h, c), the last 3 patches read, how many were read), so that drawing can continue one step at
    a time from where the given patches left off.
    """

    def __init__(self, hidden=128, layers=1, position=True, head_hidden=256, neighbours=True, outputs=PIXELS):
        super().__init__()
        self.position, self.neighbours = position, neighbours
        self.lstm = nn.LSTM(PIXELS + N_PATCHES * position, hidden, num_layers=layers, batch_first=True)
        head_in = hidden + 3 * PIXELS * neighbours
        self.head = (nn.Sequential(nn.Linear(head_in, head_hidden), nn.ReLU(), nn.Linear(head_hidden, outputs))
                     if head_hidden else nn.Linear(head_in, outputs))

    def run(self, patches, state=None):
        """The head's raw output (batch, steps, outputs) and the new state."""
        if state is None:
            state = (None, patches.new_zeros(len(patches), 3, PIXELS), 0)
        lstm_state, before, start = state
        h, lstm_state = self.lstm(with_position(patches, start) if self.position else patches, lstm_state)
        if self.neighbours:  # h: (batch, steps, hidden) -> (batch, steps, hidden + 3 * 49)
            h = torch.cat([h, patches, neighbours(patches, before, start)], dim=2)
        read = torch.cat([before, patches], dim=1)[:, -3:]
        return self.head(h), (lstm_state, read, start + patches.shape[1])

    def forward(self, patches, state=None):
        out, state = self.run(patches, state)
        return torch.sigmoid(out), state  # pixels are in [0, 1], so is the prediction


class MixtureLSTM(PatchLSTM):
    """The sampling drawer: the same LSTM; its head gives a distribution over the next patch x (49 pixels),

        p(x) = sum_k w_k prod_i p_ki^x_i (1 - p_ki)^(1 - x_i),

    a mixture of `components` patches of independent Bernoulli pixels. forward returns
    ((log w (batch, steps, K), logits of p (batch, steps, K, 49)), state).
    """

    def __init__(self, hidden=128, layers=1, position=True, head_hidden=256, neighbours=True, components=8):
        super().__init__(hidden, layers, position, head_hidden, neighbours, outputs=components * (1 + PIXELS))
        self.components = components

    def forward(self, patches, state=None):
        out, state = self.run(patches, state)
        log_weights = out[..., :self.components].log_softmax(-1)
        logits = out[..., self.components:].unflatten(-1, (self.components, PIXELS))
        return (log_weights, logits), state


def mixture_nll(log_weights, logits, x):
    """-log p(x) in nats, per patch: log w (..., K), logits (..., K, pixels), x (..., pixels) in [0, 1] -> (...).

    With p = sigmoid(l), x log p + (1 - x) log(1 - p) = x l - softplus(l), so
    log p(x) = logsumexp_k (log w_k + sum_i x_i l_ki - softplus(l_ki)). MNIST's pixels are gray at the strokes'
    edges; for them the inner sum is the Bernoulli cross-entropy (the usual MNIST likelihood).
    """
    log_p_given_k = (logits @ x.unsqueeze(-1)).squeeze(-1) - F.softplus(logits).sum(-1)  # (..., K)
    return -torch.logsumexp(log_weights + log_p_given_k, dim=-1)


def mixture_mean(log_weights, logits):
    """The mixture's expected patch, sum_k w_k p_k: (..., K), (..., K, pixels) -> (..., pixels)."""
    return (log_weights.exp().unsqueeze(-1) * torch.sigmoid(logits)).sum(-2)


def teacher_forced_loss(model, batch):
    """The MSE drawer's loss: feed X[1..15], predict X[2..16]; the MSE per pixel."""
    (x,) = batch                  # (batch, 16, 49)
    y, _ = model(x[:, :-1])
    return F.mse_loss(y, x[:, 1:])


def teacher_forced_metrics(model, batch):
    """Per-image teacher-forced MSE per pixel, for common.train.evaluate."""
    (x,) = batch
    y, _ = model(x[:, :-1])
    return {"mse": ((y - x[:, 1:]) ** 2).mean((1, 2))}


def likelihood_loss(model, batch):
    """The sampling drawer's loss: feed X[1..15]; -log p(X[t+1] | X[1..t]) in nats per patch."""
    (x,) = batch
    (log_weights, logits), _ = model(x[:, :-1])
    return mixture_nll(log_weights, logits, x[:, 1:]).mean()


def likelihood_metrics(model, batch):
    """Per-image NLL in nats per patch, and the MSE per pixel of the mixture's expected patch."""
    (x,) = batch
    (log_weights, logits), _ = model(x[:, :-1])
    return {"nll": mixture_nll(log_weights, logits, x[:, 1:]).mean(1),
            "mse": ((mixture_mean(log_weights, logits) - x[:, 1:]) ** 2).mean((1, 2))}


@torch.no_grad()
def per_patch_mse(model, patches, chunk=2000):
    """Teacher-forced MSE per pixel of each predicted patch 2..16, over all of `patches`: (15,)."""
    sums = sum(((model(x[:, :-1])[0] - x[:, 1:]) ** 2).sum((0, 2)) for x in patches.split(chunk))
    return sums / (len(patches) * patches.shape[2])


def last_prediction(y):
    """The MSE drawer's next patch: its prediction at the last step, (batch, 1, 49)."""
    return y[:, -1:]


def sample_patch(params, generator=None):
    """The sampling drawer's next patch: from the last step's mixture pick a component k ~ w, then its p_k.

    params: (log w (batch, steps, K), logits (batch, steps, K, 49)) -> (batch, 1, 49). The component carries
    the randomness (which stroke); its pixel probabilities, not coin flips per pixel, become the patch, as
    MNIST's own gray stroke edges are (a VAE shows the mean of p(x | z) for the same reason).
    """
    log_weights, logits = params[0][:, -1], params[1][:, -1]          # (batch, K), (batch, K, 49)
    k = torch.multinomial(log_weights.exp(), 1, generator=generator)   # (batch, 1)
    return torch.sigmoid(logits.gather(1, k[:, :, None].expand(-1, -1, logits.shape[-1])))


@torch.no_grad()
def draw(model, patches, n_given=N_GIVEN, next_patch=last_prediction):
    """Complete each sequence from its first `n_given` patches, feeding every drawn patch back in.

    patches: (batch, 16, 49); only patches[:, :n_given] are read. next_patch(model output) -> (batch, 1, 49)
    turns the last step's output into the drawn patch. Returns (batch, 16, 49) whose first `n_given` patches
    are the given ones, unchanged, followed by the drawn Y[n_given..15].
    """
    y, state = model(patches[:, :n_given])
    drawn = [next_patch(y)]                  # Y[8]: the patch 9 drawn after reading 1..8
    for _ in range(patches.shape[1] - n_given - 1):
        y, state = model(drawn[-1], state)   # one step, fed the previous drawn patch
        drawn.append(next_patch(y))
    return torch.cat([patches[:, :n_given], *drawn], dim=1)


# ----------------------------------------------------------------------------- 3. the references

@torch.no_grad()
def nearest_tops(train_patches, query_patches, k=1, n_given=N_GIVEN, chunk=1000):
    """For each query, the indices of the `k` training sequences whose top halves are nearest in L2: (N_query, k).

    |q - t|^2 = |q|^2 - 2 q.t + |t|^2; |q|^2 is the same for every t, so ranking t by |t|^2 - 2 q.t needs
    one matrix product per chunk of queries: (chunk, 392) x (392, N_train).
    """
    train_top = train_patches[:, :n_given].flatten(1)  # (N_train, 392)
    train_sq = (train_top ** 2).sum(1)
    return torch.cat([(train_sq - 2 * query[:, :n_given].flatten(1) @ train_top.T).topk(k, largest=False).indices
                      for query in query_patches.split(chunk)])


def nearest_bottoms(train_patches, query_patches, n_given=N_GIVEN, chunk=1000):
    """Each query's top half above the bottom half of the training sequence whose top half is nearest.

    Returns (the completed sequences (N_query, 16, 49), the index of each query's neighbour).
    """
    index = nearest_tops(train_patches, query_patches, 1, n_given, chunk).squeeze(1)
    return torch.cat([query_patches[:, :n_given], train_patches[index, n_given:]], dim=1), index


def mean_bottoms(train_patches, query_patches, n_given=N_GIVEN):
    """Each query's top half above the mean bottom half of the training set."""
    mean = train_patches[:, n_given:].mean(0, keepdim=True)  # (1, 8, 49)
    return torch.cat([query_patches[:, :n_given], mean.expand(len(query_patches), -1, -1)], dim=1)


# ----------------------------------------------------------------------------- 4. scoring completions

@torch.no_grad()
def predict(classifier, images, chunk=2000):
    """The classifier's labels for (N, 28, 28) images in [0, 1]."""
    return torch.cat([classifier(x).argmax(1) for x in images.split(chunk)])


def sharpness(pixels, margin=0.1):
    """The share of `pixels` within `margin` of 0 or 1: how much of a drawing is committed ink or background.

    MNIST's strokes are nearly binary with a thin gray edge; an average of several plausible strokes spreads
    gray over many pixels. (A blank drawing would be perfectly sharp: read it beside class kept and ink.)
    """
    return ((pixels <= margin) | (pixels >= 1 - margin)).double().mean().item()


def score(completed, original, labels, classifier, n_given=N_GIVEN):
    """Scores of S completions of each of N sequences against the originals, and the classifier's labels (S, N).

    completed: (S, N, 16, 49) (S = 1 for a deterministic drawer); original: (N, 16, 49); labels: (N,).
    bottom_mse: MSE per pixel of the bottom half, over all S x N completions; best_of_k_bottom_mse: each
    image's closest of its k = S completions, averaged over images; class_kept: the share of the S x N
    completions that the classifier puts in the true class; sharpness and ink (mean pixel) of the bottom halves.
    """
    bottom = completed[:, :, n_given:]
    mse = ((bottom - original[:, n_given:]) ** 2).mean((2, 3))   # (S, N)
    predicted = torch.stack([predict(classifier, from_patches(c)) for c in completed])
    return {"bottom_mse": mse.mean().item(), "best_of_k_bottom_mse": mse.min(0).values.mean().item(),
            "k": len(completed), "class_kept": (predicted == labels).double().mean().item(),
            "sharpness": sharpness(bottom), "ink": bottom.mean().item()}, predicted


def pick_examples(labels, per_class, seed):
    """`per_class` test indices of every class 0..9, class by class, chosen with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(10):
        index = (labels == c).nonzero().squeeze(1)
        if len(index) < per_class:
            raise UserError(f"the test set has only {len(index)} images of digit {c}; lower --per-class")
        picked.append(index[torch.randperm(len(index), generator=g)[:per_class]])
    return torch.cat(picked)


def pick_ambiguous(neighbour_labels, count):
    """The `count` most ambiguous top halves: those whose nearest training top halves disagree most on the label.

    neighbour_labels: (N, k) labels of each test image's k nearest training top halves. Ambiguity is
    1 - (the share of the most common label); ties go to the lower index. The choice sees no drawer.
    Returns (indices (count,), the neighbours' label counts (count, 10)).
    """
    votes = F.one_hot(neighbour_labels, 10).sum(1)  # (N, 10)
    majority = votes.max(1).values
    order = torch.argsort(majority, stable=True)    # fewest votes for the top label first
    index = order[:count]
    return index, votes[index]


# ----------------------------------------------------------------------------- 5. training

def drawer_config(kind, args, data):
    """Everything that decides a trained drawer; a finished checkpoint is reused only if this matches."""
    config = {"kind": kind, "hidden": args.hidden, "layers": args.layers, "position": args.position,
              "head_hidden": args.head_hidden, "neighbours": args.neighbours,
              "epochs": args.epochs if kind == "mse" else args.sampler_epochs, "patience": args.patience, "batch_size": args.batch_size, "lr": args.lr,
              "clip_grad": args.clip_grad, "seed": args.seed,
              "train_size": len(data["train"][0]), "val_size": len(data["val"][0])}
    if kind == "sampler":
        config["components"] = args.components
    return config


def make_drawer(config):
    """A fresh drawer of config["kind"]: "mse" (PatchLSTM) or "sampler" (MixtureLSTM)."""
    shape = (config["hidden"], config["layers"], config["position"], config["head_hidden"], config["neighbours"])
    if config["kind"] == "mse":
        return PatchLSTM(*shape)
    return MixtureLSTM(*shape, config["components"])


def train_drawer(kind, data, args, device, path):
    """Train the MSE drawer (kind "mse") or the sampling drawer ("sampler") unless a finished run with the same
    config is at `path`; returns (history, config). The kept weights are the checkpoint's (load_drawer).

    Model selection and early stopping on the validation MSE (MSE drawer) or NLL (sampling drawer).
    """
    config = drawer_config(kind, args, data)
    seed_everything(args.seed)
    model = make_drawer(config).to(device)
    loss_fn, metrics_fn, monitor = ((teacher_forced_loss, teacher_forced_metrics, "val_mse") if kind == "mse" else
                                    (likelihood_loss, likelihood_metrics, "val_nll"))
    val_set = TensorDataset(to_patches(data["val"][0]))

    def validate(m):
        return {f"val_{k}": v for k, v in evaluate(m, val_set, metrics_fn, device=device).items()}

    # Adam (AdamW without weight decay), no warm-up: the learning rate decays along a cosine from --lr to 0
    history = train_or_reuse(model, loss_fn, TensorDataset(to_patches(data["train"][0])),
                             validate=validate, monitor=monitor, mode="min", patience=args.patience, warmup=0,
                             epochs=config["epochs"], batch_size=args.batch_size, lr=args.lr, weight_decay=0.0,
                             seed=args.seed, clip_grad=args.clip_grad or None, ckpt_path=path, config=config,
                             resume=args.resume, device=device, desc=f"p5 {kind}", quiet=args.quiet)
    return history, config


def load_drawer(path, config, device):
    """The drawer that train_drawer finished at `path`, with its best epoch's weights, in eval mode."""
    model = make_drawer(config)
    model.load_state_dict(load_checkpoint(path, config)["best_model"])
    return model.to(device).eval()


def train_drawers(jobs, args, to_train):
    """Run train_drawer(kind, data, args, device, path) for each job; returns the results in order.
    to_train: how many of the jobs have no finished run to reuse (is_finished).

    Each small LSTM runs fastest on one core, so on a CPU with cores to spare (--jobs) the drawers that need
    training train side by side, each in its own process; a job seeds itself, so the models are the ones a
    sequential run makes. Ctrl-C or SIGTERM reaches every job: each saves its checkpoint, --resume continues.
    """
    if args.jobs == 1 or to_train < 2 or jobs[0][3].type != "cpu" or world()[1] > 1:
        return [train_on_threads(*job) for job in jobs]
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked thread pools
    with ProcessPoolExecutor(min(args.jobs, len(jobs)), mp_context=context, initializer=ignore_signals) as pool, \
            forward_signals():
        futures = [pool.submit(train_on_threads, *job) for job in jobs]
        return [f.result() for f in futures]


def is_finished(job):
    """Whether a finished run of this train_drawer job is in its checkpoint (so it will be reused)."""
    kind, data, args, _, path = job
    return load_finished(path, drawer_config(kind, args, data)) is not None


def train_on_threads(kind, data, args, device, path):
    with threads(args.threads):
        return train_drawer(kind, data, args, device, path)


def ignore_signals():
    """In a pool worker: SIGINT and SIGTERM stop a training (fit checkpoints, then stops), never an idle worker,
    whose death would break the pool."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def forward_signals():
    """While the block runs, pass SIGINT and SIGTERM on to the child processes (they checkpoint and stop)."""
    def forward(signum, frame):
        for child in multiprocessing.active_children():
            os.kill(child.pid, signum)

    before = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


# The MSE drawer's ablation: from the homework's LSTM to this script's defaults, one change per row (each
# row keeps the changes above it). `python p5_draw.py --ablation` trains every row for --ablation-epochs.
ABLATION = [
    ("homework", "the homework's LSTM: 2 x 64 units and a linear head (batch 64, lr 3e-3)",
     {"hidden": 64, "layers": 2, "head_hidden": 0, "position": False, "neighbours": False,
      "batch_size": 64, "lr": 3e-3, "epochs": 30}),
    ("position", "+ each patch's position (one-hot of 16) in the LSTM's input", {"position": True}),
    ("one_layer_128", "one layer of 128 units instead of 2 x 64", {"hidden": 128, "layers": 1}),
    ("mlp_head", "a head with a hidden layer (256 ReLU) instead of a linear one", {"head_hidden": 256}),
    ("neighbours", "+ the next patch's left, above and above-right neighbours in the head's input",
     {"neighbours": True}),
]


def ablation_jobs(args, data, device):
    """(name, change, config, train_drawer job) of each ABLATION row, each trained for --ablation-epochs."""
    rows, changes = [], {}
    for name, change, overrides in ABLATION:
        changes.update(overrides)
        row_args = argparse.Namespace(**{**vars(args), **changes, "epochs": args.ablation_epochs})
        path = args.ckpt_dir / f"p5_ablation_{name}_seed{args.seed}.pt"
        rows.append((name, change, drawer_config("mse", row_args, data), ("mse", data, row_args, device, path)))
    final = argparse.Namespace(**{**vars(args), "epochs": args.ablation_epochs})
    if rows[-1][2] != drawer_config("mse", final, data):
        raise UserError("--ablation ends at the default MSE drawer; run it without changing the MSE drawer's flags")
    return rows


def ablation_table(rows, histories):
    """The ablation's rows: the best validation MSE of each, and its change from the row above."""
    table = []
    for (name, change, config, _), history in zip(rows, histories):
        best = min(history, key=lambda r: r["val_mse"])
        table.append({"name": name, "change": change, "val_mse": best["val_mse"],
                      "val_mse_change": None if not table else best["val_mse"] - table[-1]["val_mse"],
                      "best_epoch": best["epoch"], "epochs_trained": len(history),
                      "train_seconds": sum(r["train_seconds"] for r in history),
                      "params": sum(p.numel() for p in make_drawer(config).parameters()),
                      "config": config})
    return table


@contextlib.contextmanager
def threads(n):
    """Run the block on `n` CPU threads (0: leave torch's default), then restore the previous count.

    A small LSTM does many small matrix products; splitting each over 2 threads costs more than it
    saves, and on a busy machine the threads wait for each other (measured on the shared 2-core
    machine, other jobs running: 1 thread 8-36 ms a step, 2 threads 20-30x slower).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- main

def main(argv=None):
    t_start = time.time()
    args = get_args(argv)
    resolve_dirs(args, "p5")
    device = init_distributed(pick_device(args.device))
    classifier, classifier_config = load_baseline(args.ckpt_dir, 0)  # first: fail before training, not after
    classifier = classifier.to(device)
    data = load_mnist(dry_run=args.dry_run)  # --dry-run: a few batches, the real models and the real code path
    if args.dry_run:
        args.epochs = args.sampler_epochs = args.ablation_epochs = 1
    examples = pick_examples(data["test"][1], args.per_class, args.examples_seed)  # the figures' test images
    seconds = {"setup": time.time() - t_start}

    # 1. both drawers (and with --ablation the MSE drawer's variants), trained side by side, or reused
    t0 = time.time()
    paths = {kind: args.ckpt_dir / f"p5_{kind}_seed{args.seed}.pt" for kind in ("mse", "sampler")}
    jobs = [(kind, data, args, device, path) for kind, path in paths.items()]
    ablation_rows = ablation_jobs(args, data, device) if args.ablation else []
    jobs += [row[3] for row in ablation_rows]
    to_train = sum(not is_finished(job) for job in jobs)
    trained_now = to_train > 0
    (history, config), (sampler_history, sampler_config), *ablation_runs = train_drawers(jobs, args, to_train)
    mse_model = load_drawer(paths["mse"], config, device)
    sampler = load_drawer(paths["sampler"], sampler_config, device)
    seconds["train"] = time.time() - t0
    if args.ablation:
        save_json(args.out / "ablation.json", {"epochs": args.ablation_epochs, "config": config,
                                               "rows": ablation_table(ablation_rows, [h for h, _ in ablation_runs])})

    # 2. teacher-forced scores on the test set
    t0 = time.time()
    test_x, test_y = data["test"]
    test = to_patches(test_x).to(device)  # (10000, 16, 49)
    tf_test = evaluate(mse_model, TensorDataset(test), teacher_forced_metrics, device=device)["mse"]
    tf_test_per_patch = per_patch_mse(mse_model, test)
    sampler_test = evaluate(sampler, TensorDataset(test), likelihood_metrics, device=device)
    if not is_main():
        return

    # 3. every completion of the whole test set (the figures' are a subset): the MSE drawer's, `samples`
    # samples per image from the sampling drawer (a fixed generator: the same seed, the same drawings), the references
    train = to_patches(data["train"][0]).to(device)
    generator = torch.Generator(device).manual_seed(args.seed)
    sample = functools.partial(sample_patch, generator=generator)
    completed = {"lstm": draw(mse_model, test)[None],
                 "sampler": torch.stack([draw(sampler, test, next_patch=sample) for _ in range(args.samples)]),
                 "nearest_neighbour": nearest_bottoms(train, test)[0][None],
                 "mean_bottom": mean_bottoms(train, test)[None]}
    neighbour_labels = data["train"][1].to(device)[nearest_tops(train, test, k=20)]  # (10000, 20)
    seconds["draw"] = time.time() - t0

    # 4. scores: the whole test set and the figures' examples
    t0 = time.time()
    examples, test_y = examples.to(device), test_y.to(device)
    drawing = {"test": {}, "examples": {}}
    predicted = {}
    for name, seqs in [("original", test[None])] + list(completed.items()):
        drawing["test"][name], predicted[name] = score(seqs, test, test_y, classifier)
        drawing["examples"][name], _ = score(seqs[:, examples], test[examples], test_y[examples], classifier)
    ambiguous, votes = pick_ambiguous(neighbour_labels, args.ambiguous)
    seconds["score"] = time.time() - t0

    # 5. figures, then metrics.json
    t0 = time.time()
    n_show = min(8, args.samples)  # samples shown per ambiguous top half
    changed = {k: predicted[k][0] != test_y for k in ("lstm", "sampler")}  # the first sample stands for the sampler
    ambiguous_info = {
        "indices": ambiguous.tolist(), "labels": test_y[ambiguous].tolist(),
        "neighbour_votes": votes.tolist(),  # labels of the 20 nearest training top halves, counted per class
        "lstm_predicted": predicted["lstm"][0, ambiguous].tolist(),
        "sampler_predicted": predicted["sampler"][:n_show, ambiguous].T.tolist(),  # (count, n_show)
        "sampler_classes_per_image": [len(set(p)) for p in predicted["sampler"][:n_show, ambiguous].T.tolist()]}
    shown = {k: from_patches(v[0, examples]).cpu() for k, v in [("original", test[None])] + list(completed.items())}
    make_figures(shown, {k: v[examples].cpu() for k, v in changed.items()}, drawing["examples"], history,
                 sampler_history, tf_test_per_patch.cpu(), args.per_class, args.out)
    ambiguous_figure(test[ambiguous].cpu(), completed["lstm"][0, ambiguous].cpu(),
                     completed["sampler"][:n_show, ambiguous].cpu(), ambiguous_info, args.out / "ambiguous.png")
    seconds["figures"] = time.time() - t0

    best = min(history, key=lambda r: r["val_mse"])
    sampler_best = min(sampler_history, key=lambda r: r["val_nll"])
    lstm, samples, original = (drawing["test"][k] for k in ("lstm", "sampler", "original"))
    ablation_file = args.out / "ablation.json"
    ablation = json.loads(ablation_file.read_text()) if ablation_file.exists() else None
    if ablation is not None and ablation["config"] != config:
        print(f"[p5] {ablation_file} was made for other settings: left out of metrics.json (run --ablation again)")
        ablation = None
    wall = time.time() - t_start

    metrics = {
        # the MSE drawer (the homework's): teacher-forced MSE per pixel, training
        "teacher_forced_mse": {"val": best["val_mse"], "test": tf_test},
        "best_epoch": best["epoch"], "epochs_trained": len(history),
        "teacher_forced_test_mse_per_patch": tf_test_per_patch.tolist(),  # targets: patches 2..16
        "params": sum(p.numel() for p in mse_model.parameters()),
        "history": history, "config": config,
        # the sampling drawer: teacher-forced NLL (nats per patch) and the MSE per pixel of its mixture's mean
        "sampler": {"teacher_forced": {"val_nll": sampler_best["val_nll"], "test_nll": sampler_test["nll"],
                                       "val_mse_of_mean": sampler_best["val_mse"],
                                       "test_mse_of_mean": sampler_test["mse"]},
                    "best_epoch": sampler_best["epoch"], "epochs_trained": len(sampler_history),
                    "params": sum(p.numel() for p in sampler.parameters()),
                    "samples_per_image": args.samples, "history": sampler_history, "config": sampler_config},
        # completions, whole test set and the figures' examples: "lstm" is the MSE drawer, "sampler" the sampling
        # drawer (k = args.samples samples per image), then the references and the originals themselves
        "drawing": drawing,
        "goals": {
            "teacher_forced_test_mse": goal(tf_test, at_most=0.025),
            "mse_drawer_class_kept": goal(lstm["class_kept"], at_least=0.94),
            "sampler_class_kept": goal(samples["class_kept"], at_least=0.90),
            "sampler_best_of_k_below_mse_drawer": goal(samples["best_of_k_bottom_mse"], below=lstm["bottom_mse"],
                                                       compared_with="the MSE drawer's bottom-half MSE"),
            # distance of the samples' sharpness from the originals', below the MSE drawer's distance
            "sampler_sharpness_closer_to_originals": goal(
                abs(samples["sharpness"] - original["sharpness"]),
                below=abs(lstm["sharpness"] - original["sharpness"]),
                measure="|sharpness - the originals' sharpness|", compared_with="the MSE drawer's"),
            # below both references on the same images: the LSTM's MSE over the better reference's, worst split
            "lstm_mse_over_best_reference": goal(max(
                s["lstm"]["bottom_mse"] / min(s["nearest_neighbour"]["bottom_mse"], s["mean_bottom"]["bottom_mse"])
                for s in drawing.values()), below=1.0)},
        # P5's share of the main job; measured only by a run that trains both drawers (a re-run reuses them)
        "budget": goal(wall, at_most=180, what="wall seconds of a run that trains both drawers")
                  if trained_now and not args.ablation else None,
        "class_kept_per_digit": {str(c): (~changed["lstm"][test_y == c]).double().mean().item() for c in range(10)},
        "sampler_class_kept_per_digit": {  # over all samples
            str(c): (predicted["sampler"][:, test_y == c] == c).double().mean().item() for c in range(10)},
        "examples": {"indices": examples.tolist(), "labels": test_y[examples].tolist(),
                     "lstm_predicted": predicted["lstm"][0, examples].tolist(),
                     "sampler_predicted": predicted["sampler"][0, examples].tolist()},
        "ambiguous": ambiguous_info,
        "ablation": ablation,  # ablation.json, written by `python p5_draw.py --ablation`; None before that ran
        "figures": {name: f"{name}.png" for name in (  # beside metrics.json
            "side_by_side", "completions", "samples", "ambiguous", "originals", "learning_curve", "mse_per_patch")},
        "classifier_config": classifier_config,
        "device": str(device), "train_threads": args.threads or torch.get_num_threads(), "jobs": args.jobs,
        "dry_run": args.dry_run, "trained_in_this_run": trained_now,
        "seconds": seconds,
        "wall_seconds": wall}
    save_json(args.out / "metrics.json", metrics)
    save_config(args.out / "config.json", args, classifier_config=classifier_config)
    print(f"[p5] MSE drawer: teacher-forced test MSE {tf_test:.4f}, bottom-half MSE {lstm['bottom_mse']:.4f}, "
          f"class kept {lstm['class_kept']:.3f}; sampling drawer ({args.samples} samples): best-of-{args.samples} "
          f"bottom-half MSE {samples['best_of_k_bottom_mse']:.4f}, class kept {samples['class_kept']:.3f}, "
          f"sharpness {samples['sharpness']:.3f} (originals {original['sharpness']:.3f}, MSE drawer "
          f"{lstm['sharpness']:.3f}); {wall:.0f} s; wrote {args.out}/metrics.json")


# ----------------------------------------------------------------------------- figures

def framed_grid(images, per_class, changed=None):
    """A make_grid of (N, 28, 28) images, a row per class; a red frame marks the `changed` ones."""
    n = len(images)
    frame = torch.zeros(n, 3)                  # black: invisible on MNIST's black background
    if changed is not None:
        frame[changed] = torch.tensor([1.0, 0.0, 0.0])
    framed = frame[:, :, None, None].repeat(1, 1, 32, 32)  # (N, 3, 32, 32): a 2-pixel frame
    framed[:, :, 2:-2, 2:-2] = images.unsqueeze(1)
    return make_grid(framed, nrow=per_class, padding=2, pad_value=0.5)


def save_grid(grid, path):
    with atomic_path(path) as tmp:
        save_image(grid, tmp, format="png")


def make_figures(images, changed, scores, history, sampler_history, mse_per_patch, per_class, out):
    """images: {'original', 'lstm', 'sampler', 'nearest_neighbour', 'mean_bottom'} -> (100, 28, 28) in [0, 1];
    changed: {'lstm', 'sampler'} -> (100,) bool, the completions whose class the classifier changed."""
    save_grid(framed_grid(images["lstm"], per_class, changed["lstm"]), out / "completions.png")
    save_grid(framed_grid(images["sampler"], per_class, changed["sampler"]), out / "samples.png")
    save_grid(framed_grid(images["original"], per_class), out / "originals.png")

    panels = [("original", "originals"), ("lstm", "MSE drawer"), ("sampler", "sampling drawer (1 sample)"),
              ("nearest_neighbour", "nearest-neighbour bottom"), ("mean_bottom", "mean bottom")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.8))
    for ax, (key, title) in zip(axes, panels):
        ax.imshow(framed_grid(images[key], per_class, changed.get(key)).permute(1, 2, 0).numpy(),
                  interpolation="nearest")
        s = scores[key]
        detail = (f"class kept {100 * s['class_kept']:.0f}%" if key == "original" else
                  f"bottom MSE {s['bottom_mse']:.4f}, class kept {100 * s['class_kept']:.0f}%")
        ax.set_title(f"{title}\n{detail}", fontsize=10)
        ax.axis("off")
    fig.suptitle("P5: top half given (rows 0-13), bottom half drawn; a row per digit; red frame: class changed",
                 fontsize=11)
    save_figure(fig, out / "side_by_side.png")

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for a, hist, key, name in [(ax, history, "val_mse", "MSE drawer: MSE per pixel"),
                               (ax2, sampler_history, "val_nll", "sampling drawer: NLL, nats per patch")]:
        epochs = [r["epoch"] for r in hist]
        a.plot(epochs, [r["train_loss"] for r in hist], marker="o", label="train (teacher forced)")
        a.plot(epochs, [r[key] for r in hist], marker="o", label="validation (teacher forced)")
        best = min(hist, key=lambda r: r[key])
        a.axvline(best["epoch"], color="k", ls=":", lw=1, label=f"kept: epoch {best['epoch']}")
        a.set(xlabel="epoch", title=name)
        a.legend()
        a.grid(alpha=0.3)
    fig.suptitle("P5: training the two drawers", fontsize=11)
    save_figure(fig, out / "learning_curve.png")

    fig, ax = plt.subplots(figsize=(4.6, 4))
    grid = torch.cat([torch.tensor([float("nan")]), mse_per_patch.double()]).reshape(4, 4)  # patch 1 is never a target
    shown = ax.imshow(grid.numpy(), cmap="viridis")
    for (r, c), v in zip(((r, c) for r in range(4) for c in range(4)), grid.flatten().tolist()):
        ax.text(c, r, "given" if r == c == 0 else f"{v:.3f}", ha="center", va="center",
                color="k" if r == c == 0 or v > grid.nanmean() else "w", fontsize=9)
    ax.set(xticks=[], yticks=[], title="P5: teacher-forced test MSE per pixel\nof each predicted 7x7 patch")
    fig.colorbar(shown, ax=ax, fraction=0.046)
    save_figure(fig, out / "mse_per_patch.png")


def ambiguous_figure(original, lstm, samples, info, path):
    """A row per ambiguous top half: the original, the MSE drawer's completion, then the samples; each titled
    with the classifier's label. original, lstm: (count, 16, 49); samples: (shown, count, 16, 49)."""
    count, shown = len(original), len(samples)
    fig, axes = plt.subplots(count, shown + 2, figsize=(1.1 * (shown + 2), 1.25 * count), squeeze=False)
    for i in range(count):
        row = [(original[i], f"original {info['labels'][i]}"), (lstm[i], f"MSE: {info['lstm_predicted'][i]}")]
        row += [(samples[s, i], str(info["sampler_predicted"][i][s])) for s in range(shown)]
        for ax, (seq, title) in zip(axes[i], row):
            ax.imshow(from_patches(seq[None])[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.axhline(13.5, color="tab:blue", lw=0.6)  # below the line: drawn
            ax.set_title(title, fontsize=7, pad=2)
            ax.axis("off")
    fig.suptitle("P5: ambiguous top halves (nearest training top halves disagree on the label); "
                 "the MSE drawer's completion, then samples, each titled with P1's classifier label", fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    run_cli(main)
