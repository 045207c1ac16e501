"""Progress of long loops: a tqdm bar on a terminal, periodic plain log lines everywhere else.

Why not tqdm alone: redirected into a file (a sweep job's stderr, a SLURM log) tqdm's carriage returns and the cursor
codes of nested bars fill the file with unreadable lines, and none of it reaches the job's own log. Here:

- on a terminal (stderr is a TTY) the bar is tqdm's; when a bar that stays (``leave=True``) closes, its final state
  (count, elapsed time, rate) is also logged, so the job's log holds one timed line per stage;
- otherwise every refresh becomes one line of the ``qarvd.progress`` logger, at most every :data:`LINE_INTERVAL_S`
  seconds (plus the first and the final line of a bar that stays), without control characters; transient bars
  (``leave=False``, e.g. one layer's iterations) are silent unless they run longer than that interval.

Use :func:`progress_bar` wherever tqdm would be used; it takes tqdm's arguments and returns a tqdm object.
"""
from __future__ import annotations

import logging
import re
import sys

from tqdm import tqdm

log = logging.getLogger("qarvd.progress")

LINE_INTERVAL_S = 30.0  # seconds between two plain progress lines of one bar (not on a terminal)
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"  # a plain line: no bar
_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|[\r\n]")


class _LogLines:
    """A file for tqdm that turns each refresh into a log line (control characters removed, blanks dropped)."""

    def write(self, s: str) -> None:
        line = _CONTROL.sub("", s).strip()
        if line:
            log.info(line)

    def flush(self) -> None:
        pass


class _TerminalBar(tqdm):
    """tqdm on a terminal that logs its final state when a bar that stays closes (the job log's stage line)."""

    def close(self) -> None:
        if not self.disable and self.leave:
            log.info(self.format_meter(**{**self.format_dict, "bar_format": LINE_FORMAT}))
        super().close()


def on_terminal() -> bool:
    return sys.stderr.isatty()


def progress_bar(iterable=None, desc: str = "", **kwargs) -> tqdm:
    """A progress bar over ``iterable`` (or ``total=``), with tqdm's arguments: a bar on a terminal, log lines else."""
    if on_terminal():
        return _TerminalBar(iterable, desc=desc, **kwargs)
    leave = kwargs.get("leave", True)
    kwargs.update(file=_LogLines(), bar_format=LINE_FORMAT, mininterval=LINE_INTERVAL_S, maxinterval=LINE_INTERVAL_S,
                  ascii=True, dynamic_ncols=False)
    if not leave:
        kwargs["delay"] = LINE_INTERVAL_S
    return tqdm(iterable, desc=desc, **kwargs)
