"""Problem 4's listening examples for the report: three short `v` files of different speakers and sentences, each as
noisy / FC / GRU / oracle IBM / clean with its SNR, and three `te` files as noisy / GRU (their speech is withheld).

In the course's layout, files NNN0..NNN9 are one sentence under ten noises; in this data each hundred of `v` is one
speaker. The choice goes by file number only (the course's data has no list of speakers), falling back to what a
split allows (the dry run's handful of files is one sentence).
"""
import os
from pathlib import Path


from .audio import read_audio, sound_header, write_audio
from .denoise import denoise
from .scores import LABELS
from .stft import RATE



def example_indices(lengths, count=3):
    """`count` of the shortest files, from different hundreds (speakers), sentences (file number // 10) and noises
    (file number mod 10) where the split has that many; the indices in order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    rules = [lambda i: i // 100, lambda i: i // 10, lambda i: i % 10]
    for kept in range(len(rules), -1, -1):
        chosen = []
        for i in order:
            if all(rule(i) != rule(j) for rule in rules[:kept] for j in chosen):
                chosen.append(i)
            if len(chosen) == count:
                return sorted(chosen)
    return sorted(order[:count])


def write_examples(v, outputs, snr, te_paths, model, out):
    """Write the clips under out/audio/ (the only .wav files there afterwards) and return metrics.json's
    `examples`: {"v": [{"file", "clips": [{"system", "label", "path" (relative to out), "snr_db"}]}], "te": [...]}.

    v: dicts with name, x and s; outputs: {system: [signal per v file]}; snr: {system: [dB per v file]}; the te
    clips are denoised here by `model` (the `te` outputs themselves went into the zip)."""
    folder = Path(out) / "audio"
    written, examples = set(), {"v": [], "te": []}

    def clip(stem, system, y, snr_db):
        write_audio(folder / f"{stem}_{system}.wav", y)
        written.add(f"{stem}_{system}.wav")
        return {"system": system, "label": LABELS[system], "path": f"audio/{stem}_{system}.wav",
                "snr_db": None if snr_db is None else float(snr_db)}

    for i in example_indices([len(f["x"]) for f in v]):
        f, stem = v[i], v[i]["name"].replace("vx", "v", 1).removesuffix(".wav")
        signals = {"noisy": f["x"], "fc": outputs["fc"][i], "gru": outputs["gru"][i],
                   "oracle_ibm": outputs["oracle_ibm"][i], "clean": f["s"]}
        examples["v"].append({"file": f["name"], "clips": [clip(stem, system, y, snr[system][i] if system in snr
                                                                 else None) for system, y in signals.items()]})
    for i in example_indices([sound_header(path)[0] for path in te_paths]):  # lengths from the headers
        path = Path(te_paths[i])
        x, stem = read_audio(path, RATE)[0], path.name.replace("tex", "te", 1).removesuffix(".wav")
        examples["te"].append({"file": path.name, "clips": [clip(stem, "noisy", x, None),
                                                            clip(stem, "gru", denoise(model, x), None)]})
    for stale in sorted(folder.glob("*.wav")):  # clips of an earlier choice
        if stale.name not in written:
            os.unlink(stale)
    return examples
