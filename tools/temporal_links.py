"""How many frames a token reaches in temporal attention under frame-mode reducers.

Frame mode lets every frame keep or merge different patches, so a token's temporal partners
(the tokens of other frames it attends to) depend on the rule. This tool runs a checkpoint
with each reducer in frame mode on annotated clips and, at the input of every block whose
frames hold different tokens, counts for each real token the frames it attends over (its
own included) under two rules:

- ``holding``: through every patch location it holds (the rule the model uses): a frame
  counts if some token of it holds one of those locations;
- ``representative``: through its own position only (the rule before issue 14): a frame
  counts if some token of it sits at that position.

Printed: per reducer, the mean frames reached (over tokens and blocks, and in the last
block alone) and the share of tokens with no temporal partner.

    python tools/temporal_links.py --checkpoint runs/demo/plain/best.pth --data runs/demo/data/val.csv
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ired_video.build import apply_reducer, create_model
from ired_video.data.annotations import load_annotations
from ired_video.data.dataset import VideoDataset
from ired_video.tokens import TokenState

REDUCERS = ["tome r=8", "bat keep=0.5", "topk keep=0.5 fuse=true", "topk keep=0.5", "random keep=0.5"]


def frames_reached(state: TokenState) -> tuple[Tensor, Tensor, Tensor]:
    """(B, F, K) frames each token reaches by the holding and the representative rule, and
    the (B, F, K) mask of real tokens."""
    batch, frames, slots = state.x.shape[:3]
    valid = state.valid_mask()
    holder = state.slot_of.clamp(min=0)
    alive = (state.slot_of >= 0) & valid.gather(2, holder)  # (B, F, N)
    held = (state.slot_of[:, :, None, :] == torch.arange(slots)[None, None, :, None]).float()  # (B, F, K, N)
    holding = (torch.einsum("bfkn,btn->bfkt", held, alive.float()) > 0).sum(dim=-1)  # (B, F, K)
    location = state.pos % state.num_patches  # (B, F, K)
    present = torch.zeros(batch, frames, state.num_patches, dtype=torch.bool).scatter_(2, location, valid)
    representative = present.float().sum(dim=1).gather(1, location.reshape(batch, -1)).reshape(batch, frames, slots)
    return holding, representative, valid


def measure(model: torch.nn.Module, clips: list[Tensor]) -> dict[str, Any]:
    """Means over the real tokens of every block input whose frames hold different tokens,
    overall and per block (``blocks``: block index -> the same means there)."""
    states: list[TokenState] = []
    hooks = [block.register_forward_pre_hook(lambda _, args: states.append(args[0])) for block in model.blocks]
    keys = ("holding", "representative", "holding_alone", "representative_alone", "tokens")
    sums: dict[int, dict[str, float]] = {}
    try:
        with torch.no_grad():
            for video in clips:
                states.clear()
                model(video)
                for index, state in enumerate(states):
                    if state.aligned:
                        continue
                    holding, representative, valid = frames_reached(state)
                    block = sums.setdefault(index, dict.fromkeys(keys, 0.0))
                    block["holding"] += float(holding[valid].sum())
                    block["representative"] += float(representative[valid].sum())
                    block["holding_alone"] += float((holding[valid] == 1).sum())
                    block["representative_alone"] += float((representative[valid] == 1).sum())
                    block["tokens"] += int(valid.sum())
    finally:
        for hook in hooks:
            hook.remove()

    def means(part: dict[str, float]) -> dict[str, float]:
        tokens = max(part["tokens"], 1)
        return {"frames_holding": part["holding"] / tokens, "frames_representative": part["representative"] / tokens,
                "alone_holding": part["holding_alone"] / tokens,
                "alone_representative": part["representative_alone"] / tokens, "tokens": part["tokens"]}
    total = {key: sum(part[key] for part in sums.values()) for key in keys}
    return {**means(total), "blocks": {index: means(part) for index, part in sums.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--data", required=True, help="annotations of the clips")
    parser.add_argument("--reducers", nargs="+", default=REDUCERS, help="'NAME KEY=VALUE ...' each, frame mode")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    args = parser.parse_args()
    model = create_model(checkpoint=args.checkpoint).eval()
    records = load_annotations(args.data, class_names=model.data_config.class_names or None).records
    dataset = VideoDataset(records[:args.limit] if args.limit else records, model.data_config, "test")
    clips = [batch["video"] for batch in DataLoader(dataset, batch_size=8)]
    frames = model.config.num_frames
    rows: list[dict[str, Any]] = []
    print(f"| reducer (frame mode) | frames reached of {frames}: representative -> holding "
          "| no temporal partner: representative -> holding |\n|---|---|---|")
    for spec in args.reducers:
        name, *knobs = spec.split()
        kwargs = {k: json.loads(v) for k, v in (knob.split("=", 1) for knob in knobs)}
        apply_reducer(model, name, mode="frame", **kwargs)
        row = {"reducer": spec, **measure(model, clips)}
        rows.append(row)
        last = row["blocks"][max(row["blocks"])] if row["blocks"] else row
        print(f"| {spec} | {row['frames_representative']:.2f} -> {row['frames_holding']:.2f} "
              f"(last block {last['frames_representative']:.2f} -> {last['frames_holding']:.2f}) "
              f"| {100 * row['alone_representative']:.1f}% -> {100 * row['alone_holding']:.1f}% |", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
