"""One notebook executed by papermill, surviving the kernel-start race of parallel runs.

jupyter_client picks a kernel's ports by binding free ones, closes them and hands them to the
kernel, which binds them again; another kernel started in that window (``cxr sweep --jobs N``,
parallel test workers) can take one first, and the new kernel dies with "Address already in use"
before any cell ran (jupyter/jupyter_client#154). Such a start is safe to repeat: nothing of the
notebook executed. Any other failure, a cell's error above all, is raised at once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

# jupyter_client's messages for a kernel that never answered: died while starting, or silent.
KERNEL_START_FAILURES = ("Kernel died before replying to kernel_info", "Kernel didn't respond in")
START_TRIES = 3


def is_kernel_start_failure(exc: BaseException) -> bool:
    """True for jupyter_client's "the kernel never started" errors (no cell can have run)."""
    return isinstance(exc, (RuntimeError, TimeoutError)) and any(m in str(exc) for m in KERNEL_START_FAILURES)


def execute_notebook(src: Path, dst: Path, parameters: dict[str, Any], kernel_name: str, cwd: Path,
                     progress_bar: bool = False, log: Optional[Callable[[str], Any]] = None,
                     tries: int = START_TRIES, pause_s: float = 1.0) -> None:
    """``papermill.execute_notebook(src -> dst)`` with cell outputs saved as they come; a kernel that
    fails to start is started again, up to ``tries`` times in all, after a short randomised pause
    (so two colliding starts do not collide again), each retry said in one ``log`` line."""
    import papermill as pm  # heavy (nbclient, jupyter_client): imported by the commands that run notebooks

    for attempt in range(1, tries + 1):
        try:
            pm.execute_notebook(str(src), str(dst), parameters=parameters, kernel_name=kernel_name, cwd=str(cwd),
                                progress_bar=progress_bar, log_output=False, request_save_on_cell_execute=True)
            return
        except Exception as exc:
            if attempt == tries or not is_kernel_start_failure(exc):
                raise
            if log is not None:
                why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                log(f"    {Path(src).stem}: the notebook kernel did not start ({why}); starting it again "
                    f"(try {attempt + 1} of {tries})")
            time.sleep(pause_s * (attempt + random.random()))
