"""The ``ired-video`` command: one entry point, one module per subcommand.

Each subcommand lives in ``ired_video/commands/<name>.py`` and exposes
``main(argv: list[str] | None) -> int`` with its own ``--help``. Modules are imported only
when their command runs, so ``ired-video --help`` stays fast.
"""
from __future__ import annotations

import importlib
import sys
from typing import Optional

# name -> (module, one-line description shown by ``ired-video --help``)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("ired_video.commands.demo",
             "the whole product on a CPU in a few minutes: data, training, reducer, comparison"),
    "smoke": ("ired_video.commands.smoke",
              "run a model on a generated clip and print logits, tokens and GMACs"),
    "flops": ("ired_video.commands.flops",
              "print GMACs per view for the named TimeSformer variants"),
    "train": ("ired_video.commands.train",
              "train or fine-tune a model from a YAML config (resumable, multi-GPU)"),
    "eval": ("ired_video.commands.eval",
             "multi-view accuracy and GMACs of a checkpoint on annotated videos"),
    "check-videos": ("ired_video.commands.check_videos",
                     "decode every video of a dataset, report the bad ones as JSON"),
    "make-demo-data": ("ired_video.commands.make_demo_data",
                       "write the small generated Kinetics-style demo dataset"),
    "infer": ("ired_video.commands.infer",
              "classify videos: top-k per view and video, GMACs spent, tokens kept per stage"),
    "calibrate": ("ired_video.commands.calibrate",
                  "fit a cascade's exit thresholds to a GMACs budget on held-out videos"),
    "overlay": ("ired_video.commands.overlay",
                "draw which patches each reducer stage kept on a video (MP4 and PNG grid)"),
    "explain": ("ired_video.commands.explain",
                "heatmaps per frame of what a model looked at: interpreter, attention, rollout, interaction"),
    "faithfulness": ("ired_video.commands.faithfulness",
                     "deletion/insertion AUC and localisation scores of every explanation method, side by side"),
    "fields": ("ired_video.commands.fields",
               "measure per-patch responsive fields on data; JSON for window-free attention (model.responsive_fields)"),
    "export": ("ired_video.commands.export",
               "write a model as a transformers snapshot (or as our checkpoint), from any weights we load"),
    "fit-interaction": ("ired_video.commands.fit_interaction",
                        "fit the interaction reducer's predictor to the patch-interaction indicator"),
    "bench": ("ired_video.commands.bench",
              "measure GMACs and clips/s of every token reducer against the plain model"),
}

USAGE = """usage: ired-video COMMAND [ARGS ...]

Efficient, explainable video transformers: TimeSformer with spatiotemporal token reducers.

commands:
{commands}

Run 'ired-video COMMAND --help' for the options of one command.
"""


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def main(argv: Optional[list[str]] = None) -> int:
    """Dispatch ``argv[0]`` to its subcommand; return the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ired-video: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from ired_video.config import ConfigError
    from ired_video.data.annotations import AnnotationError
    from ired_video.models.weights import CheckpointError

    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except (ConfigError, CheckpointError, AnnotationError, FileNotFoundError) as err:
        print(f"ired-video {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
