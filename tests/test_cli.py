"""The ired-video command and its foundation subcommands."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ired_video import cli


def test_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--help"])
    assert done.value.code == 0
    assert f"ired-video {name}" in capsys.readouterr().out


def test_smoke_reports_tokens_and_gmacs(capsys):
    assert cli.main(["smoke", "--model", "timesformer_test", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert "logits     (1, 5)  finite: True" in out
    assert "tokens     [64, 64]" in out


def test_flops_table(capsys):
    assert cli.main(["flops", "--models", "timesformer_test", "--measure"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| timesformer_test")]
    assert len(rows) == 3
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[4] == cells[5]  # analytic GMACs == measured, to the printed digits


def test_console_script_is_installed():
    done = subprocess.run([sys.executable, "-m", "ired_video.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "smoke" in done.stdout


def test_smoke_with_a_reducer(capsys):
    assert cli.main(["smoke", "--model", "timesformer_test", "--batch", "1", "--reducer", "topk", "keep=0.5",
                     "stages=[1]"]) == 0
    assert "tokens     [64, 64]" in capsys.readouterr().out  # the drop happens inside block 1
    assert cli.main(["smoke", "--model", "timesformer_test", "--batch", "1", "--reducer", "random", "keep=0.5",
                     "stages=[1]"]) == 0
    assert "tokens     [64, 32]" in capsys.readouterr().out


def test_bad_settings_and_files_are_one_line_errors(capsys, tmp_path):
    assert cli.main(["smoke", "--model", "timesformer_test", "--reducer", "topk", "kep=0.5"]) == 2
    assert "ired-video smoke: error: unknown key(s) reducer.kep" in capsys.readouterr().err
    assert cli.main(["smoke", "--checkpoint", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth: no such checkpoint file" in capsys.readouterr().err


def test_train_settings_may_follow_the_options(capsys):
    """Settings after --overwrite reach the config check (argparse alone calls them unrecognized)."""
    config = str(Path(__file__).resolve().parents[1] / "configs/train/demo_micro.yaml")
    assert cli.main(["train", "--config", config, "output=runs/x", "--overwrite", "train.epochs=three"]) == 2
    err = capsys.readouterr().err
    assert "train.epochs: expected an integer" in err and "unrecognized" not in err
