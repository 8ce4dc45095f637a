"""The runner drops Lightning's promotional tips and its deprecation noise and keeps its other
messages and warnings; it trains with the configured handling of subnormal floats."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from latentgrad.experiments.runner import check_run, flushed_denormals, run


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


def _subnormal_survives() -> bool:
    return float(torch.tensor(1e-39, dtype=torch.float32) * 1.0) != 0.0


def _flush_supported() -> bool:
    """torch.set_flush_denormal works on x86 with SSE3 only (it returns False elsewhere)."""
    supported = torch.set_flush_denormal(True)
    torch.set_flush_denormal(False)
    return supported


needs_flush = pytest.mark.skipif(not _flush_supported(), reason="no flush-to-zero on this CPU")


@needs_flush
def test_flushed_denormals_sets_and_restores_the_cpu_setting() -> None:
    assert _subnormal_survives()  # torch's default
    with flushed_denormals(True):
        assert not _subnormal_survives()
        with flushed_denormals(False):
            assert _subnormal_survives()
        assert not _subnormal_survives()
    assert _subnormal_survives()


@needs_flush
@pytest.mark.parametrize("flush", [True, False])
def test_a_run_trains_with_the_configured_denormal_setting(
    flush: bool, data_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trainer.flush_denormal (default true): subnormal Adam moments made a late mixed_vae step
    3.5x slower; the setting holds while the run trains and tests, and is restored after."""
    seen = []

    def fit(self, *args, **kwargs):
        seen.append(not _subnormal_survives())
        return fit_before(self, *args, **kwargs)

    from lightning import Trainer

    fit_before = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", fit)
    overrides = {"profile": "tiny"} if flush else {"profile": "tiny",
                                                   "trainer": {"flush_denormal": False}}
    run("ssvae", "sfe", 0, overrides, out=tmp_path)
    assert seen == [flush] and _subnormal_survives()


def test_a_run_does_not_pass_on_lightnings_own_deprecation_warnings(tmp_path: Path) -> None:
    """Lightning calls a torch API deprecated after its release (``isinstance(treespec,
    LeafSpec)``) on every fit and test: noise in every run's log that no user can act on."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run("signal_game", "sfe", 0, {"profile": "tiny"}, out=tmp_path)
    assert not [w for w in caught if "treespec" in str(w.message)]


def test_a_task_extends_what_a_registry_estimator_reads() -> None:
    """mixed_vae's Gaussian-sparsemax latent takes the Mixed Dirichlet prior, whose face form is
    ``estimator_args.face_prior``: accepted there, refused where the same estimator has no
    such prior (the signaling game)."""
    from latentgrad.experiments.config import ConfigError

    _, cfg = check_run("mixed_vae", "gaussian_sparsemax", 0,
                       {"profile": "tiny", "estimator_args": {"face_prior": "maxent"}})
    assert cfg.estimator_args.face_prior == "maxent"
    with pytest.raises(ConfigError, match="face_prior: does not apply to estimator"):
        check_run("signal_game", "gaussian_sparsemax", 0,
                  {"profile": "tiny", "estimator_args": {"face_prior": "maxent"}})


def test_resume_names_settings_the_saved_run_lacks_apart_from_changed_ones(tmp_path) -> None:
    """A run started by an older version lacks settings the current one has: they are named as
    such, with what to do (the version in run.json); a changed setting asks for the same
    settings; a setting unset in both, or one the saved run had that is gone now but was unset,
    is no difference."""
    from latentgrad.experiments.config import ConfigError
    from latentgrad.experiments.runner import check_same_config

    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump({"optim": {"lr": 0.1, "old": None}, "trainer": {"x": 1}}))
    same = {"optim": {"lr": 0.1, "unset": None}, "trainer": {"x": 2}}
    assert check_same_config(saved, same)["optim"]["lr"] == 0.1
    with pytest.raises(ConfigError, match=r"lacks, optim\.new \(3 now\): they were added to "
                                          r"latentgrad after .* commit is in run\.json") as err:
        check_same_config(saved, {"optim": {"lr": 0.1, "new": 3}})
    assert "differs" not in str(err.value)
    with pytest.raises(ConfigError, match=r"differs from .* in optim\.lr \(0\.1 saved, 0\.2 now\) "
                                          r"\(resume with the same settings.*; and it has "
                                          r"settings that .* lacks, optim\.new"):
        check_same_config(saved, {"optim": {"lr": 0.2, "new": 3}})
    saved.write_text(yaml.safe_dump({"optim": {"lr": 0.1, "gone": 5}}))
    with pytest.raises(ConfigError, match=r"optim\.gone \(5 saved, not a setting now\)"):
        check_same_config(saved, {"optim": {"lr": 0.1}})
