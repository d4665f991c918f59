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

Both train on 50,000 training images, selected on the other 10,000 (the test set gives the final numbers
only). To draw, a drawer reads the first 8 patches (the top half), then runs 7 single steps, each fed its
own previous patch; X[1..8] and the 8 drawn patches make the completed image. The P1 baseline classifier (seed 0) checks
whether a completion keeps its class; two references set the bar: the bottom half of the training
image whose top half is nearest (L2), and the mean bottom half.

    python p5_draw.py              # full quality (README gives the time; needs P1's seed-0 baseline)
    python p5_draw.py --ablation   # also trains the MSE drawer's ablation variants (longer; writes ablation.json)
    python p5_draw.py --dry-run    # a tiny end-to-end run in seconds (needs `python p1_svd.py --dry-run`)

Writes results/p5/ (metrics.json, config.json, figures) and checkpoints/p5_{mse,sampler}_seed{seed}.pt (reused,
not retrained, when finished with the same config).
"""
import argparse
import functools
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from common.ablation import ablation_configs, read_ablation, write_ablation
from common.cli import (ArgumentParser, TrainingFlags, add_common_args, bounded_int, nonnegative_float, pick_device,
                        positive_float, run_cli, seed_int, thread_count)
from common.drawing.figures import FIGURES, drawing_figures
from common.processes import run_jobs
from common.drawing.scores import (ambiguous_record, completion_metrics, drawer_metrics, mean_bottoms, nearest_bottoms,
                                   nearest_tops, per_patch_mse, pick_ambiguous, pick_examples, score_all, summary)
from common.files import resolve_dirs, save_config, save_json
from common.goals import target
from common.mnist.data import load_mnist
from common.mnist.mlp import load_baseline
from common.precision import add_precision_flag, full_precision, machine, resolve_precision
from common.train import (evaluate, init_distributed, is_main, load_checkpoint, n_params, prior_run, seed_everything,
                          train_or_reuse, trained_seconds, world)

PATCH = 7                # patches are PATCH x PATCH pixels
PIXELS = PATCH * PATCH   # 49 values per patch
N_PATCHES = 16           # a 28 x 28 image is 4 x 4 patches
N_GIVEN = 8              # the top half: two rows of patches (image rows 0..13)
ABLATION_RUN = "python p5_draw.py --ablation"  # what writes ablation.json


def get_args(argv=None):
    """(args, {"mse": [TrainingFlags, ...], "sampler": [...]}: the flag groups that define each drawer)."""
    p = ArgumentParser(description=__doc__.split("\n")[0])
    both = TrainingFlags(p, "both drawers (a finished checkpoint is reused only if these and its own match)")
    both.add("--seed", type=seed_int, default=0, help="seed of the initialisation, the batches and the sampling")
    both.add("--hidden", type=bounded_int(1, 2048), default=128, help="LSTM units per layer")
    both.add("--layers", type=bounded_int(1, 8), default=1, help="stacked LSTM layers")
    both.add("--position", action=argparse.BooleanOptionalAction, default=True,
             help="feed each patch's position (a one-hot of 16) beside its pixels")
    both.add("--head-hidden", type=bounded_int(0, 4096), default=512,
             help="units of the heads' hidden ReLU layer (0: a single linear layer, as in the homework)")
    both.add("--neighbours", action=argparse.BooleanOptionalAction, default=True,
             help="the heads also see the next patch's left, above and above-right neighbours")
    both.add("--patience", type=bounded_int(1, 1000), default=4, help="stop after this many epochs without improvement")
    both.add("--batch-size", type=bounded_int(1, 8192), default=64, help="mini-batch size")
    both.add("--lr", type=positive_float, default=3e-3, help="initial Adam learning rate (cosine decay to 0)")
    both.add("--clip-grad", type=nonnegative_float, default=1.0, help="clip the gradient norm (0: no clipping)")
    add_precision_flag(both)
    mse = TrainingFlags(p, "the MSE drawer")
    mse.add("--epochs", type=bounded_int(1, 1000), default=12, help="most epochs (early stopping may end sooner)")
    sampler = TrainingFlags(p, "the sampling drawer")
    sampler.add("--components", type=bounded_int(1, 64), default=8, help="mixture components of a next patch")
    sampler.add("--sampler-epochs", type=bounded_int(1, 1000), default=5, help="most epochs (a step costs more)")
    p.add_argument("--samples", type=bounded_int(1, 32), default=10, help="samples drawn per test image (best-of-N)")
    p.add_argument("--per-class", type=bounded_int(1, 50), default=10, help="test images per digit in the figures")
    p.add_argument("--examples-seed", type=seed_int, default=0, help="seed that picks the figures' test images")
    p.add_argument("--ambiguous", type=bounded_int(1, 32), default=10, help="ambiguous top halves shown with samples")
    p.add_argument("--threads", type=thread_count(), default=1,
                   help="CPU threads of each training (0: torch's default); a small LSTM runs fastest on one")
    p.add_argument("--jobs", type=bounded_int(1, 8), default=2, help="trainings at once, a process each (1: in turn)")
    p.add_argument("--ablation", action="store_true", help="also train the MSE drawer's ablation (ablation.json)")
    p.add_argument("--ablation-epochs", type=bounded_int(1, 1000), default=8, help="epochs of every ablation row")
    add_common_args(p, out="results/p5")
    args = p.parse_args(argv)
    if args.ambiguous > args.samples:
        p.error(f"--ambiguous needs at least as many --samples ({args.samples}) as it shows; raise --samples")
    if args.dry_run:  # with a few batches (load_mnist): the real models and code path in seconds
        args.epochs = args.sampler_epochs = args.ablation_epochs = 1
    return args, {"mse": [both, mse], "sampler": [both, sampler]}


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
    """(batch, steps, 49) -> (batch, steps, 49 + 16): each patch, then the one-hot of its index start, start + 1, ..."""
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

class MSEDrawer(nn.Module):
    """The MSE drawer: (batch, steps, 49) patches -> (batch, steps, 49) predictions of the next patch, in [0, 1].

    The LSTM reads each patch beside its position; the head, a ReLU layer, sees the LSTM's output and, with
    `neighbours`, the next patch's neighbours: left (the patch just read), above and above-right (read 3 and 2
    steps ago), which the LSTM would otherwise have to remember pixel by pixel. forward also takes and returns
    the state ((h, c), the last 3 patches read, how many were read), so that drawing can continue one step at
    a time from where the given patches left off. The recurrence runs in fp32 under any autocast: its state adds up
    over 16 steps.
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
        with full_precision(patches.device):
            h, lstm_state = self.lstm(with_position(patches, start) if self.position else patches, lstm_state)
        if self.neighbours:  # h: (batch, steps, hidden) -> (batch, steps, hidden + 3 * 49)
            h = torch.cat([h, patches, neighbours(patches, before, start)], dim=2)
        read = torch.cat([before, patches], dim=1)[:, -3:]
        return self.head(h), (lstm_state, read, start + patches.shape[1])

    def forward(self, patches, state=None):
        out, state = self.run(patches, state)
        return torch.sigmoid(out), state  # pixels are in [0, 1], so is the prediction


