"""Progress bars that read well where they end up: who is looking (a person at JupyterLab, or a
headless run whose notebook becomes a report) decides between widget and text bars.

A widget bar is stored in an executed notebook at its first state, so a report made by papermill
shows "0%" for work that finished; a text bar is stored at its last state. ``tqdm.auto`` picks
widget bars whenever ipywidgets is installed (the ``app`` extra), so headless runs switch it to text.
"""

from __future__ import annotations


def interactive_frontend() -> bool:
    """True when the code runs in a kernel whose current request allows stdin: a person at
    JupyterLab/Notebook/VS Code. nbclient (papermill, ``nbconvert --execute``, Voilà) always sends
    ``allow_stdin=False``; plain Python has no kernel. Both give False."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        return False
    try:
        parent = kernel.get_parent("shell")
    except TypeError:  # ipykernel < 6 took no channel
        parent = kernel.get_parent()
    return bool((parent or {}).get("content", {}).get("allow_stdin", False))


def text_bars_when_headless() -> bool:
    """In a headless kernel, make ``tqdm.auto`` (imported from now on, or looked up at call time)
    draw text bars; returns True when it did. Call it before importing the stage modules."""
    if interactive_frontend():
        return False
    import tqdm.auto
    import tqdm.std

    tqdm.auto.tqdm = tqdm.std.tqdm
    tqdm.auto.trange = tqdm.std.trange
    return True
