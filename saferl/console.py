"""What `python -m saferl.train` prints: the run's progress, its validations and its errors.

A verl run on Ray prints a few thousand lines a user cannot act on: every process's config dump, engine
availability warnings, INFO records, data-loading bars, and verl's console logger's one line of ~150 metrics
a step. The progress and the errors were buried under them (issue 19). So the driver's stdout and stderr
(which is where Ray forwards every worker's output, `ray/_private/worker.py` `print_to_stdstream`, read at
each write) pass through a filter:

- everything, as printed, goes to the run's log, `trainer.default_local_dir/logs/console.log`; nothing is lost;
- the console gets saferl's own lines, one line a step (`saferl: step N/T: score ...`, written when verl logs
  step N, so it is step N's score), one line a validation (`saferl.run_summary`'s figures, and its
  format-collapse alarm when it fires), warnings and errors (records at WARNING or above, tracebacks, Ray's
  raylet messages), and saferl's own progress bars;
- `saferl.console=full` shows everything as well.

The filter decides per line (`ConsoleFilter.feed`, pure but for the validation reader it is given), so the
rules are unit-tested on lines a real run printed.
"""

from __future__ import annotations

import io
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

CONSOLE_MODES = ("quiet", "full")
LOG_FILE = Path("logs") / "console.log"  # under trainer.default_local_dir

# A Ray-forwarded line: "(TaskRunnerV1 pid=2474) message", "(pid=2913) ...", "(raylet) ..."; colour codes
# around the prefix, and Ray's dedup suffix after the message.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RAY_PREFIX = re.compile(r"^\((?P<source>[^)]*?(?:pid=\w+|raylet|autoscaler)[^)]*)\) ?")
_RAY_DEDUP = re.compile(r" \[repeated \d+x across cluster\].*$")
# A logging record's level, in the formats the stack prints: Hydra's "[time][name][LEVEL] - ", Python's
# default "LEVEL:name:", transfer_queue's "time - LEVEL - name - ", Ray's "time\tLEVEL file.py:N -- ".
_HYDRA_RECORD = re.compile(r"^\[[^\]]*\]\[(?P<name>[^\]]+)\]\[(?P<level>[A-Z]+)\] - ")
_LEVEL = re.compile(r"(?:^|[\s\[|,-])(?P<level>DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)(?=[\]\s:|-])")
_LEVEL_WINDOW = 60  # a level token further in is part of a message, not a record's level
_SHOWN_LEVELS = ("WARNING", "WARN", "ERROR", "CRITICAL", "FATAL")
# Python's `warnings` output: "path.py:123: UserWarning: message", then the source line, indented.
_PY_WARNING = re.compile(r"^\S+:\d+: [A-Za-z]*Warning: ")
_TRACEBACK = (
    "Traceback (most recent call last):",
    "During handling of the above exception",
    "The above exception was the direct cause",
)
# verl's console logger (verl/utils/tracking.py `LocalLogger`): "step:N - key:value - key:value ...".
_STEP = re.compile(r"^step:(?P<step>\d+) - ")
_NUMBER = re.compile(r"(?:np\.\w+\()?(?P<value>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)\)?$")
# Progress bars the console keeps: saferl's own, by their tqdm description.
SHOWN_BARS = ("warm start (SFT)",)
# Warnings at WARNING level that carry nothing a user can act on: to the log only. Each says why.
KNOWN_NOISE: tuple[tuple[str, str], ...] = (
    (
        "should not exceed total physical CPU cores",
        "transfer_queue caps its torch threads at the cores it finds; saferl sets TQ_NUM_THREADS to fit",
    ),
    (
        "Token authentication is enabled for this Ray cluster",
        "Ray's local cluster on loopback; its token is written to ~/.ray",
    ),
    (
        "]: heavy ",
        "transfer_queue's notice of a request over 5 s (utils/common.py `log_heavy_operation`), twice (two "
        "handlers): on a busy CPU machine it fires per put or get; the step line's s/step says the same",
    ),
    (
        "`torch_dtype` is deprecated! Use `dtype` instead!",
        "transformers' deprecation notice for how verl's workers load the model, not the user's config",
    ),
    (
        "No supported accelerator detected",
        "verl's platform probe in a CPU process that never uses an accelerator",
    ),
)
# The step line's figures, in order: (metric, label, as a percentage).
STEP_FIGURES: tuple[tuple[str, str, bool], ...] = (
    ("critic/score/mean", "score", False),
    ("rollout/reflect_rate", "reflected", True),
)
VALIDATION_PREFIX = "val-core/"  # a step whose metrics carry a validation