class SamplingDrawer(MSEDrawer):
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
    """The sampling drawer's loss: feed X[1..15]; -log p(X[t+1] | X[1..t]) in nats per patch, in x's precision."""
    (x,) = batch
    (log_weights, logits), _ = model(x[:, :-1])
    with full_precision(x.device):
        return mixture_nll(log_weights.to(x.dtype), logits.to(x.dtype), x[:, 1:]).mean()


def likelihood_metrics(model, batch):
    """Per-image NLL in nats per patch, and the MSE per pixel of the mixture's expected patch."""
    (x,) = batch
    (log_weights, logits), _ = model(x[:, :-1])
    return {"nll": mixture_nll(log_weights, logits, x[:, 1:]).mean(1),
            "mse": ((mixture_mean(log_weights, logits) - x[:, 1:]) ** 2).mean((1, 2))}


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


# ----------------------------------------------------------------------------- 3. training

def drawer_config(kind, args, flags, data):
    """Everything that decides a trained drawer: the flags of both drawers and its own (the sampling drawer's
    --sampler-epochs as its "epochs"), and the data's size. A finished checkpoint is reused only if this matches."""
    config = {"kind": kind}
    for group in flags[kind]:
        config.update(group.values(args))
    if kind == "sampler":
        config["epochs"] = config.pop("sampler_epochs")
    return {**config, "train_size": len(data["train"][0]), "val_size": len(data["val"][0])}


def make_drawer(config):
    """A fresh drawer of config["kind"]: "mse" (MSEDrawer) or "sampler" (SamplingDrawer)."""
    shape = (config["hidden"], config["layers"], config["position"], config["head_hidden"], config["neighbours"])
    return MSEDrawer(*shape) if config["kind"] == "mse" else SamplingDrawer(*shape, config["components"])


