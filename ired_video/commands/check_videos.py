"""``ired-video check-videos``: find the videos of a dataset that do not decode."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

from ired_video.data.annotations import AnnotationError
from ired_video.data.checking import check_annotations, write_clean_annotations
from ired_video.data.decoding import BACKENDS
from ired_video.paths import writable_file, write_atomically

EPILOG = """\
PATH can be a Kinetics CSV (label,youtube_id,time_start,time_end,split[,...]), a list
file ("path label" per line), a folder with one subfolder per class, or a single video.

The report is a JSON list with one object per file:
  {"path": ..., "ok": true, "frames": 300, "error": null, "fps": 30.0, ...}
"frames" counts the frames that decode (the packet count checked by decoding the last
frame; with --full every frame is decoded with PyAV, in order). Each file is decoded in its own process and
killed after --timeout seconds, so a file that hangs the decoder is reported, not waited on.

examples:
  ired-video check-videos k400/kinetics_train.csv --video-root k400 --output report.json
  ired-video check-videos demo/train.csv -o report.json --clean-output train_clean.csv
  ired-video check-videos videos_val/ -o val_report.json --jobs 16 --timeout 30
  ired-video check-videos my_clip.mkv -o report.json --full

Then train on the cleaned annotations, or pass the report to the dataset:
  VideoDataset(records, cfg, frame_counts=load_check_report("report.json"))
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ired-video check-videos", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Decode every video of a dataset in parallel and write a JSON report "
                    "of the files that fail, with the reason; optionally a cleaned "
                    "annotation file without them.")
    parser.add_argument("path", metavar="PATH", help="annotation file, class folder root or video")
    parser.add_argument("-o", "--output", required=True, help="JSON report to write")
    parser.add_argument("--video-root", default=None,
                        help="folder of the videos (default: the annotation file's folder)")
    parser.add_argument("--split", default=None,
                        help="only the rows of this split of a Kinetics CSV (e.g. validate)")
    parser.add_argument("--clean-output", default=None, metavar="FILE",
                        help="write the annotations again without the bad or missing files")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1,
                        help="files checked in parallel (default: CPU count)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds before a file's decoder is killed (default 60)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="decoder to check with (default auto: PyAV, decord if it fails)")
    parser.add_argument("--full", action="store_true",
                        help="decode every frame with PyAV to count them exactly (slower)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run the check; exit 0 when the report is written (bad files are not an error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    writable_file(args.output, "--output")  # before decoding anything
    if args.clean_output:
        writable_file(args.clean_output, "--clean-output")
    try:
        ann, report = check_annotations(args.path, args.video_root, args.split,
                                        jobs=args.jobs, timeout=args.timeout,
                                        backend=args.backend, full=args.full,
                                        progress=not args.no_progress)
    except (AnnotationError, FileNotFoundError) as err:
        print(f"check-videos: {err}", file=sys.stderr)
        return 2
    write_atomically(Path(args.output), json.dumps(report, indent=1))
    bad = [r for r in report if not r["ok"]]
    print(f"{len(report)} files, {len(report) - len(bad)} ok, {len(bad)} bad; "
          f"report: {args.output}")
    for r in bad[:10]:
        print(f"  {r['path']}: {r['error']}")
    if len(bad) > 10:
        print(f"  ... and {len(bad) - 10} more (see the report)")
    if args.clean_output:
        kept = write_clean_annotations(args.path, ann, report, args.clean_output)
        print(f"cleaned annotations ({kept} files): {args.clean_output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
