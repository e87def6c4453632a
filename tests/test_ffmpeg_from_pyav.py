"""tools/ffmpeg_from_pyav.py: the standard FFmpeg names it links to PyAV's bundled libraries,
and torchcodec loading through them where torchcodec is installed."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tool_modules import load_tool

BUNDLED = ["libavutil-5809ad29.so.60.26.102", "libavcodec-5e6b81c2.so.62.28.102",
           "libavformat-4639def2.so.62.12.102", "libavdevice-d91b4e17.so.62.3.102",
           "libavfilter-b5da520e.so.11.14.102", "libswscale-88e9f973.so.9.5.102",
           "libswresample-f0bc92fc.so.6.3.102", "libx264-d6533a8d.so.165",
           "libopencore-amrnb-d72c52e2.so.0.0.5"]


def test_ffmpeg_libraries_get_their_standard_names_and_the_rest_keep_theirs(tmp_path: Path) -> None:
    tool = load_tool("ffmpeg_from_pyav")
    source = tmp_path / "av.libs"
    source.mkdir()
    for name in BUNDLED:
        (source / name).write_text(name)
    made = tool.make_links(tmp_path / "links", source)
    assert sorted(made) == ["libavcodec.so.62", "libavdevice.so.62", "libavfilter.so.11", "libavformat.so.62",
                            "libavutil.so.60", "libswresample.so.6", "libswscale.so.9"]
    links = tmp_path / "links"
    assert (links / "libavcodec.so.62").read_text() == "libavcodec-5e6b81c2.so.62.28.102"
    assert (links / "libx264-d6533a8d.so.165").read_text() == "libx264-d6533a8d.so.165"  # its own name only
    assert len(list(links.iterdir())) == len(BUNDLED) + 7
    tool.make_links(links, source)  # again: the links are replaced, not an error


def test_a_missing_ffmpeg_library_is_named(tmp_path: Path) -> None:
    tool = load_tool("ffmpeg_from_pyav")
    source = tmp_path / "av.libs"
    source.mkdir()
    for name in BUNDLED:
        if "swscale" not in name:
            (source / name).write_text(name)
    with pytest.raises(FileNotFoundError, match="no bundled libswscale"):
        tool.make_links(tmp_path / "links", source)


def test_torchcodec_loads_pyav_s_ffmpeg_through_the_links(tmp_path: Path) -> None:
    if importlib.util.find_spec("torchcodec") is None:
        pytest.skip("torchcodec is not installed (pip install torchcodec)")
    tool = load_tool("ffmpeg_from_pyav")
    try:
        source = tool.bundled_libraries()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    tool.make_links(tmp_path, source)
    env = dict(os.environ, LD_LIBRARY_PATH=f"{tmp_path}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    script = ("import torchcodec.decoders; "
              "print([line.split()[-1] for line in open('/proc/self/maps') if 'libavcodec' in line][0])")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip().splitlines()[-1]).parent == source  # PyAV's copy, not a system one
