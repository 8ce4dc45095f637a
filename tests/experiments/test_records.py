"""Run records: every start of a run is kept in ``run.json``, the first start stays ``started``."""

from __future__ import annotations

import json
from pathlib import Path

from latentgrad.experiments.records import record_finish, write_run_records

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
