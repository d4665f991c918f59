"""P5's scores: what drawn digits are measured against (two references), the scores of completions, and the
records of both drawers and of their completions that metrics.json keeps.

A completion is a sequence of 16 patches (N, 16, 49) whose first `n_given` (the top half) are given and whose
others were drawn. The references complete the same top halves without a model: the bottom half of the training
image whose top half is nearest (L2), and the mean bottom half. `score` compares completions with the originals
(MSE of the bottom half, best of k samples, sharpness, ink) and asks P1's classifier whether they keep their class.
"""
import torch
import torch.nn.functional as F

from ..cli import UserError
from ..goals import target
from ..train import best_record, n_params


# ----------------------------------------------------------------------------- the references

@torch.no_grad()
def nearest_tops(train_patches, query_patches, n_given, k=1, chunk=1000):
    """For each query, the indices of the `k` training sequences whose top halves are nearest in L2: (N_query, k).

    |q - t|^2 = |q|^2 - 2 q.t + |t|^2; |q|^2 is the same for every t, so ranking t by |t|^2 - 2 q.t needs
    one matrix product per chunk of queries: (chunk, 392) x (392, N_train).
    """
    train_top = train_patches[:, :n_given].flatten(1)  # (N_train, 392)
    train_sq = (train_top ** 2).sum(1)
    return torch.cat([(train_sq - 2 * query[:, :n_given].flatten(1) @ train_top.T).topk(k, largest=False).indices
                      for query in query_patches.split(chunk)])


def nearest_bottoms(train_patches, query_patches, n_given, chunk=1000):
    """Each query's top half above the bottom half of the training sequence whose top half is nearest.

    Returns (the completed sequences (N_query, 16, 49), the index of each query's neighbour).
    """
    index = nearest_tops(train_patches, query_patches, n_given, 1, chunk).squeeze(1)
    return torch.cat([query_patches[:, :n_given], train_patches[index, n_given:]], dim=1), index


def mean_bottoms(train_patches, query_patches, n_given):
    """Each query's top half above the mean bottom half of the training set."""
    mean = train_patches[:, n_given:].mean(0, keepdim=True)  # (1, 8, 49)
    return torch.cat([query_patches[:, :n_given], mean.expand(len(query_patches), -1, -1)], dim=1)


# ----------------------------------------------------------------------------- scores

@torch.no_grad()
def predict(classify, sequences, chunk=2000):
    """The labels classify(sequences) -> logits (N, 10) gives, a chunk of sequences at a time: (N,)."""
    return torch.cat([classify(x).argmax(1) for x in sequences.split(chunk)])


@torch.no_grad()
def per_patch_mse(model, patches, chunk=2000):
    """Teacher-forced MSE per pixel of each predicted patch 2..16, over all of `patches` (N, 16, 49): (15,).
    model(X[1..15]) -> (its predictions of X[2..16], state), as P5's MSE drawer."""
    sums = sum(((model(x[:, :-1])[0] - x[:, 1:]) ** 2).sum((0, 2)) for x in patches.split(chunk))
    return sums / (len(patches) * patches.shape[2])


def sharpness(pixels, margin=0.1):
    """The share of `pixels` within `margin` of 0 or 1: how much of a drawing is committed ink or background.

    MNIST's strokes are nearly binary with a thin gray edge; an average of several plausible strokes spreads
    gray over many pixels. (A blank drawing would be perfectly sharp: read it beside class kept and ink.)
    """
    return ((pixels <= margin) | (pixels >= 1 - margin)).double().mean().item()


