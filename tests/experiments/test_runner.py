"""The runner drops Lightning's promotional tips and keeps its other messages and warnings."""

from __future__ import annotations

import logging

import pytest

from latentgrad.experiments.runner import check_run


def test_lightning_tips_are_silenced_but_device_info_and_warnings_stay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

    check_run("signal_game", "sfe", 0, {"profile": "tiny"})  # installs the filter
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing something")
        rank_zero_info("GPU available: False, used: False")
        with pytest.warns(UserWarning, match="a real warning"):
            rank_zero_warn("a real warning")
    messages = [r.getMessage() for r in caplog.records]
    assert "GPU available: False, used: False" in messages
    assert not any("Tip:" in m for m in messages)

