"""Config schema: layer order, overrides, and errors that name the key before any training."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentgrad.experiments.cli import main
from latentgrad.experiments.config import ConfigError, parse_overrides, resolve
from latentgrad.experiments.tasks.bitvector_vae import Config as BitVectorConfig
from latentgrad.experiments.tasks.ssvae import SSVAEConfig


def test_paper_defaults_and_per_estimator_learning_rates() -> None:
    full = resolve(SSVAEConfig, "ssvae", "sfe", 43)
    assert (full.data.n_validation, full.data.n_labelled, full.data.n_unlabelled) == (
        10000,
        5000,
        None,
    )
    assert full.optim.lr == 1e-4 and full.optim.weight_decay == 1e-5
    assert full.optim.warmstart_epochs == 100 and full.trainer.max_epochs == 300
    assert full.model.classifier_hidden == [256, 256, 256] and full.model.latent_dim == 8
    assert resolve(SSVAEConfig, "ssvae", "sparsemax", 1).optim.lr == 5e-4
    assert resolve(SSVAEConfig, "ssvae", "nvil", 1).optim.lr == 1e-3
    gumbel = resolve(SSVAEConfig, "ssvae", "gumbel", 1).estimator_args
    assert (gumbel.temperature, gumbel.temperature_min, gumbel.anneal_rate) == (1.0, 0.5, 1e-4)


def test_layers_apply_in_order_profile_then_file_then_overrides(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("optim:\n  lr: 0.002\ndata:\n  n_labelled: 100\n")
    cfg = resolve(
        SSVAEConfig,
        "ssvae",
        "sfe",
        1,
        parse_overrides(["profile=cpu", "data.n_labelled=200"]),
        file,
    )
    assert cfg.profile == "cpu" and cfg.trainer.max_epochs == 15  # from the cpu profile
    assert cfg.optim.lr == 0.002  # file beats the estimator section
    assert cfg.data.n_labelled == 200  # command line beats the file


def test_parse_overrides_nests_dotted_keys_and_parses_scalars() -> None:
    got = parse_overrides(
        ["optim.lr=1e-4", "data.n_unlabelled=null", "model.encoder_hidden=[4, 5]"]
    )
    assert got == {
        "optim": {"lr": "1e-4"},
        "data": {"n_unlabelled": None},
        "model": {"encoder_hidden": [4, 5]},
    }
    assert resolve(SSVAEConfig, "ssvae", "sfe", 0, got).optim.lr == 1e-4
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["optim.lr"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=0.1", "unknown config key 'optim.lrr'"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("optim.lr=fast", "optim.lr: expected float"),
        ("trainer.max_epochs=2.5", "trainer.max_epochs: expected int"),
        ("model.encoder_hidden=7", "model.encoder_hidden: expected a list"),
        ("trainer.progress_bar=maybe", "trainer.progress_bar: expected bool"),
        ("optim.lr=-1", "optim.lr: must be > 0"),
        ("data.n_labelled=0", "data.n_labelled: must be >= 1"),
        ("data.n_labelled=55000", "exceeds the 60000 training images"),
        ("data.dataset=cifar", "data.dataset: must be one of"),
        ("optim.warmstart_epochs=400", "optim.warmstart_epochs"),
        ("estimator_args.temperature=0", "estimator_args.temperature: must be > 0"),
        ("profile=huge", "unknown profile 'huge'"),
        ("seed=3", "seed: set it with the command line"),
    ],
)
def test_invalid_config_names_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        resolve(SSVAEConfig, "ssvae", "softmax", 0, parse_overrides([override]))


def test_unknown_estimator_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"choose from .*sparsemax"):
        resolve(SSVAEConfig, "ssvae", "relax", 0)


def test_cli_rejects_bad_config_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", "ssvae", "--estimator", "softmax", "--out", str(tmp_path), "optim.lrr=1"])
    assert code == 2
    assert "unknown config key 'optim.lrr'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was created: no training started


def test_cli_rejects_stray_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "ssvae", "--estimator", "softmax", "--bogus-flag"])
    assert "unrecognized arguments: --bogus-flag" in capsys.readouterr().err


def test_missing_data_fails_before_the_run_directory_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LATENTGRAD_DATA", str(tmp_path / "nowhere"))
    code = main(["run", "ssvae", "--estimator", "softmax", "--out", str(tmp_path / "runs")])
    assert code == 2
    err = capsys.readouterr().err
    assert "expected file 'train-images-idx3-ubyte.gz'" in err
    assert not (tmp_path / "runs").exists()
    # the hint names the data set's folder under LATENTGRAD_DATA, also when data.path points
    # elsewhere (it named the last folder of data.path)
    code = main(["run", "ssvae", "--estimator", "softmax", "--out", str(tmp_path / "runs"),
                 f"data.path={tmp_path / 'elsewhere'}"])
    assert code == 2
    assert "which must contain a 'mnist' folder" in capsys.readouterr().err


def test_a_profile_sets_its_own_per_estimator_values_below_the_user_ones() -> None:
    """``profiles[p].estimators[name]`` applies to that estimator only, above the task's
    ``estimators[name]`` and below ``--config``/overrides: bitvector_vae_d128's Farinhas et al.
    profiles swap Correia et al.'s Gumbel and ST Gumbel decay rates."""
    def args(estimator: str, **overrides: object) -> tuple[float, float]:
        cfg = resolve(BitVectorConfig, "bitvector_vae_d128", estimator, 42,
                      {"profile": "faithful_farinhas", **overrides})
        return cfg.optim.lr, cfg.estimator_args.anneal_rate

    assert args("gumbel") == (1e-3, 1e-5)
    assert args("st_gumbel") == (5e-4, 1e-4)
    assert args("sfe") == (1e-3, 1e-4)  # untouched: the task's defaults
    assert args("gumbel", estimator_args={"anneal_rate": 3e-5}) == (1e-3, 3e-5)
    correia = resolve(BitVectorConfig, "bitvector_vae_d128", "gumbel", 42, {"profile": "faithful"})
    assert correia.estimator_args.anneal_rate == 1e-4


def test_every_profiles_per_estimator_section_names_estimators_of_its_task() -> None:
    from latentgrad.experiments.config import task_estimators, task_yaml
    from latentgrad.experiments.tasks.registry import TASKS

    for task in TASKS:
        for name, profile in (task_yaml(task).get("profiles") or {}).items():
            named = set((profile or {}).get("estimators") or {})
            assert named <= set(task_estimators(task)), (task, name, named)


def test_more_test_images_than_the_test_file_holds_are_refused() -> None:
    """n_test above the 10,000 test images was cut to 10,000 without a word."""
    from latentgrad.experiments.data.images import ImageDataConfig

    ImageDataConfig(n_test=10_000).validate()
    with pytest.raises(ConfigError, match=r"n_test: must be null or in \[1, 10000\]"):
        ImageDataConfig(n_test=10_001).validate()
