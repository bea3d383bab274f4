"""Progress bars for byte transfers (uploads, downloads), drawn with rich on stderr."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

#: Called with the number of bytes just transferred.
ProgressCallback = Callable[[int], None]


@contextlib.contextmanager
def transfer_progress(show: bool | None) -> Iterator[Callable[[str, int], ProgressCallback | None]]:
    """Yield ``task(label, total_bytes) -> callback`` drawing a rich progress bar on stderr.

    ``show=None`` shows it only when stderr is a terminal; False yields no-op tasks.
    """
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        yield lambda label, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
    ) as progress:

        def task(label: str, total: int) -> ProgressCallback:
            task_id = progress.add_task(label, total=total)
            return lambda n: progress.advance(task_id, n)

        yield task
