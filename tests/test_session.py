"""The test session's own machinery (tests/conftest.py): which dry runs a selection of tests starts."""
from conftest import DRY_RUNS, dry_runs_needed


def test_a_file_starts_only_the_dry_runs_its_tests_need():
    assert dry_runs_needed([["tmp_path"], ["dry_p2", "dry_p1", "tmp_path"]]) == {"p1", "p2"}  # test_p2.py's
    assert dry_runs_needed([["dry_p4"]]) == {"p4"} and dry_runs_needed([["capsys"]]) == set()
    assert dry_runs_needed([["dry_p5_ablation"]]) == {"p5_ablation", "p1"}  # not P5's own dry run
    assert dry_runs_needed([["dry_bench_train"]]) == {"bench_train", "p1", "p2", "p3", "p4", "p5"}
    assert set(DRY_RUNS) == {"p1", "p2", "p3", "p4", "p5", "p5_ablation", "bench_p3", "bench_rank", "bench_train"}
