"""What a person watching a run sees: a live table of stages on a terminal, one line per change
otherwise (CI logs, `make demo > log`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from xwin.controller.state import RunRecord, StageState

STYLES = {
    "pending": "dim", "running": "bold yellow", "succeeded": "green", "cached": "cyan",
    "supplied": "cyan", "skipped": "dim", "failed": "bold red", "cancelled": "magenta",
    "detached": "magenta",
}
TIMED_STATES = ("running", "succeeded", "failed", "cancelled", "detached")  # ones that ran
# Metrics worth a column, in this order of preference (stages report many more).
KEY_METRIC_HINTS = ("loss", "accuracy", "acc", "reward", "win", "score", "mean", "responses",
                    "pairs", "records", "samples", "tokens_per_s")


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def key_metrics(metrics: dict[str, Any], limit: int = 3) -> str:
    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    chosen: list[str] = []
    for hint in KEY_METRIC_HINTS:
        for name in numeric:
            if hint in name and name not in chosen:
                chosen.append(name)
    chosen += [n for n in numeric if n not in chosen]
    return " ".join(f"{n}={format_value(numeric[n])}" for n in chosen[:limit])


def last_log_line(path: str | None, width: int = 60) -> str:
    """The newest progress of a running stage (a tqdm bar redraws with '\\r')."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [seg.strip() for line in tail.splitlines() for seg in line.split("\r") if seg.strip()]
    return lines[-1][-width:] if lines else ""


def stage_note(stage: StageState) -> str:
    if stage.waiting_for and stage.status in ("pending", "running"):  # another run is
        # producing this stage's output
        return stage.waiting_for
    if stage.status == "running" and stage.attempts:
        attempt = stage.attempts[-1]
        if attempt.queue and "admitted" not in attempt.queue:  # waiting: no pod, no log yet
            return attempt.queue
        return last_log_line(attempt.log)
    if stage.status in ("failed", "cancelled") and stage.attempts:
        return (stage.attempts[-1].reason or "")[:80]
    if stage.status in ("cached", "supplied"):
        return stage.key
    return ""


def stage_table(record: RunRecord) -> Table:
    status = f"waiting ({record.waiting})" if record.status == "running" and record.waiting else record.status
    table = Table(title=f"run {record.run_id}: {status}, {format_seconds(record.elapsed_s)}",
                  title_justify="left", expand=False)
    table.add_column("stage", no_wrap=True, min_width=7)
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("try", no_wrap=True, justify="right")
    table.add_column("elapsed", no_wrap=True, min_width=7, justify="right")
    table.add_column("metrics", min_width=24, max_width=48)  # wraps between metrics
    table.add_column("note", overflow="ellipsis", no_wrap=True, min_width=10, max_width=60)
    for stage in record.stages.values():
        table.add_row(
            stage.name,
            f"[{STYLES.get(stage.status, '')}]{stage.status}[/]",
            str(len(stage.attempts) or ""),
            format_seconds(stage.elapsed_s) if stage.status in TIMED_STATES else "",
            key_metrics(stage.metrics),
            stage_note(stage),
        )
    return table


class LiveTable:
    """A table that redraws itself twice a second while the controller blocks on a stage."""

    def __init__(self, console: Console):
        self.record: RunRecord | None = None
        self.live = Live(console=console, refresh_per_second=2, get_renderable=self._render)

    def _render(self):
        return stage_table(self.record) if self.record else ""

    def __call__(self, record: RunRecord) -> None:
        self.record = record

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)  # draws the final state once more and leaves it on screen


class LineProgress:
    """One line per stage transition, for logs that are not a terminal."""

    def __init__(self, console: Console):
        self.console = console
        self.seen: dict[str, tuple[str, int, str | None]] = {}

    def __call__(self, record: RunRecord) -> None:
        for stage in record.stages.values():
            now = (stage.status, len(stage.attempts),
                   stage.attempts[-1].queue if stage.attempts else None)
            if self.seen.get(stage.name) == now:
                continue
            self.seen[stage.name] = now
            if stage.status == "pending":
                continue
            parts = [time.strftime("%H:%M:%S"), f"{stage.name:9s}", stage.status]
            if stage.status == "running" and stage.attempts:
                attempt = stage.attempts[-1]
                parts.append(f"attempt {attempt.number}" + (f" (log {Path(attempt.log).name})" if attempt.log else ""))
                parts.append(attempt.queue or "")
            elif stage.status in ("succeeded", "failed", "cancelled"):
                parts.append(format_seconds(stage.elapsed_s))
                parts.append(key_metrics(stage.metrics, limit=5))
                if stage.attempts and (stage.status != "succeeded" or stage.attempts[-1].preemptions):
                    parts.append(stage.attempts[-1].reason or "")
            elif stage.status == "cached":
                parts.append(stage.key)
            self.console.print(" ".join(p for p in parts if p), highlight=False, soft_wrap=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def make_progress(console: Console):
    return LiveTable(console) if console.is_terminal else LineProgress(console)
