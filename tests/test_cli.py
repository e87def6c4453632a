"""The ired-video command and its foundation subcommands."""
from __future__ import annotations

import subprocess
import sys

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