def train_drawer(config, path, *, data, device, **run):
    """Train the drawer of `config` (kind "mse": the MSE drawer; "sampler": the sampling drawer) unless a finished run
    with the same config is at `path`; returns its history. The kept weights are the checkpoint's (load_drawer).
    Model selection and early stopping on the validation MSE (MSE drawer) or NLL (sampling drawer); `run` (resume,
    overwrite, quiet) goes to train_or_reuse."""
    seed_everything(config["seed"])
    model = make_drawer(config).to(device)
    loss_fn, metrics_fn, monitor = ((teacher_forced_loss, teacher_forced_metrics, "val_mse") if config["kind"] == "mse"
                                    else (likelihood_loss, likelihood_metrics, "val_nll"))
    val_set = TensorDataset(to_patches(data["val"][0]))

    def validate(m):
        return {f"val_{k}": v for k, v in evaluate(m, val_set, metrics_fn, device=device).items()}

    # Adam (AdamW without weight decay), no warm-up: the learning rate decays along a cosine from --lr to 0
    return train_or_reuse(model, loss_fn, TensorDataset(to_patches(data["train"][0])), validate=validate,
                          monitor=monitor, mode="min", patience=config["patience"], warmup=0, epochs=config["epochs"],
                          batch_size=config["batch_size"], lr=config["lr"], weight_decay=0.0, seed=config["seed"],
                          clip_grad=config["clip_grad"] or None, ckpt_path=path, config=config, device=device,
                          precision=config["precision"], desc=f"p5 {config['kind']}", **run)


def load_drawer(path, config, device):
    """The drawer that train_drawer finished at `path`, with its best epoch's weights, in eval mode."""
    model = make_drawer(config)
    model.load_state_dict(load_checkpoint(path, config)["best_model"])
    return model.to(device).eval()


def train_drawers(configs, data, args, device):
    """Both drawers (`configs`), and with --ablation the MSE drawer's variants, trained (train_drawer) or reused
    (p5_{name}_seed{seed}.pt): ({"mse": (model, history), "sampler": ...}, the ablation written or None, whether any
    trained now). A small LSTM runs fastest on one core (--threads), so with cores to spare (--jobs) the drawers
    that need training train side by side, a process each; a job seeds itself: the models of a sequential run."""
    ablation = ablation_configs(configs["mse"], ABLATION, args.ablation_epochs) if args.ablation else {}
    jobs = {**configs, **{f"ablation_{name}": config for name, config in ablation.items()}}
    paths = {name: args.ckpt_dir / f"p5_{name}_seed{args.seed}.pt" for name in jobs}
    to_train = sum(prior_run(paths[name], jobs[name], args.resume, args.overwrite)[0] != "reuse" for name in jobs)
    workers = args.jobs if to_train > 1 and device.type == "cpu" and world()[1] == 1 else 1
    train = functools.partial(train_drawer, data=data, device=device, resume=args.resume, overwrite=args.overwrite,
                              quiet=args.quiet)
    histories = dict(zip(jobs, run_jobs(train, [(config, paths[name]) for name, config in jobs.items()], workers,
                                        args.threads)))
    if args.ablation:
        ablation = write_ablation(args.out / "ablation.json", ABLATION, ablation,
                                  {n: histories[f"ablation_{n}"] for n in ablation},
                                  {n: n_params(make_drawer(c)) for n, c in ablation.items()}, configs["mse"],
                                  args.ablation_epochs, "val_mse")
    drawers = {kind: (load_drawer(paths[kind], configs[kind], device), histories[kind]) for kind in configs}
    return drawers, ablation or None, to_train > 0


# The MSE drawer's ablation: from the homework's LSTM to this script's defaults, one change per row (each row keeps
# the changes above it; common/ablation.py). `python p5_draw.py --ablation` trains every row for --ablation-epochs.
ABLATION = [
    ("homework", "the homework's LSTM: 2 x 64 units and a linear head (batch 64, lr 3e-3)",
     {"hidden": 64, "layers": 2, "head_hidden": 0, "position": False, "neighbours": False, "batch_size": 64,
      "lr": 3e-3}),
    ("position", "+ each patch's position (one-hot of 16) in the LSTM's input", {"position": True}),
    ("one_layer_128", "one layer of 128 units instead of 2 x 64", {"hidden": 128, "layers": 1}),
    ("mlp_head", "a head with a hidden layer (512 ReLU) instead of a linear one", {"head_hidden": 512}),
    ("neighbours", "+ the next patch's left, above and above-right neighbours in the head's input",
     {"neighbours": True}),
]


# ----------------------------------------------------------------------------- 4. drawing and scoring the test set

def complete(mse_model, sampler, train, test, samples, seed):
    """Every completion of the `test` sequences (N, 16, 49): {"mse": the MSE drawer's (1, N, 16, 49), "sampler":
    `samples` samples each (seeded: the same seed, the same drawings), "nearest_neighbour", "mean_bottom"}."""
    generator = torch.Generator(test.device).manual_seed(seed)
    sample = functools.partial(sample_patch, generator=generator)
    return {"mse": draw(mse_model, test)[None],
            "sampler": torch.stack([draw(sampler, test, next_patch=sample) for _ in range(samples)]),
            "nearest_neighbour": nearest_bottoms(train, test, N_GIVEN)[0][None],
            "mean_bottom": mean_bottoms(train, test, N_GIVEN)[None]}


