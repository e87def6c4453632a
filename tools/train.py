"""Script entry for launchers that want a file: ``torchrun ... tools/train.py --config ...``
(the ``ired-video train`` command: bad settings exit 2 with a one-line error)."""
import sys

from ired_video.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
