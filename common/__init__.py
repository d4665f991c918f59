"""What the five problem scripts share.

Shared by several scripts, one module each: cli (flags, one-line errors, stopping on a signal), files (atomic writes,
result files), precision (bf16 or fp32, the machine), train (the one training loop, checkpoints), goals (every bar),
plot, ablation, processes (jobs side by side). One subpackage per domain: mnist (P1, P2, P3, P5's classifier),
speech (P4), drawing (P5), report (make_report.py).
"""
