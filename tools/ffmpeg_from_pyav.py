"""Let torchcodec use the FFmpeg libraries that PyAV's wheel bundles (no system FFmpeg needed).

torchcodec loads FFmpeg's shared libraries by their standard names (``libavcodec.so.62``,
...), which pip does not install. PyAV's manylinux wheel carries FFmpeg in ``av.libs/``
under renamed files (``libavcodec-5e6b81c2.so.62.28.102``; FFmpeg 8 in PyAV 18.1, 9 in PyAV
19). This tool fills a folder with links to every bundled library, plus links under the
standard names of the seven FFmpeg libraries, and prints the ``LD_LIBRARY_PATH`` line that
makes torchcodec find them (it must be set before Python starts); torchcodec then loads its
build for that FFmpeg major version (checked: torchcodec 0.17.0 on PyAV 18.1.0's FFmpeg 8).

    eval "$(python tools/ffmpeg_from_pyav.py runs/ffmpeg)"   # then: python -c "import torchcodec.decoders"
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Optional

import av

FFMPEG_LIBRARIES = ("avutil", "avcodec", "avformat", "avdevice", "avfilter", "swscale", "swresample")
# libavcodec-5e6b81c2.so.62.28.102 -> ("avcodec", "62"): auditwheel's hash between name and version
BUNDLED_NAME = re.compile(r"^lib(?P<name>[a-z]+)-[0-9a-f]{8}\.so\.(?P<major>\d+)(\.\d+)*$")


def bundled_libraries() -> Path:
    """PyAV's folder of bundled shared libraries; a clear error when this PyAV has none (a
    source build, which links the system's FFmpeg, which torchcodec then finds itself)."""
    folder = Path(av.__file__).resolve().parent.parent / "av.libs"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: this PyAV ({av.__version__}) bundles no FFmpeg libraries; it was "
                                "built against the system's FFmpeg, which torchcodec can load directly")
    return folder


def standard_name(file_name: str) -> Optional[str]:
    """``libavcodec-5e6b81c2.so.62.28.102`` -> ``libavcodec.so.62`` for the FFmpeg libraries, else None."""
    match = BUNDLED_NAME.match(file_name)
    if match is None or match["name"] not in FFMPEG_LIBRARIES:
        return None
    return f"lib{match['name']}.so.{match['major']}"


def make_links(target: Path, source: Path) -> list[str]:
    """Link every file of ``source`` into ``target`` under its own name and, for FFmpeg's
    libraries, under the standard name too; returns the standard names made. Existing links
    are replaced; a missing FFmpeg library is an error naming it."""
    target.mkdir(parents=True, exist_ok=True)
    made = []
    for library in sorted(source.iterdir()):
        names = [library.name] + [name for name in [standard_name(library.name)] if name]
        for name in names:
            link = target / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(library)
        made += names[1:]
    missing = [lib for lib in FFMPEG_LIBRARIES if not any(name.startswith(f"lib{lib}.so.") for name in made)]
    if missing:
        raise FileNotFoundError(f"{source}: no bundled lib{', lib'.join(missing)}: cannot stand in for FFmpeg")
    return made


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="where to put the links (made if missing)")
    args = parser.parse_args(argv)
    try:
        made = make_links(args.folder, bundled_libraries())
    except OSError as err:  # FileNotFoundError included
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"# {', '.join(made)} -> PyAV {av.__version__}'s bundled FFmpeg", file=sys.stderr)
    print(f'export LD_LIBRARY_PATH="{args.folder.resolve()}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
