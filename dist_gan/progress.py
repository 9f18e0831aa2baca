"""The one rich progress bar every long command shows (stderr, so stdout stays clean)."""

from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def progress_bar(*extra: ProgressColumn, console: Optional[Console] = None, enabled: bool = True,
                 transient: bool = False, count: bool = True) -> Progress:
    """Description, bar, done/total (unless ``count`` is off), any ``extra`` columns, elapsed and remaining time.

    Disabled (draws nothing, costs nothing) when ``enabled`` is false or stderr is not
    a terminal, so logs and CI output are not filled with redraws.
    """
    console = console or Console(stderr=True, highlight=False)
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), *([MofNCompleteColumn()] if count else []), *extra,
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, disable=not (enabled and console.is_terminal), transient=transient,
    )
