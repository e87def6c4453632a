"""tools/bench_data.py: the clip it makes, its refusals, and the GPU table's clean skip."""
from __future__ import annotations

from pathlib import Path

import av
import pytest
import torch

from tests.tool_modules import load_tool


def test_made_clip_has_the_asked_length_and_size(tmp_path: Path) -> None:
    tool = load_tool("bench_data")
    path = tmp_path / "clip.mp4"
    tool.make_long_clip(path, seconds=1, fps=10, height=96, width=128)
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == 10 and frames[0].shape == (96, 128, 3)


def test_a_clip_of_no_seconds_is_refused(tmp_path: Path, capsys) -> None:
    tool = load_tool("bench_data")
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--make-long", str(tmp_path / "x.mp4"), "--seconds", "0"])
    assert exit_info.value.code == 2 and "--seconds must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_the_gpu_table_says_why_it_skips(tmp_path: Path, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the table runs")
    tool = load_tool("bench_data")
    assert tool.cuda_table([str(tmp_path / "x.mp4")], tool.DataConfig(), clips=1) == 0
    assert "skipping --device cuda:" in capsys.readouterr().out
