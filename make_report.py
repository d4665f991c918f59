"""Build the hand-in, report.ipynb (and report.html, report.md), from results/ and the repository's own code.

The report opens with the homework's checklist (common/report/summary.py: one row per deliverable, its measured
value and a link to its section), then each problem in its steps: the method and its math, the code that
implements it, its recipe, the tables and figures the homework asks for, and what they mean against the
homework's expectation. "Beyond the homework" (common/report/beyond.py) is one screen of what the project
measured past it, with links to the result files, and an appendix holds the project's own targets.

No measured number, bar or verdict is typed here: each is read from a metrics.json, benchmark.json or config.json
that the scripts wrote (`required` and `goals`: the value judged, its bound and the verdict, see common.goals),
with the paths of their figures. The code shown is found by name in its file when the report is built (CODE
in common/report/problems.py), so it is the code that ran; a name that moved is a build error.

    python make_report.py                            # after the five scripts; `make all` runs it last
    python make_report.py --dry-run                  # from the scripts' --dry-run outputs (runs/dry-run/)
    python make_report.py --handin handin            # report.ipynb, report.html and te_denoised.zip together
    python make_report.py --handin DIR --te MYDIR    # ... with MYDIR's tex*.wav files denoised

To add a section: add its result file to SCRIPTS, write a function that takes its metrics and returns blocks
(Text, Code, Figure, Figures, Listening: common/report/blocks.py), and add it to `build`.
"""
import contextlib
import io
from pathlib import Path

from common.cli import ArgumentParser, UserError, run_cli
from common.files import ROOT, atomic_path, shown_path
from common.goals import target
from common.report import beyond, summary
from common.report.blocks import Code, Computed, Figure, Figures, Listening, Text
from common.report.handin import handin_inputs, write_handin
from common.report.problems import CODE, check_code, intro, section_p1, section_p2, section_p3, section_p4  # noqa
from common.report.problems import section_p5
from common.report.render import from_root, to_html, to_markdown, to_notebook
from common.report.results import load_results, read
from common.speech.data import DEFAULT_DATA

# every result the report reads, and the command that writes it
SCRIPTS = {"p1": "p1_svd.py", "p1/config": "p1_svd.py", "p2": "p2_factorized.py", "p2/config": "p2_factorized.py",
           "p3": "p3_svd_ste.py", "p3/config": "p3_svd_ste.py", "p4": "p4_denoise.py", "p5": "p5_draw.py",
           "p5/config": "p5_draw.py", "p3/benchmark": "benchmarks/p3_svd_step.py",
           "p4/benchmark": "benchmarks/p4_realtime.py", "bench/rank_forward": "benchmarks/rank_forward.py",
           "bench/train_step": "benchmarks/train_step.py"}

# ----------------------------------------------------------------------------- the report

HEADLINE = """# The headline numbers from the result files (mean ± standard deviation over seeds; P4 over the v files)
import json
from pathlib import Path

results = Path(RESULTS)
m = {p: json.loads((results / p / "metrics.json").read_text()) for p in ("p1", "p2", "p3", "p4", "p5")}
rank, v = str(m["p2"]["rank"]), m["p4"]["v"]["systems"]
rows = [("P1 baseline, test accuracy (%)", m["p1"]["baseline_test_acc"], 100),
        (f"P1 rank {rank}, test accuracy (%)", m["p1"]["ranks"][rank]["test_acc"], 100),
        (f"P2 rank {rank} fine-tuned as U V^T, test accuracy (%)", m["p2"]["test_acc"], 100),
        (f"P3 rank {rank} trained through its SVD, test accuracy (%)", m["p3"]["test_acc"], 100),
        *((f"P4 {name}, v SNR (dB)", v[key]["snr_db"], 1)
          for key, name in [("noisy", "noisy input"), ("fc", "FC"), ("gru", "GRU"), ("oracle_ibm", "oracle IBM")])]
for what, stat, scale in rows:
    print(f"{what:<56} {scale * stat['mean']:7.2f} ± {scale * stat['std']:.2f}")
print(f"{'P5 LSTM, teacher-forced test MSE per pixel':<56} {m['p5']['teacher_forced_mse']['test']:7.4f}")"""