def score(completed, original, labels, classify, n_given):
    """Scores of S completions of each of N sequences against the originals, and the classifier's labels (S, N).

    completed: (S, N, 16, 49) (S = 1 for a deterministic drawer); original: (N, 16, 49); labels: (N,);
    classify: sequences (n, 16, 49) -> logits (n, 10). bottom_mse: MSE per pixel of the bottom half, over all
    S x N completions; best_of_k_bottom_mse: each image's closest of its k = S completions, averaged over images;
    class_kept: the share of the S x N completions that the classifier puts in the true class; sharpness and ink
    (mean pixel) of the bottom halves.
    """
    bottom = completed[:, :, n_given:]
    mse = ((bottom - original[:, n_given:]) ** 2).mean((2, 3))   # (S, N)
    predicted = torch.stack([predict(classify, c) for c in completed])
    return {"bottom_mse": mse.mean().item(), "best_of_k_bottom_mse": mse.min(0).values.mean().item(),
            "k": len(completed), "class_kept": (predicted == labels).double().mean().item(),
            "sharpness": sharpness(bottom), "ink": bottom.mean().item()}, predicted


def score_all(completed, original, labels, classify, examples, n_given):
    """`score` of every kind of completion ({name: (S, N, 16, 49)}, the originals themselves first) on the whole
    test set and on the figures' `examples` (indices): ({"test": {name: scores}, "examples": {...}}, {name:
    the classifier's labels (S, N)})."""
    scores, predicted = {"test": {}, "examples": {}}, {}
    for name, seqs in [("original", original[None])] + list(completed.items()):
        scores["test"][name], predicted[name] = score(seqs, original, labels, classify, n_given)
        scores["examples"][name], _ = score(seqs[:, examples], original[examples], labels[examples], classify,
                                            n_given)
    return scores, predicted


def class_kept_per_digit(predicted, labels):
    """{digit: the share of the completions of that digit's images that keep it}; predicted (S, N), labels (N,)."""
    return {str(c): (predicted[:, labels == c] == c).double().mean().item() for c in range(10)}


def drawing_goals(tf_test, drawing):
    """P5's targets (common/goals.py): `tf_test`, the MSE drawer's teacher-forced test MSE, and `drawing`, the
    score_all of every completion; judged on the test set (the references also on the figures' examples)."""
    mse_drawer, samples, original = (drawing["test"][k] for k in ("mse", "sampler", "original"))
    return {
        "teacher_forced_test_mse": target("p5.teacher_forced_test_mse", tf_test),
        "mse_drawer_class_kept": target("p5.mse_drawer_class_kept", mse_drawer["class_kept"]),
        "sampler_class_kept": target("p5.sampler_class_kept", samples["class_kept"]),
        "sampler_best_of_k_below_mse_drawer": target(
            "p5.sampler_best_of_k_below_mse_drawer", samples["best_of_k_bottom_mse"], bound=mse_drawer["bottom_mse"],
            compared_with="the MSE drawer's bottom-half MSE"),
        # distance of the samples' sharpness from the originals', below the MSE drawer's distance
        "sampler_sharpness_closer_to_originals": target(
            "p5.sampler_sharpness_closer_to_originals", abs(samples["sharpness"] - original["sharpness"]),
            bound=abs(mse_drawer["sharpness"] - original["sharpness"]),
            measure="|sharpness - the originals' sharpness|",
            compared_with="the MSE drawer's"),
        # below both references on the same images: the MSE drawer's MSE over the better reference's, worst split
        "mse_drawer_over_best_reference": target("p5.mse_drawer_over_best_reference", max(
            s["mse"]["bottom_mse"] / min(s["nearest_neighbour"]["bottom_mse"], s["mean_bottom"]["bottom_mse"])
            for s in drawing.values()))}


