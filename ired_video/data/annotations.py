"""Annotations: Kinetics CSV, ``path label`` list files and class folders -> ``VideoRecord`` lists.

Kinetics CSVs find files by ``{youtube_id}_{start:06d}_{end:06d}.*`` anywhere under the
root; list files split each line once from the right (paths may hold spaces or commas);
class folders take every video extension. Class indices follow the sorted class names
(``_`` read as a space: the Kinetics-400 label order) or a given ``class_names`` list.
Missing files are dropped and reported once, with a count.

Design notes: docs/design.md, "ired_video.data.annotations".
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Sequence, Union

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv",
                    ".wmv", ".3gp", ".ts")
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
PathLike = Union[str, os.PathLike]


class AnnotationError(ValueError):
    """An annotation file or folder cannot be parsed; the message names the file and line."""


@dataclass(frozen=True)
class VideoRecord:
    """One annotated video: where it is, its class index (-1 = unlabelled) and name.

    ``source_row`` is the 0-based data row (CSV) or line (list file) it came from, so a
    cleaned copy of the annotation file can keep exactly the rows of the good files.
    """

    path: str
    label: int
    class_name: Optional[str] = None
    source_row: Optional[int] = None


class Annotations(NamedTuple):
    """Parsed annotations: records of present files, class names by index, missing paths."""

    records: list[VideoRecord]
    class_names: list[str]
    missing: list[str]


def class_sort_key(name: str) -> str:
    """Sort key of class names: ``_`` counts as a space (folders often use underscores)."""
    return name.replace("_", " ")


def sorted_class_names(names: Iterable[str]) -> list[str]:
    """Unique class names in label-map order (see :func:`class_sort_key`)."""
    return sorted(set(names), key=class_sort_key)


def kinetics_file_stem(youtube_id: str, time_start: str, time_end: str) -> str:
    """``{youtube_id}_{start:06d}_{end:06d}``, the official Kinetics clip file name stem."""
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}"


def is_video_file(path: PathLike) -> bool:
    """True if ``path`` has a known video extension (case-insensitive)."""
    return str(path).lower().endswith(VIDEO_EXTENSIONS)


def _index_videos(root: Path) -> dict[str, str]:
    """Map file stem -> path for every video file under ``root`` (first one wins)."""
    index: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if is_video_file(name):
                index.setdefault(os.path.splitext(name)[0], os.path.join(dirpath, name))
    return index


def _label_lookup(names: Sequence[str]) -> dict[str, int]:
    """Class name -> index, accepting a name with spaces or underscores."""
    lookup = {}
    for i, name in enumerate(names):
        lookup[name] = i
        lookup.setdefault(class_sort_key(name), i)
    return lookup


def _class_index(lookup: dict[str, int], name: str, where: str) -> int:
    try:
        return lookup[name] if name in lookup else lookup[class_sort_key(name)]
    except KeyError:
        raise AnnotationError(f"{where}: class {name!r} is not in the given class_names") from None


def _report_missing(source: PathLike, missing: list[str]) -> None:
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        logger.warning("%s: %d annotated video(s) not found, skipped (%s)",
                       source, len(missing), shown)


def parse_kinetics_csv(csv_path: PathLike, video_root: Optional[PathLike] = None,
                       class_names: Optional[Sequence[str]] = None,
                       split: Optional[str] = None) -> Annotations:
    """Read an official Kinetics CSV; find each clip under ``video_root`` (default: CSV folder).

    ``split`` keeps only rows whose ``split`` column equals it (K700 uses ``validate``).
    Rows without a label (test CSVs) get label -1.
    """
    csv_path = Path(csv_path)
    root = Path(video_root) if video_root is not None else csv_path.parent
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
        fieldnames = rows[0].keys() if rows else []
    absent = [c for c in KINETICS_COLUMNS[1:] if c not in fieldnames]
    if rows and absent:
        raise AnnotationError(f"{csv_path}: not a Kinetics CSV, missing column(s) {absent}; "
                              f"expected header {','.join(KINETICS_COLUMNS)},split")
    if split is not None:
        rows = [r if r.get("split") == split else None for r in rows]
    labels = [r.get("label") or "" for r in rows if r is not None]
    names = list(class_names) if class_names is not None else sorted_class_names(
        x for x in labels if x)
    lookup = _label_lookup(names)
    index = _index_videos(root)
    records, missing = [], []
    for row_i, row in enumerate(rows):
        if row is None:
            continue
        try:
            stem = kinetics_file_stem(row["youtube_id"], row["time_start"], row["time_end"])
        except (TypeError, ValueError):
            raise AnnotationError(f"{csv_path}: data row {row_i + 1}: bad time_start/time_end "
                                  f"{row.get('time_start')!r}/{row.get('time_end')!r}") from None
        if stem not in index:
            missing.append(stem)
            continue
        name = row.get("label") or None
        label = _class_index(lookup, name, f"{csv_path}: row {row_i + 1}") if name else -1
        records.append(VideoRecord(index[stem], label, name, row_i))
    _report_missing(csv_path, missing)
    return Annotations(records, names, missing)


def _split_list_line(line: str) -> tuple[str, Optional[str]]:
    """``path<sep>label`` -> (path, label); tab, comma, then whitespace, split from the right."""
    for sep in ("\t", ",", None):
        parts = line.rsplit(sep, 1)
        if len(parts) == 2 and parts[0].strip() and parts[1].strip().lstrip("-").isdigit():
            return parts[0].strip(), parts[1].strip()
    return line.strip(), None


def parse_list_file(list_path: PathLike, root: Optional[PathLike] = None,
                    class_names: Optional[Sequence[str]] = None) -> Annotations:
    """Read ``path label`` lines (relative paths are joined to ``root``, default: file folder).

    Labels are integers. Class names are ``class_names`` if given, else the per-class folder
    names when every label's videos share one parent folder and those sort into label order,
    else ``"0"``, ``"1"``, ...
    """
    list_path = Path(list_path)
    base = Path(root) if root is not None else list_path.parent
    entries: list[tuple[int, str, int]] = []
    with open(list_path, encoding="utf-8") as f:
        for line_i, line in enumerate(f):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            path, label = _split_list_line(line.rstrip("\r\n"))
            entries.append((line_i, str(base / path), int(label) if label is not None else -1))
    labels = sorted({lab for _, _, lab in entries if lab >= 0})
    if class_names is not None:
        names = list(class_names)
        if labels and labels[-1] >= len(names):
            raise AnnotationError(f"{list_path}: label {labels[-1]} but only {len(names)} "
                                  f"class_names given")
    present = [e for e in entries if os.path.isfile(e[1])]
    missing = [path for _, path, _ in entries if not os.path.isfile(path)]
    if class_names is None:
        names = _names_from_folders(present, labels)
    records = [VideoRecord(path, label, names[label] if label >= 0 else None, line_i)
               for line_i, path, label in present]
    _report_missing(list_path, missing)
    return Annotations(records, names, missing)


def _names_from_folders(entries: list[tuple[int, str, int]], labels: list[int]) -> list[str]:
    """Folder names of the present files if consistent with the integer labels, else numbers."""
    numbers = [str(i) for i in range(labels[-1] + 1)] if labels else []
    parents: dict[int, set[str]] = {}
    for _, path, label in entries:
        if label >= 0:
            parents.setdefault(label, set()).add(Path(path).parent.name)
    if (labels != list(range(len(labels))) or set(parents) != set(labels)
            or any(len(p) != 1 for p in parents.values())):
        return numbers
    names = [next(iter(parents[i])) for i in labels]
    return names if names == sorted_class_names(names) else numbers


def parse_class_folders(root: PathLike, class_names: Optional[Sequence[str]] = None
                        ) -> Annotations:
    """``root/<class>/**/<video>`` -> records; classes are the sorted subfolder names.

    A folder with videos but no class subfolders gives unlabelled records (label -1).
    """
    root = Path(root)
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: class_sort_key(p.name))
    names = list(class_names) if class_names is not None else [p.name for p in folders]
    lookup = _label_lookup(names)
    records = []
    for folder in folders:
        label = _class_index(lookup, folder.name, str(root))
        for path in sorted(_index_videos(folder).values()):
            records.append(VideoRecord(path, label, folder.name))
    if not records and class_names is None:  # a plain folder of videos: unlabelled
        records = [VideoRecord(os.path.join(root, name), -1) for name in sorted(os.listdir(root))
                   if is_video_file(name) and (root / name).is_file()]
        names = []
    if not records:
        raise AnnotationError(f"{root}: no video files in it or in class subfolders "
                              f"(extensions {', '.join(VIDEO_EXTENSIONS)})")
    return Annotations(records, names, [])


def is_kinetics_csv(path: PathLike) -> bool:
    """True if the first line of ``path`` is a Kinetics CSV header."""
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    return all(c in header for c in KINETICS_COLUMNS[1:])


def load_annotations(source: PathLike, video_root: Optional[PathLike] = None,
                     class_names: Optional[Sequence[str]] = None,
                     split: Optional[str] = None) -> Annotations:
    """Parse any supported form: a folder of class folders, a Kinetics CSV or a list file.

    ``video_root`` is where the videos are (default: the annotation file's folder);
    ``class_names`` fixes the label order (e.g. a checkpoint's); ``split`` filters a CSV.
    """
    source = Path(source)
    if source.is_dir():
        return parse_class_folders(source, class_names)
    if not source.is_file():
        raise AnnotationError(f"{source}: no such annotation file or folder")
    try:
        if is_kinetics_csv(source):
            return parse_kinetics_csv(source, video_root, class_names, split)
        return parse_list_file(source, video_root, class_names)
    except UnicodeDecodeError:
        raise AnnotationError(f"{source}: not a text annotation file (is it a video?)") from None
