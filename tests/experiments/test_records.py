"""Run records: every start of a run is kept in ``run.json``, the first start stays ``started``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from latentgrad.experiments.records import (
    AttemptClock,
    record_attempt_end,
    record_finish,
    write_run_records,
)

CONFIG = {"task": "ssvae", "estimator": "sfe", "seed": 3, "profile": "tiny"}


def test_each_start_is_an_attempt_and_the_first_start_stays(tmp_path: Path) -> None:
    write_run_records(tmp_path, CONFIG, ["run", "ssvae"])
    first = json.loads((tmp_path / "run.json").read_text())
    write_run_records(tmp_path, CONFIG, ["run", "ssvae", "--resume"])
    record_finish(tmp_path)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["attempts"][0]["started"] == first["started"] == info["started"]
    assert len(info["attempts"]) == 2 and "finished" in info
    assert set(info["attempts"][1]) == {"started", "host", "platform", "git"}
    assert (tmp_path / "command.txt").read_text().splitlines() == [
        "latentgrad run ssvae",
        "latentgrad run ssvae --resume",
    ]


def test_each_attempt_records_its_compute_and_the_run_sums_them(tmp_path: Path) -> None:
    """Compute per attempt (wall and CPU seconds, threads, step reached, outcome) and the run's
    CPU-hours over its attempts; an attempt that could not record (killed) is counted apart."""
    write_run_records(tmp_path, CONFIG, ["run", "ssvae"])
    started = AttemptClock(time.monotonic() - 7200.0, time.process_time())
    spin_until = time.process_time() + 0.2
    while time.process_time() < spin_until:  # CPU time that the record must see
        pass
    record_attempt_end(tmp_path, started, 120, "stopped by SIGTERM", 1)
    write_run_records(tmp_path, CONFIG, ["run", "ssvae", "--resume"])  # killed: never records
    write_run_records(tmp_path, CONFIG, ["run", "ssvae", "--resume"])
    record_attempt_end(tmp_path, AttemptClock(time.monotonic() - 3600.0, time.process_time()),
                       300, "finished", 2)
    info = json.loads((tmp_path / "run.json").read_text())
    first, killed, last = info["attempts"]
    assert first["outcome"] == "stopped by SIGTERM" and first["global_step"] == 120
    assert first["wall_s"] >= 7200.0 and first["cpu_s"] >= 0.2 and first["threads"] == 1
    assert first["ended"] >= first["started"]
    assert "cpu_s" not in killed and last["outcome"] == "finished" and last["threads"] == 2
    compute = info["compute"]
    assert compute["attempts_not_timed"] == 1
    assert compute["wall_hours"] == pytest.approx(3.0, abs=0.01)
    assert compute["cpu_hours"] == pytest.approx((first["cpu_s"] + last["cpu_s"]) / 3600, abs=1e-3)


def test_the_run_level_fields_are_the_first_start_not_the_first_attempts_end(
        tmp_path: Path) -> None:
    """A resumed run's ``run.json`` must not read as stopped at its first attempt's step."""
    write_run_records(tmp_path, CONFIG, ["run", "ssvae"])
    record_attempt_end(tmp_path, AttemptClock(time.monotonic(), time.process_time()), 120,
                       "stopped by SIGTERM", 1)
    write_run_records(tmp_path, CONFIG, ["run", "ssvae", "--resume"])
    record_attempt_end(tmp_path, AttemptClock(time.monotonic(), time.process_time()), 300,
                       "finished", 1)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["started"] == info["attempts"][0]["started"]
    assert not {"ended", "outcome", "global_step", "wall_s", "cpu_s", "threads"} & set(info)
    assert [a["outcome"] for a in info["attempts"]] == ["stopped by SIGTERM", "finished"]


def test_an_unreadable_record_leaves_the_attempts_end_unrecorded_with_a_warning(
        tmp_path: Path) -> None:
    """Recording runs in a ``finally`` around training: it must not replace the run's own
    outcome (a SIGTERM stop, an error) by an error of its own."""
    (tmp_path / "run.json").write_text("{truncated")
    with pytest.warns(UserWarning, match="compute was not recorded"):
        record_attempt_end(tmp_path, AttemptClock(time.monotonic(), time.process_time()), 3,
                           "error", 1)
    assert (tmp_path / "run.json").read_text() == "{truncated"


def test_a_record_written_before_attempts_existed_becomes_the_first_attempt(
    tmp_path: Path,
) -> None:
    legacy = {**CONFIG, "started": "2026-12-01T10:00:00+00:00", "host": "old",
              "platform": "Linux", "git": {"commit": "abc", "dirty": False}}  # fmt: skip
    (tmp_path / "run.json").write_text(json.dumps(legacy))
    write_run_records(tmp_path, CONFIG, None)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["started"] == "2026-12-01T10:00:00+00:00" and info["host"] == "old"
    assert info["attempts"][0]["git"] == {"commit": "abc", "dirty": False}
    assert len(info["attempts"]) == 2 and info["attempts"][1]["started"] > legacy["started"]


def test_an_unreadable_record_starts_afresh(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text("{truncated")
    write_run_records(tmp_path, CONFIG, None)
    assert len(json.loads((tmp_path / "run.json").read_text())["attempts"]) == 1
