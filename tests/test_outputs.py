"""Output paths are checked before any work (infer, check-videos, overlay, eval), and a write
that fails leaves nothing behind; infer with no readable input and a missing GPU are errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ired_video import cli, create_model, save_checkpoint
from ired_video.data.video_io import write_video
from ired_video.paths import write_atomically

REPO = Path(__file__).resolve().parents[1]
# the function where each command's work starts, replaced by one that fails the test
WORK = {"infer": "ired_video.commands.infer.infer_paths",
        "check-videos": "ired_video.commands.check_videos.check_annotations",
        "overlay": "ired_video.commands.overlay.build_overlay", "eval": "ired_video.commands.eval.evaluate_checkpoint"}


def _inputs(folder: Path) -> dict[str, Path]:
    video = folder / "clip.mp4"
    write_video(video, np.random.default_rng(0).integers(0, 256, (12, 36, 48, 3), dtype=np.uint8), 12)
    checkpoint = folder / "model.pth"
    save_checkpoint(checkpoint, create_model("timesformer_test"))
    (folder / "list.txt").write_text(f"{video} 0\n")
    return {"video": video, "checkpoint": checkpoint, "list": folder / "list.txt"}


def _argv(command: str, inputs: dict[str, Path], out: Path) -> list[str]:
    video, checkpoint = str(inputs["video"]), str(inputs["checkpoint"])
    return {"infer": ["infer", video, "--checkpoint", checkpoint, "--output", str(out), "--no-progress"],
            "check-videos": ["check-videos", str(inputs["list"]), "-o", str(out), "--no-progress"],
            "overlay": ["overlay", video, "--checkpoint", checkpoint, "--output", str(out)],
            "eval": ["eval", "--checkpoint", checkpoint, "--data", str(inputs["list"]), "--output", str(out)],
            }[command]


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    for target in WORK.values():
        monkeypatch.setattr(target, lambda *a, **k: pytest.fail("work started before the output was checked"))


@pytest.mark.parametrize("command", sorted(WORK))
@pytest.mark.parametrize("where", ["an existing folder", "under a file"])
def test_an_output_that_cannot_be_written_is_refused_before_work(tmp_path, capsys, no_work, command, where):
    inputs = _inputs(tmp_path)
    (tmp_path / "taken").mkdir()
    out = tmp_path / "taken" if where == "an existing folder" else inputs["list"] / "out.json"
    assert cli.main(_argv(command, inputs, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ired-video {command}: error: --output {out}: ") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "list.txt", "model.pth", "taken"]


def test_missing_output_folders_are_created_before_work(tmp_path, capsys, no_work):
    inputs = _inputs(tmp_path)
    for command in sorted(WORK):
        out = tmp_path / command / "new" / "out.json"
        with pytest.raises(pytest.fail.Exception, match="work started"):
            cli.main(_argv(command, inputs, out))
        assert out.parent.is_dir() and not any(out.parent.iterdir())


UNPRIVILEGED = """
import contextlib, io, json, sys
from pathlib import Path
from unittest import mock
from ired_video import cli
folder = Path(sys.argv[1])
args = json.loads(sys.argv[2])
results = {}
for command, (target, argv) in args.items():
    err = io.StringIO()
    with mock.patch(target, side_effect=AssertionError("work started")), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except AssertionError as failure:
            code = str(failure)
    results[command] = [code, err.getvalue()]
print(json.dumps(results))
"""


def test_a_read_only_output_folder_is_refused_before_work():
    """chmod means nothing to root: as root the commands run as user nobody (setpriv)."""
    folder = Path(tempfile.mkdtemp(prefix="ired_video_ro_"))
    try:
        os.chmod(folder, 0o755)
        inputs = _inputs(folder)
        for path in inputs.values():
            os.chmod(path, 0o644)
        read_only = folder / "read_only"
        read_only.mkdir(mode=0o555)
        os.chmod(read_only, 0o555)
        prefix: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv: a read-only folder cannot be made")
            prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        args = {command: [WORK[command], _argv(command, inputs, read_only / "out.json")] for command in WORK}
        env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(folder), "OMP_NUM_THREADS": "1"}
        done = subprocess.run([*prefix, sys.executable, "-c", UNPRIVILEGED, str(folder), json.dumps(args)],
                              capture_output=True, text=True, env=env, timeout=300, cwd=folder)
        assert done.returncode == 0, done.stderr[-3000:]
        results = json.loads(done.stdout.strip().splitlines()[-1])
        for command, (code, err) in results.items():
            assert code == 2, (command, code, err)
            assert f"--output {read_only / 'out.json'}: cannot write in {read_only} (Permission denied)" in err
        assert list(read_only.iterdir()) == []
    finally:
        os.chmod(folder / "read_only", 0o755)
        shutil.rmtree(folder)


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    out = tmp_path / "preds.json"
    out.write_text("earlier")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ired_video.paths.os.replace", fail)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(out, "new")
    assert [p.name for p in tmp_path.iterdir()] == ["preds.json"] and out.read_text() == "earlier"


def test_infer_with_no_readable_input_exits_2_and_still_reports(tmp_path, capsys):
    inputs = _inputs(tmp_path)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 20)
    out = tmp_path / "preds.json"
    code = cli.main(["infer", str(broken), str(tmp_path / "missing.mp4"), "--checkpoint", str(inputs["checkpoint"]),
                     "--output", str(out), "--no-progress"])
    assert code == 2
    assert "ired-video infer: error: none of the 2 inputs could be read" in capsys.readouterr().err
    assert json.loads(out.read_text())["summary"]["ok"] == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_missing_gpu_is_a_one_line_error(tmp_path, capsys, device):
    inputs = _inputs(tmp_path)
    assert cli.main(["infer", str(inputs["video"]), "--model", "timesformer_test", "--device", device]) == 2
    err = capsys.readouterr().err
    assert err == f"ired-video infer: error: --device {device}: no CUDA GPU is available here " \
                  "(use --device cpu or auto)\n"


def test_a_device_that_is_no_device_is_a_one_line_error(tmp_path, capsys):
    inputs = _inputs(tmp_path)
    assert cli.main(["infer", str(inputs["video"]), "--model", "timesformer_test", "--device", "gpu0"]) == 2
    assert capsys.readouterr().err.startswith("ired-video infer: error: --device 'gpu0': not a device name")