# ----------------------------------------------------------------------------- main

def main(argv=None):
    t_start = time.time()
    args, flags = get_args(argv)
    resolve_dirs(args, "p5")
    device = init_distributed(pick_device(args.device))
    args.precision = resolve_precision(args.precision, device)  # what "auto" means on this machine
    classifier, classifier_config = load_baseline(args.ckpt_dir, 0, device)  # first: fail before training, not after
    data = load_mnist(dry_run=args.dry_run)  # --dry-run: a few batches, the real models and the real code path
    examples = pick_examples(data["test"][1], args.per_class, args.examples_seed).to(device)  # the figures' images
    seconds = {"setup": time.time() - t_start}

    # 1. both drawers (and with --ablation the MSE drawer's variants), trained side by side, or reused
    configs = {kind: drawer_config(kind, args, flags, data) for kind in ("mse", "sampler")}
    # ablation.json of an earlier `--ablation` run if it explains this MSE drawer (read first: a damaged one fails now)
    ablation = None if args.ablation else read_ablation(args.out / "ablation.json", ABLATION_RUN,
                                                        config=configs["mse"])
    drawers, written, trained_now = train_drawers(configs, data, args, device)
    seconds["train"] = time.time() - t_start - seconds["setup"]

    # 2. teacher-forced scores, then every completion of the whole test set (the figures' are a subset)
    t0 = time.time()
    test, test_y = to_patches(data["test"][0]).to(device), data["test"][1].to(device)  # (10000, 16, 49), (10000,)
    (mse_model, _), (sampler, _) = drawers["mse"], drawers["sampler"]
    test_scores = {"mse": evaluate(mse_model, TensorDataset(test), teacher_forced_metrics, device=device)["mse"],
                   "mse_per_patch": per_patch_mse(mse_model, test),  # the same per predicted patch
                   "sampler": evaluate(sampler, TensorDataset(test), likelihood_metrics, device=device)}
    if not is_main():
        return
    train = to_patches(data["train"][0]).to(device)
    completed = complete(mse_model, sampler, train, test, args.samples, args.seed)
    neighbour_labels = data["train"][1].to(device)[nearest_tops(train, test, N_GIVEN, k=20)]  # (10000, 20)
    seconds["draw"] = time.time() - t0

    # 3. their scores (P1's classifier reads each completion), the figures, metrics.json
    t0 = time.time()
    drawing, predicted = score_all(completed, test, test_y, lambda x: classifier(from_patches(x)), examples, N_GIVEN)
    ambiguous = ambiguous_record(*pick_ambiguous(neighbour_labels, args.ambiguous), test_y, predicted,
                                 min(8, args.samples))  # up to 8 samples shown per ambiguous top half
    seconds["score"], t0 = time.time() - t0, time.time()
    drawing_figures(test, completed, test_y, predicted, drawing["examples"], examples, ambiguous,
                    {k: history for k, (_, history) in drawers.items()}, test_scores["mse_per_patch"], args.per_class,
                    args.out, to_images=from_patches)
    seconds["figures"] = time.time() - t0
    wall = time.time() - t_start
    metrics = dict(
        **drawer_metrics(drawers, configs, test_scores, args.samples),
        **completion_metrics(test_scores["mse"], drawing, predicted, test_y, examples, ambiguous),
        # P5's share of the main job; a run that reused the drawers (or trained the ablation) counts, in place of its
        # own training, the drawers' as their checkpoints record it (side by side with --jobs 2, they overlap)
        budget=target("p5.budget_seconds", wall if trained_now and not args.ablation else wall - seconds["train"] +
                      (max if args.jobs > 1 else sum)(trained_seconds(h) for _, h in drawers.values()),
                      what="wall seconds of a run that trains both drawers"),
        ablation=written or ablation,  # ablation.json (python p5_draw.py --ablation); None before that ran
        figures={name: f"{name}.png" for name in FIGURES},  # beside metrics.json, written by drawing_figures
        classifier_config=classifier_config, device=str(device), machine=machine(device, args.precision),
        train_threads=args.threads or torch.get_num_threads(), jobs=args.jobs, dry_run=args.dry_run,
        trained_in_this_run=trained_now, seconds=seconds, wall_seconds=wall)
    save_json(args.out / "metrics.json", metrics)
    save_config(args.out / "config.json", args, classifier_config=classifier_config)
    print(f"[p5] {summary(metrics)}; {wall:.0f} s; wrote {args.out}/metrics.json")


if __name__ == "__main__":
    run_cli(main)
