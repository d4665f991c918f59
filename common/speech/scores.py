"""Problem 4's scores: per-file SNR, SI-SDR, STOI and wideband PESQ of each system against the clean speech, and
their summaries for metrics.json (per system, paired GRU - FC, by kind of noise, and the data's context).

A system is a name ("noisy", "fc", "gru", "oracle_ibm") with one output signal per `v` file.
"""
import os

import numpy as np

from ..goals import mean_std, required, target
from ..processes import run_jobs
from ..train import best_record, n_params, trained_seconds
from .stft import RATE, si_sdr_db, snr_db

PARALLEL_SECONDS = 600  # of audio to score: above it, two processes share the work

# every system's name as figures, listening examples and the report show it
LABELS = {"noisy": "noisy input", "fc": "FC baseline", "gru": "GRU", "oracle_ibm": "oracle IBM",
          "clean": "clean speech"}


def perceptual_scores(pair):
    """(STOI, wideband PESQ) of one estimate against its clean speech; PESQ is None where it finds no speech."""
    from pesq import PesqError, pesq
    from pystoi import stoi
    s, y = pair
    quality = pesq(RATE, s, y, "wb", on_error=PesqError.RETURN_VALUES)
    return float(stoi(s, y, RATE)), (float(quality) if quality >= 0 else None)


def scores_of(pairs):
    """perceptual_scores of each pair, in order (one job of `score_systems`)."""
    return [perceptual_scores(pair) for pair in pairs]


def score_systems(clean, outputs):
    """{system: {metric: [value per file]}} for the outputs {system: [signal per file]} against `clean` [s per file].

    PESQ is slow: more than PARALLEL_SECONDS of audio are scored in two fresh processes (spawned, not forked from
    this threaded one; starting them takes seconds), less in this one."""
    pairs = [(s, y) for name in outputs for s, y in zip(clean, outputs[name])]
    if sum(len(s) for s, _ in pairs) > PARALLEL_SECONDS * RATE and (os.cpu_count() or 1) > 1:
        half = len(pairs) // 2
        perceptual = sum(run_jobs(scores_of, [(pairs[:half],), (pairs[half:],)], workers=2, threads=1), [])
    else:
        perceptual = scores_of(pairs)
    scores = {}
    for k, name in enumerate(outputs):
        block = perceptual[k * len(clean):(k + 1) * len(clean)]
        scores[name] = {"snr_db": [snr_db(s, y) for s, y in zip(clean, outputs[name])],
                        "si_sdr_db": [si_sdr_db(s, y) for s, y in zip(clean, outputs[name])],
                        "stoi": [q[0] for q in block], "pesq": [q[1] for q in block]}
    return scores


def summarize_scores(names, scores, noise_types):
    """metrics.json's `v` (each system's mean, std, sem, median and n per metric), `gru_minus_fc_db` (paired, per
    file), `by_noise` (file number mod 10: the course's ten noises per sentence), `per_file`, `data_context`, and
    the verdicts (`required`, `goals`; see `judge`)."""
    snr = {name: np.array(s["snr_db"]) for name, s in scores.items()}
    gain = snr["gru"] - snr["fc"]
    kinds = min(len(noise_types), len(gain))
    systems = {name: {metric: mean_std([x for x in values if x is not None], keep_values=False)
                      for metric, values in s.items()} for name, s in scores.items()}
    mean = {name: system["snr_db"]["mean"] for name, system in systems.items()}
    summary = {
        "v": {"files": len(names), "systems": systems},
        "gru_minus_fc_db": {**mean_std(gain.tolist(), keep_values=False), "files_gru_better": int((gain > 0).sum()),
                            "files": len(gain), "fraction_gru_better": float((gain > 0).mean())},
        "by_noise": {"noise": list(noise_types), "snr_db": {name: [float(x[j::10].mean()) for j in range(kinds)]
                                                            for name, x in snr.items()},
                     "gru_minus_fc_db": [float(gain[j::10].mean()) for j in range(kinds)]},
        "per_file": {"names": list(names), **{metric: {name: np.round(np.array(s[metric], dtype=float), 4).tolist()
                                                       for name, s in scores.items()}
                                              for metric in ("snr_db", "si_sdr_db", "stoi")}},
        "data_context": {
            "input_snr_db": {"mean": float(snr["noisy"].mean()), "min": float(snr["noisy"].min()),
                             "max": float(snr["noisy"].max())},  # of each v mixture x against its speech s
            "noisy_snr_db": mean["noisy"], "oracle_ibm_snr_db": mean["oracle_ibm"],
            # how much of the way from the noisy input to the oracle IBM (the ceiling of binary masking) each goes
            "share_of_oracle_gain": {name: (mean[name] - mean["noisy"]) / (mean["oracle_ibm"] - mean["noisy"])
                                     for name in ("fc", "gru")}},
    }
    return {**summary, **judge(summary)}


def judge(summary):
    """The homework's requirement and the project's targets (common/goals.py) on the `v` numbers."""
    systems, gain = summary["v"]["systems"], summary["gru_minus_fc_db"]
    mean = {name: {metric: stat["mean"] for metric, stat in system.items()} for name, system in systems.items()}
    per_noise = summary["by_noise"]["gru_minus_fc_db"]
    goals = {
        "gru_snr_db": target("p4.gru_snr_db", mean["gru"]["snr_db"], unit="dB"),
        "gru_minus_fc_db": target("p4.gru_minus_fc_db", gain["mean"], unit="dB", sem=gain["sem"]),
        "fraction_of_files_gru_better": target("p4.fraction_of_files_gru_better", gain["fraction_gru_better"]),
        "noise_types_gru_better": target("p4.noise_types_gru_better", sum(g > 0 for g in per_noise), len(per_noise)),
        **{f"{metric}_{a}_over_{b}": target("p4.perceptual_order", mean[a][metric] - mean[b][metric])
           for metric in ("stoi", "pesq") for a, b in (("gru", "fc"), ("fc", "noisy"))}}
    return {"required": {"gru_beats_fc": required("p4.gru_beats_fc", mean["gru"]["snr_db"], mean["fc"]["snr_db"],
                                                  unit="dB")}, "goals": goals}


def model_records(trained):
    """metrics.json's `models`: each model's training config, size, kept epoch and training time."""
    return {kind: {"config": config, "params": n_params(model), "best_epoch": best_record(history, "val_snr")["epoch"],
                   "epochs_run": len(history), "train_seconds": trained_seconds(history)}
            for kind, (model, config, history) in trained.items()}
