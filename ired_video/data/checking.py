"""Offline check of a dataset's videos: which decode, how many frames, why not.

Each file is decoded in its own forked process, at most ``jobs`` at a time, and killed if
it takes longer than ``timeout`` seconds: decord can spin forever inside C++ while holding
the GIL, and only killing the process recovers (see ``decoding``). A fork costs ~10 ms,
small next to decoding a file, which is why this pass (and not every training item) pays
for isolation. The default check decodes 5 frames spread over the file (first and last
included) with the training decoder (PyAV, then decord); ``full=True`` decodes every frame
with PyAV, sequentially (no seeking), to count exactly the frames that decode.
"""
from __future__ import annotations

import csv
import json
import os
import time
from multiprocessing import connection, get_context
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from tqdm import tqdm

from ired_video.data.annotations import Annotations, VideoRecord, is_kinetics_csv, load_annotations
from ired_video.data.decoding import DecodeError, read_clip, read_clip_pyav

PathLike = Union[str, os.PathLike]


def _entry(path: str, ok: bool = False, frames: Optional[int] = None,
           error: Optional[str] = None, **extra: Any) -> dict[str, Any]:
    return {"path": path, "ok": ok, "frames": frames, "error": error, **extra}


def check_video(path: PathLike, backend: str = "auto", full: bool = False) -> dict[str, Any]:
    """Report on one file, in this process: ``path``, ``ok``, ``frames``, ``error``, ...

    ``frames`` is the count that decodes: the backend's packet count verified by decoding
    the last frame (PyAV's decodable prefix if that fails), or every frame counted with
    ``full``.
    """
    path = os.fspath(path)

    def spread(num: int, fps: float) -> list[int]:
        return [num - 1] if full else sorted({0, num // 4, num // 2, (3 * num) // 4, num - 1})

    try:
        if full:  # from frame 0, every frame: the count that really decodes
            clip = read_clip_pyav(path, spread, seek=False)
        else:
            clip = read_clip(path, spread, backend)
    except DecodeError as err:
        return _entry(path, error=err.reason)
    except Exception as err:  # noqa: BLE001 -- a report, not a crash, whatever happens
        return _entry(path, error=f"{type(err).__name__}: {err}")
    height, width = clip.frames.shape[1:3]
    return _entry(path, True, clip.num_frames, None, fps=round(clip.fps, 3), height=height,
                  width=width, backend=clip.backend, note=clip.note or None)


def _child(conn: connection.Connection, path: str, backend: str, full: bool) -> None:
    conn.send(check_video(path, backend, full))
    conn.close()


def check_videos(paths: Sequence[str], jobs: int = 1, timeout: float = 60.0,
                 backend: str = "auto", full: bool = False, progress: bool = True
                 ) -> list[dict[str, Any]]:
    """Check every path in a killable forked process; results in the order of ``paths``."""
    ctx = get_context("fork")
    results: list[Optional[dict[str, Any]]] = [None] * len(paths)
    pending = list(enumerate(paths))[::-1]
    running: dict[Any, tuple[int, str, Any, float]] = {}
    bar = tqdm(total=len(paths), desc="checking videos", unit="file", disable=not progress)
    while pending or running:
        while pending and len(running) < max(1, jobs):
            i, path = pending.pop()
            if not os.path.isfile(path):
                results[i] = _entry(path, error="file not found")
                bar.update()
                continue
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(send, path, backend, full), daemon=True)
            proc.start()
            send.close()
            running[recv] = (i, path, proc, time.monotonic())
        for conn in connection.wait(list(running), timeout=0.1):
            i, path, proc, _ = running.pop(conn)
            try:
                results[i] = conn.recv()
            except EOFError:
                proc.join()
                results[i] = _entry(path, error=f"checker process died (exit code {proc.exitcode})")
            proc.join()
            conn.close()
            bar.update()
        now = time.monotonic()
        for conn, (i, path, proc, started) in list(running.items()):
            if now - started > timeout:
                proc.kill()
                proc.join()
                conn.close()
                del running[conn]
                results[i] = _entry(path, error=f"timed out after {timeout:g} s (decoder killed)")
                bar.update()
    bar.close()
    return [r for r in results if r is not None]


def check_annotations(source: PathLike, video_root: Optional[PathLike] = None,
                      split: Optional[str] = None, **kwargs: Any
                      ) -> tuple[Annotations, list[dict[str, Any]]]:
    """Parse ``source`` (annotation file, class folder root or one video) and check its files.

    Annotated files that do not exist are reported too (``error: "file not found"``).
    """
    source = Path(source)
    if source.is_file() and not _is_text(source):  # a video, not an annotation file
        ann = Annotations([VideoRecord(str(source), -1)], [], [])
    else:
        ann = load_annotations(source, video_root, split=split)
    report = check_videos([r.path for r in ann.records], **kwargs)
    report += [_entry(m, error="file not found") for m in ann.missing]
    return ann, report


def _is_text(path: Path) -> bool:
    """True if the first 4 kB of ``path`` are printable UTF-8 (an annotation file)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in head


def write_clean_annotations(source: PathLike, ann: Annotations, report: list[dict[str, Any]],
                            out: PathLike) -> int:
    """Write ``source`` again with only the rows of files that are ok; return rows kept.

    A Kinetics CSV or list file keeps its format and untouched rows; a class-folder
    root becomes a list file ``<path relative to root> <label>``.
    """
    good = {r["path"] for r in report if r["ok"]}
    kept = [rec for rec in ann.records if rec.path in good]
    source, out = Path(source), Path(out)
    if source.is_dir():
        out.write_text("".join(f"{os.path.relpath(r.path, source)} {r.label}\n" for r in kept),
                       encoding="utf-8")
        return len(kept)
    rows = {r.source_row for r in kept}
    if is_kinetics_csv(source):
        with open(source, newline="", encoding="utf-8") as f:
            table = list(csv.reader(f))
        data = [row for row in table[1:] if row]  # blank lines are not rows (as DictReader)
        with open(out, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(table[0])
            writer.writerows(row for i, row in enumerate(data) if i in rows)
    else:
        with open(source, encoding="utf-8") as f:
            lines = f.readlines()
        out.write_text("".join(line for i, line in enumerate(lines) if i in rows),
                       encoding="utf-8")
    return len(kept)


def load_check_report(path: PathLike) -> dict[str, Optional[int]]:
    """``path -> verified frame count`` for every entry of a report (None when not ok).

    Use the ok entries to filter records and as ``VideoDataset(frame_counts=...)``.
    """
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)
    return {e["path"]: (e["frames"] if e["ok"] else None) for e in entries}