def drawer_metrics(drawers, configs, test_scores, samples):
    """metrics.json's record of the two drawers, {"mse": (model, history), "sampler": ...} with their `configs`:
    training, the epoch kept and the teacher-forced scores. test_scores: {"mse": the MSE drawer's teacher-forced
    test MSE, "mse_per_patch": (15,) the same per predicted patch, "sampler": the sampling drawer's {"nll", "mse"}
    on the test set}; samples: samples drawn per test image."""
    (mse_model, history), (sampler, sampler_history) = drawers["mse"], drawers["sampler"]
    best, sampler_best = best_record(history, "val_mse", "min"), best_record(sampler_history, "val_nll", "min")
    return {
        # the MSE drawer (the homework's): teacher-forced MSE per pixel, training
        "teacher_forced_mse": {"val": best["val_mse"], "test": test_scores["mse"]},
        "best_epoch": best["epoch"], "epochs_trained": len(history),
        "teacher_forced_test_mse_per_patch": test_scores["mse_per_patch"].tolist(),  # targets: patches 2..16
        "params": n_params(mse_model), "history": history, "config": configs["mse"],
        # the sampling drawer: teacher-forced NLL (nats per patch) and the MSE per pixel of its mixture's mean
        "sampler": {"teacher_forced": {"val_nll": sampler_best["val_nll"], "test_nll": test_scores["sampler"]["nll"],
                                       "val_mse_of_mean": sampler_best["val_mse"],
                                       "test_mse_of_mean": test_scores["sampler"]["mse"]},
                    "best_epoch": sampler_best["epoch"], "epochs_trained": len(sampler_history),
                    "params": n_params(sampler), "samples_per_image": samples, "history": sampler_history,
                    "config": configs["sampler"]}}


def completion_metrics(tf_test, drawing, predicted, labels, examples, ambiguous):
    """metrics.json's record of the completions: the scores (`drawing`, from score_all) and the targets judged on
    them, the share of each digit kept, the figures' examples (indices) and the ambiguous top halves (their
    `ambiguous_record`); predicted: score_all's labels; labels: the test set's; tf_test: see drawing_goals."""
    return {"drawing": drawing, "goals": drawing_goals(tf_test, drawing),
            "class_kept_per_digit": class_kept_per_digit(predicted["mse"], labels),
            "sampler_class_kept_per_digit": class_kept_per_digit(predicted["sampler"], labels),  # over all samples
            "examples": {"indices": examples.tolist(), "labels": labels[examples].tolist(),
                         "mse_predicted": predicted["mse"][0, examples].tolist(),
                         "sampler_predicted": predicted["sampler"][0, examples].tolist()},
            "ambiguous": ambiguous}


def summary(metrics):
    """One line on what P5's metrics say: the MSE drawer's teacher-forced and drawn scores, the sampling drawer's."""
    mse_drawer, samples, original = (metrics["drawing"]["test"][k] for k in ("mse", "sampler", "original"))
    return (f"MSE drawer: teacher-forced test MSE {metrics['teacher_forced_mse']['test']:.4f}, bottom-half MSE "
            f"{mse_drawer['bottom_mse']:.4f}, class kept {mse_drawer['class_kept']:.3f}; sampling drawer: "
            f"best-of-{samples['k']} "
            f"bottom-half MSE {samples['best_of_k_bottom_mse']:.4f}, class kept {samples['class_kept']:.3f}, "
            f"sharpness {samples['sharpness']:.3f} (originals {original['sharpness']:.3f}, MSE drawer "
            f"{mse_drawer['sharpness']:.3f})")


def ambiguous_record(index, votes, labels, predicted, shown):
    """What metrics.json records of the ambiguous top halves `index` (pick_ambiguous): their labels, the votes of
    their nearest training top halves, and the classes of the MSE drawer's completion and of `shown` samples."""
    samples = predicted["sampler"][:shown, index].T.tolist()  # (count, shown)
    return {"indices": index.tolist(), "labels": labels[index].tolist(),
            "neighbour_votes": votes.tolist(),  # labels of the nearest training top halves, counted per class
            "mse_predicted": predicted["mse"][0, index].tolist(), "sampler_predicted": samples,
            "sampler_classes_per_image": [len(set(p)) for p in samples]}


# ----------------------------------------------------------------------------- which test images the figures show

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
