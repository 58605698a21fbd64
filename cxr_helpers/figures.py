"""The one palette and the one way notebooks show a figure.

Every stage draws classes, the synthetic confounder device and ground-truth lesions in the same
colours: class ``k`` is ``class_color(k)`` everywhere (01's samples, the synthetic grid, 04's
galleries), the device is cyan and a true lesion outline is lime. Notebooks show a figure with
``show(fig)``: it is displayed once and then closed, so it is not drawn a second time at cell end.
This module imports nothing from the package (it sits at the bottom of the layers).
"""

from __future__ import annotations

from typing import Any, Optional

#: Distinct colours for classes, in order (Sasha Trubetskoy's list; cyan is kept for the device).
CLASS_COLORS: list[str] = [
    "#e6194b",
    "#3cb44b",
    "#ffe119",
    "#4363d8",
    "#f58231",
    "#f032e6",
    "#911eb4",
    "#9a6324",
    "#bfef45",
    "#fabed4",
    "#469990",
    "#dcbeff",
    "#fffac8",
    "#800000",
    "#aaffc3",
    "#808000",
]
#: The synthetic confounder device (a marker burned into the film), in every figure.
DEVICE_COLOR = "#42d4f4"
#: Ground-truth lesion outlines and boxes (04's maps, where one class is shown at a time).
TRUTH_COLOR = "lime"


def class_color(k: int) -> str:
    """The colour of class index ``k`` (0-based, wraps around after ``len(CLASS_COLORS)``)."""
    return CLASS_COLORS[int(k) % len(CLASS_COLORS)]


def show(fig: Optional[Any]) -> None:
    """Display a matplotlib figure in the notebook, then close it; ``None`` is skipped.

    The one way notebooks show a figure: without the close, Jupyter would draw it a second time at
    the end of the cell and keep it in memory.
    """
    if fig is None:
        return
    import matplotlib.pyplot as plt
    from IPython.display import display

    display(fig)
    plt.close(fig)