def headline(results):
    """The notebook's cell that computes the headline table from the result files, and what it prints (run here,
    on the same files, as the kernel will: the cell holds this module's text and the results folder's name)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(HEADLINE.replace("RESULTS", repr(str(results.resolve()))), {})
    return Computed(HEADLINE.replace("RESULTS", repr(from_root(results))), printed.getvalue())


def every(fn, m, *args):
    """fn(m, *args) on all the result files `m`; one of the wrong shape is a one-line error naming them all."""
    return read(lambda *files: fn(m, *args), *m.values())


def build(results=ROOT / "results", out=ROOT, dry_run=False):
    """(markdown, notebook, html) of the report on the results under `results`, markdown links relative to `out`.

    The report in reading order; each section reads its result files (SCRIPTS' keys) through `read`, which turns
    a file of the wrong shape into a one-line error naming the script to rerun."""
    check_code()
    m = load_results(results, SCRIPTS, dry_run)
    seconds = every(lambda m: sum(beyond.step_seconds(name, f) for name, f in m.items()), m)
    pipeline = target("pipeline.minutes", seconds / 60)
    body = (read(section_p1, m["p1"], m["p1/config"]) + read(section_p2, m["p2"], m["p2/config"], m["p1/config"])
            + read(section_p3, m["p3"], m["p3/config"], m["p3/benchmark"], m["p2"])
            + read(section_p4, m["p4"]) + read(section_p5, m["p5"], m["p5/config"]))
    closing = (beyond.heading()
               + read(beyond.findings, m["p1"], m["bench/rank_forward"], m["bench/train_step"], m["p3/benchmark"],
                      m["p4"], m["p4/benchmark"], m["p5"])
               + every(beyond.timing, m, pipeline) + every(beyond.machines, m) + every(summary.appendix, m, pipeline))
    shown_blocks = body + closing
    counts = {"code": sum(isinstance(b, Code) for b in shown_blocks),
              "figures": sum(len(b.figures) if isinstance(b, Figures) else isinstance(b, Figure) for b in shown_blocks),
              "clips": sum(len(clips) for b in shown_blocks if isinstance(b, Listening) for _, clips in b.groups)}
    computed = every(lambda _: headline(results), m)
    blocks = (every(lambda m: intro(m["p4"]), m) + every(summary.checklist, m, counts)
              + [Text("Computed from the result files by the notebook's own code:"), computed]
              + body + closing)
    return to_markdown(blocks, out), to_notebook(blocks), to_html(blocks)


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=None,
                   help="folder holding p1/ .. p5/ (default: results, or runs/dry-run with --dry-run)")
    p.add_argument("--out", type=Path, default=None, help="where report.md, report.ipynb and report.html go "
                   "(default: the repository root, or runs/dry-run/report with --dry-run)")
    p.add_argument("--dry-run", action="store_true",
                   help="accept the scripts' --dry-run results, to check the builder in seconds")
    p.add_argument("--handin", type=Path, default=None, metavar="DIR",
                   help="write the hand-in into DIR instead (`make handin`: handin/): report.ipynb, report.html and "
                        "te_denoised.zip (every tex*.wav of --te denoised by the results' p4/denoiser.pt), all three "
                        "or none")
    p.add_argument("--te", type=Path, default=None, metavar="FOLDER",
                   help="with --handin: the folder whose tex*.wav files are denoised and zipped (default: data/hw3/te)")
    args = p.parse_args(argv)
    if args.te is not None and args.handin is None:
        raise UserError("--te names the te files of a hand-in; add --handin DIR")
    results = args.results or ROOT / ("runs/dry-run" if args.dry_run else "results")
    out = args.handin or args.out or (ROOT / "runs/dry-run/report" if args.dry_run else ROOT)
    if args.handin:  # before anything is built or written
        te, model = args.te or DEFAULT_DATA / "te", results / "p4" / "denoiser.pt"
        handin_inputs(te, model)
    import nbformat
    markdown, nb, page = build(results, out, args.dry_run)
    if args.handin:
        files = write_handin(out, nb, page, te, model)
        print(f"wrote {shown_path(out)}/: report.ipynb, report.html and te_denoised.zip ({files} denoised te files "
              f"from {shown_path(te)}/)")
        return
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown)
    with atomic_path(out / "report.ipynb") as tmp:
        nbformat.write(nb, str(tmp))
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(page)
    print(f"wrote {shown_path(out / 'report.md')}, report.ipynb and report.html")


if __name__ == "__main__":
    run_cli(main)
