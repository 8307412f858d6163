"""A short fault-injection soak (the long one is ``python -m benchmarks.soak``): runs killed with SIGKILL,
SIGINT and SIGTERM at random moments, resumed until done, end consistent and equal to an uninterrupted run."""

from benchmarks.soak import soak


def test_killed_and_resumed_runs_end_as_one_uninterrupted_run_with_every_row_once(tmp_path):
    result = soak(tmp_path, runs=2, iterations=10, seed=11, max_delay=3.0, max_kills=3)
    assert sum(result["kills"].values()) >= 2, result  # faults were injected
    assert result["problems"] == [], result["problems"]
    assert result["recovered"] == 2
    assert result["rows_lost"] == result["rows_duplicated"] == 0
    assert result["tracebacks"] == 0
    assert result["concurrent"]["codes"] == [0, 2] and result["concurrent"]["tracebacks"] == 0