@dataclass(frozen=True)
class Line:
    """One printed line: which process printed it ("" for the driver) and what it says."""

    source: str
    message: str


def parse(raw: str) -> Line:
    """Strip colour codes, Ray's process prefix and its dedup suffix."""
    text = _ANSI.sub("", raw).strip("\r\n")  # a progress bar's redraw starts with "\r"
    match = _RAY_PREFIX.match(text)
    if not match:
        return Line("", text)
    return Line(match["source"], _RAY_DEDUP.sub("", text[match.end() :]))


def record_level(message: str) -> tuple[str | None, str | None]:
    """(logger name or None, level) of a logging record, or (None, None) for a plain print."""
    hydra = _HYDRA_RECORD.match(message)
    if hydra:
        return hydra["name"], hydra["level"]
    level = _LEVEL.search(message[:_LEVEL_WINDOW])
    return None, level["level"] if level else None


def step_metrics(message: str) -> tuple[int, dict[str, float]] | None:
    """verl's console logger line as (step, numeric metrics); None for any other line."""
    match = _STEP.match(message)
    if not match:
        return None
    metrics: dict[str, float] = {}
    for item in message[match.end() :].split(" - "):
        key, sep, value = item.partition(":")
        number = _NUMBER.match(value.strip()) if sep else None
        if number:
            metrics[key.strip()] = float(number["value"])
    return int(match["step"]), metrics


def step_line(step: int, total: int | None, metrics: dict[str, float], seconds_left: float | None) -> str:
    """The console's line for a finished step: step N's own figures."""
    head = f"saferl: step {step}/{total}" if total else f"saferl: step {step}"
    parts = []
    for key, label, percent in STEP_FIGURES:
        if key in metrics:
            parts.append(f"{label} {100 * metrics[key]:.0f}%" if percent else f"{label} {metrics[key]:.2f}")
    if "timing_s/step" in metrics:
        parts.append(f"{metrics['timing_s/step']:.1f} s/step")
    if seconds_left is not None:
        parts.append(f"~{_duration(seconds_left)} left")
    return f"{head}: " + ", ".join(parts) if parts else head


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class ConsoleFilter:
    """Decides, line by line, what the console shows. `validation_lines(step)` gives the lines to show
    for the validation logged at `step` (read from the run directory by the caller).

    The time left is the wall clock's rate since the first step this launch logged, validations and
    checkpoints included (verl's `timing_s/step` leaves the validation out, and on a busy machine a
    step's own time says little about the next)."""

    def __init__(
        self,
        *,
        total_steps: int | None,
        validation_lines: Callable[[int], list[str]],
        show_all: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_steps = total_steps
        self.validation_lines = validation_lines
        self.show_all = show_all
        self.clock = clock
        self._shown: dict[str, bool] = {}  # per process: whether its last line was shown
        self._in_traceback: dict[str, bool] = {}
        self._first: tuple[int, float] | None = None  # (step, when) of the first step line

    def feed(self, raw: str) -> list[str]:
        """The lines to print for one printed line (as printed, rewritten, or none)."""
        line = parse(raw)
        if self.show_all:
            return [raw]
        message, source = line.message, line.source
        step = step_metrics(message)
        if step is not None:
            self._shown[source] = False
            return self._step(*step)
        shown = self._decide(line)
        self._shown[source] = shown
        return [raw] if shown else []

    def _decide(self, line: Line) -> bool:
        message, source = line.message, line.source
        if any(message.startswith(marker) for marker in _TRACEBACK):
            self._in_traceback[source] = True
            return True
        if self._in_traceback.get(source):
            if message[:1].isspace() or not message:
                return True
            self._in_traceback[source] = False  # the exception's own line ends the traceback
            return True
        if message[:1].isspace() and message.strip():
            return self._shown.get(source, False)  # a continuation: as its first line was
        if source.startswith(("raylet", "autoscaler")):
            return True
        if message.startswith("saferl:"):
            return True
        if message.startswith(SHOWN_BARS):
            return True
        if _PY_WARNING.match(message):
            return False
        name, level = record_level(message)
        if name is not None and (name == "saferl" or name.startswith("saferl.")) and not source:
            return level not in ("DEBUG",)
        if level in _SHOWN_LEVELS:
            return not any(pattern in message for pattern, _ in KNOWN_NOISE)
        return False

    def _step(self, step: int, metrics: dict[str, float]) -> list[str]:
        lines = []
        left, now = None, self.clock()
        if step > 0 and self._first is None:
            self._first = (step, now)
        elif step > 0 and self._first is not None and self.total_steps and step > self._first[0]:
            per_step = (now - self._first[1]) / (step - self._first[0])
            left = max(self.total_steps - step, 0) * per_step
        if step > 0:
            lines.append(step_line(step, self.total_steps, metrics, left))
        if any(key.startswith(VALIDATION_PREFIX) for key in metrics):
            lines.extend(self.validation_lines(step))
        return lines


class FilteredStream(io.TextIOBase):
    """A text stream that logs every line to `log` and writes what `console_filter` keeps to `console`.

    Lines end at a newline or at the carriage return that starts a progress bar's next redraw; a partial
    line waits for its end (so a kept bar is shown one redraw late)."""

    def __init__(self, console: TextIO, log: TextIO, console_filter: ConsoleFilter) -> None:
        super().__init__()
        self.console, self.log, self.filter = console, log, console_filter
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        while True:
            cut = min(
                (i for i in (self._pending.find("\n"), self._pending.find("\r", 1)) if i >= 0), default=-1
            )
            if cut < 0:
                break
            end = cut + 1 if self._pending[cut] == "\n" else cut
            self._emit(self._pending[:end])
            self._pending = self._pending[end:]
        return len(text)

    def _emit(self, segment: str) -> None:
        self.log.write(_ANSI.sub("", segment).lstrip("\r").rstrip("\n") + "\n")
        shown_any = False
        for shown in self.filter.feed(segment):  # the segment as printed, or a line of saferl's
            self.console.write(shown if shown is segment else shown + "\n")
            shown_any = True
        if shown_any:
            # a kept line reaches a pipe or a SLURM log now, not when a block buffer fills (Ray and
            # print() do not flush): the few lines kept are what the user is waiting for
            self.console.flush()

    def flush(self) -> None:
        if self._pending and not self._pending.startswith("\r"):
            self._emit(self._pending)
            self._pending = ""
        self.log.flush()
        self.console.flush()

    def isatty(self) -> bool:
        return self.console.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.console, "encoding", "utf-8")

    def fileno(self) -> int:
        return self.console.fileno()


