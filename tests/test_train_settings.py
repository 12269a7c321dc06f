"""train/train.py takes its defaults from the train: section of config.yaml; flags win over it."""

from __future__ import annotations

import pytest

from train.train import parse_args


def test_defaults_come_from_the_config_section(tmp_path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("train:\n  epochs: 7\n  widths: [8, 16]\n  classes: [happy, sad, neutral]\n")
    args = parse_args(["--config", str(config)])
    assert args.epochs == 7 and args.widths == [8, 16] and args.classes == ["happy", "sad", "neutral"]
    assert parse_args(["--config", str(config), "--set", "train.epochs=3"]).epochs == 3
    assert parse_args(["--config", str(config), "--epochs", "2"]).epochs == 2


def test_a_bad_train_setting_is_one_line_naming_the_key(capsys) -> None:
    with pytest.raises(SystemExit, match=r"train.lr: .*got 'fast'"):
        parse_args(["--set", "train.lr=fast"])


def test_a_ferplus_weight_without_ferplus_labels_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--ferplus-weight", "0.5"])
    assert "--ferplus-weight needs --labels ferplus" in capsys.readouterr().err
    assert parse_args(["--labels", "ferplus", "--ferplus-weight", "0.5"]).ferplus_weight == 0.5
