"""Training logs: per step JSONL and CSV files, per evaluation a JSONL history, plus
accelerate's trackers (TensorBoard). A resumed run first drops the rows a killed run wrote
after its checkpoint (:meth:`StepLogger.resume_at`), so no step appears twice."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable

from accelerate import Accelerator

from ired_video.paths import write_atomically

EVAL_HISTORY_KEYS = ("top1", "top5", "mean_class_accuracy", "gmacs_per_view", "gmacs_per_video")


class StepLogger:
    """Writes one row per logged step and per evaluation on the main process; other
    processes do nothing."""

    def __init__(self, accelerator: Accelerator, run_dir: Path) -> None:
        self.accelerator = accelerator
        self.jsonl = run_dir / "train_log.jsonl"
        self.csv = run_dir / "train_log.csv"
        self.evaluations = run_dir / "eval_log.jsonl"
        self.columns: list[str] = []

    def resume_at(self, step: int, epochs_done: int) -> None:
        """Keep the step rows up to ``step`` and the evaluations of the first ``epochs_done``
        epochs: what the checkpoint being resumed had seen. Main process only."""
        if not self.accelerator.is_main_process:
            return
        _keep_lines(self.jsonl, lambda line: json.loads(line)["step"] <= step)
        _keep_lines(self.evaluations, lambda line: json.loads(line)["epoch"] <= epochs_done)
        if self.csv.exists():
            header = next(csv.reader(io.StringIO(self.csv.read_text())), [])
            if "step" in header:
                column = header.index("step")

                def before(line: str) -> bool:
                    row = next(csv.reader([line]))
                    return row == header or (len(row) == len(header) and int(row[column]) <= step)

                _keep_lines(self.csv, before)

    def log(self, row: dict[str, Any], step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if not self.columns:
            self.columns = list(row)
            write_header = not self.csv.exists()
        else:
            write_header = False
        with self.csv.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            if write_header:
                writer.writeheader()
            writer.writerow(row)
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.accelerator.log(numbers, step=step)

    def log_evaluation(self, report: dict[str, Any], step: int) -> None:
        """One line per evaluation in ``eval_log.jsonl`` and ``val/*`` scalars for the trackers
        (``eval_report.json`` holds only the latest report)."""
        if not self.accelerator.is_main_process:
            return
        scores = {key: report[key] for key in EVAL_HISTORY_KEYS if key in report}
        with self.evaluations.open("a") as f:
            f.write(json.dumps({"epoch": report["epoch"], "step": step, **scores}) + "\n")
        self.accelerator.log({f"val/{key}": value for key, value in scores.items()}, step=step)


def _keep_lines(path: Path, keep: Callable[[str], bool]) -> None:
    """Rewrite ``path`` (atomically) with the lines ``keep(line)`` accepts; blank lines and a
    line a kill cut short (it does not parse) go."""
    if not path.exists():
        return

    def wanted(line: str) -> bool:
        try:
            return bool(line.strip()) and line.endswith("\n") and keep(line)
        except (ValueError, KeyError, TypeError, StopIteration):
            return False

    write_atomically(path, "".join(line for line in path.read_text().splitlines(keepends=True) if wanted(line)))