@dataclass
class Console:
    """The open console of one launch: `say` prints past the filter (and to the log)."""

    stdout: TextIO
    log: TextIO

    def say(self, lines: Sequence[str]) -> None:
        text = "\n".join(lines) + "\n"
        self.log.write(text)
        self.log.flush()
        self.stdout.write(text)
        self.stdout.flush()


@contextmanager
def filtered_console(
    run_dir: Path, mode: str, *, total_steps: int | None, validation_lines: Callable[[int], list[str]]
) -> Iterator[Console]:
    """Route this process's stdout, stderr and logging handlers through the filter for the block."""
    if mode not in CONSOLE_MODES:
        raise ValueError(f"saferl.console={mode!r}: must be one of {CONSOLE_MODES}")
    path = run_dir / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    real_out, real_err = sys.stdout, sys.stderr
    with path.open("a", encoding="utf-8") as log:
        log.write(f"=== saferl.train launch at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
        console_filter = ConsoleFilter(
            total_steps=total_steps, validation_lines=validation_lines, show_all=mode == "full"
        )
        out, err = (
            FilteredStream(real_out, log, console_filter),
            FilteredStream(real_err, log, console_filter),
        )
        handlers = _stream_handlers(real_out, real_err)
        sys.stdout, sys.stderr = out, err
        for handler, stream in handlers:
            handler.setStream(out if stream is real_out else err)
        try:
            yield Console(real_out, log)
        finally:
            out.flush()
            err.flush()
            sys.stdout, sys.stderr = real_out, real_err
            for handler, stream in handlers:
                handler.setStream(stream)


def _stream_handlers(*streams: TextIO) -> list[tuple[logging.StreamHandler, TextIO]]:
    """Logging handlers (Hydra's console handler among them) that write to one of `streams`: they hold
    the stream they were made with, so swapping sys.stderr alone would not reach them."""
    found = []
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            is_console = isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            )
            if is_console and any(handler.stream is stream for stream in streams):
                found.append((handler, handler.stream))
    return found
