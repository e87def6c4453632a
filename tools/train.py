"""Script entry for launchers that want a file: ``torchrun ... tools/train.py --config ...``."""
import sys

from ired_video.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
