"""How results are summarised and judged: mean and spread over seeds or files (`mean_std`), and every bar a
result is judged against, in one place: the homework's requirements and the project's own targets.

Each entry is (kind, bound, why): kind is how the measured value must stand to the bound ("above", "at_least",
"below", "at_most"), bound a number, or None where the bound is another measured number of the same run (the
script passes it), and why one line on where the bar comes from. Scripts judge their results with `required` and
`target`, which write the verdict into metrics.json; make_report.py prints these tables and recomputes nothing.
"""
import torch


def mean_std(values, keep_values=True):
    """{'mean', 'std', 'sem', 'median', 'n'} of a list of numbers, and the 'values' themselves unless keep_values is
    False (hundreds of per-file numbers); std is the sample std (0 for a single value), sem = std / sqrt(n)."""
    t = torch.tensor(values, dtype=torch.float64)
    std = t.std().item() if len(values) > 1 else 0.0
    stats = {"mean": t.mean().item(), "std": std, "sem": std / len(values) ** 0.5, "median": t.quantile(0.5).item(),
             "n": len(values)}
    return {**stats, "values": list(values)} if keep_values else stats


def goal(measured, *, at_least=None, above=None, at_most=None, below=None, **about):
    """A bar or goal as metrics.json records it: the value judged, its bound and the verdict, plus `about` (what
    was measured, where). make_report.py shows these and recomputes nothing, so each verdict is defined once, here."""
    (kind, bound), = [(k, v) for k, v in (("at_least", at_least), ("above", above), ("at_most", at_most),
                                          ("below", below)) if v is not None]
    met = {"at_least": measured >= bound, "above": measured > bound, "at_most": measured <= bound,
           "below": measured < bound}[kind]
    return {"measured": float(measured), kind: float(bound), "met": bool(met), **about}


# The homework's own requirements: what a hand-in must show.
REQUIRED = {
    "p1.baseline_test_acc": ("above", 0.98, "the homework: a baseline above 98% test accuracy"),
    "p2.test_acc": ("above", None, "the homework: fine-tuning improves on P1's rank-20 network it starts from"),
    "p3.test_acc": ("above", 0.97, "the homework: about 97% for the rank-20 network trained through its SVD"),
    "p4.gru_beats_fc": ("above", None, "the homework: the recurrent model improves on the frame-wise FC baseline"),
}

# The project's own targets, beyond the homework: each says why it is set where it is.
TARGETS = {
    "p1.baseline_test_acc": ("at_least", 0.986, "a well-trained 5 x 1024 MLP reaches 98.6% on MNIST without "
                                                "convolutions"),
    "p1.rank_20_test_acc": ("at_least", 0.970, "the rank-20 network, before any fine-tuning, within 1.6 points of "
                                               "that baseline"),
    "p1.rank_20_speedup_batch_1": ("at_least", 10.0, "one image through the rank-20 network: the 23x fewer "
                                                     "multiply-adds become at least 10x less time"),
    "p1.rank_20_speedup_batch_1000": ("at_least", 12.0, "a batch of 1000: at least half of the 23x FLOP advantage"),
    "bench.p1_step_ratio_policy_over_fp32": ("at_most", 0.4, "where the CPU multiplies bf16 in hardware, P1's "
                                                            "training step under the default policy"),
    "bench.p1_fwd_bwd_share_of_bf16_peak": ("at_least", 0.6, "P1's forward and backward pass keeps the bf16 "
                                                             "matrix units busy"),
    "p2.test_acc": ("at_least", 0.984, "fine-tuned, the rank-20 network is as accurate as a dense baseline"),
    "p3.test_acc": ("at_least", 0.982, "training through the projection ends near the dense baseline"),
    "p3.tracking_error_ratio_max": ("at_most", 1.01, "the tracked W_hat is within 1% of the optimal rank-20 error, "
                                                     "so P3 trains through (almost) the exact SVD"),
    "p3.amortized_ratio_to_plain": ("at_most", 1.2, "a training step through the SVD costs at most 20% more than a "
                                                    "plain one"),
    "p4.gru_snr_db": ("at_least", 9.5, "75% of the oracle IBM's SNR on this data set"),
    "p4.gru_minus_fc_db": ("at_least", 1.5, "memory is worth clearly more than the seed-to-seed noise of 0.1 dB"),
    "p4.fraction_of_files_gru_better": ("at_least", 0.75, "the GRU wins on most files, not on average only"),
    "p4.noise_types_gru_better": ("at_least", None, "the GRU wins under every kind of noise"),
    "p4.perceptual_order": ("above", 0.0, "STOI and PESQ agree with the SNR: GRU over FC over the noisy input"),
    "p4.rtf": ("at_most", 0.01, "denoising on one CPU thread at least 100 times faster than real time"),
    "p5.teacher_forced_test_mse": ("at_most", 0.025, "a next-patch predictor clearly better than the homework's 2 x 64 "
                                                     "LSTM (0.034)"),
    "p5.mse_drawer_class_kept": ("at_least", 0.94, "completions that P1's classifier still reads as the same digit"),
    "p5.sampler_class_kept": ("at_least", 0.90, "sampled completions stay readable although they commit to one "
                                                "stroke"),
    "p5.sampler_best_of_k_below_mse_drawer": ("below", None, "one of the samples is closer to the truth than the "
                                                             "MSE drawer's average"),
    "p5.sampler_sharpness_closer_to_originals": ("below", None, "samples look like MNIST's nearly binary strokes, "
                                                                "not like an average"),
    "p5.mse_drawer_over_best_reference": ("below", 1.0, "the LSTM beats both simple references on every split"),
    "p5.budget_seconds": ("at_most", 180, "P5's share of the main job on 2 cores"),
    "pipeline.minutes": ("at_most", 25, "the whole main job (`make all`) on 2 cores"),
}


def _judge(table, key, measured, bound=None, **about):
    kind, fixed, why = table[key]
    if (fixed is None) == (bound is None):
        raise ValueError(f"{key}: pass a bound exactly when the table has none")
    return goal(measured, **{kind: fixed if bound is None else bound}, why=why, **about)


def required(key, measured, bound=None, **about):
    """The homework's requirement `key` judged on `measured` (see `goal`); `bound` where the table has None."""
    return _judge(REQUIRED, key, measured, bound, **about)


def target(key, measured, bound=None, **about):
    """The project's target `key` judged on `measured` (see `goal`); `bound` where the table has None."""
    return _judge(TARGETS, key, measured, bound, **about)
