"""The upload panel: drop X-rays (PNG, JPEG, DICOM; several at once) and see what the model says.

Each file goes through ``predict.single.predict_file`` (the one path from file bytes to findings:
the same reading, preparation, forward pass, thresholds and Grad-CAM as 05 and ``cxr predict``)
and gets a card (``predict.result_html``): findings in words, probability bars against the run's
validation thresholds, the image as the model saw it and an overlay per called finding. An
unreadable file gets its one-line error in its card; the others are predicted. Above the cards,
the batch summary says whether the batch looks like the training data (``predict.shift``).

05_predict ends with ``show_upload_panel(predictor)``, which shows the panel only in an
interactive frontend (JupyterLab, Notebook, VS Code): headless runs (papermill under ``cxr run``,
``nbconvert --execute``) execute with stdin disallowed, and then nothing is shown, so reports stay
as they were. ``cxr app`` (Voilà) shows the panel unconditionally through ``predict.app_page``.
ipywidgets comes with the ``app`` extra; without it, ``show_upload_panel`` prints one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from cxr_helpers.predict.predictor import Predictor
from cxr_helpers.predict.result_html import STYLE, batch_html, image_result_html
from cxr_helpers.predict.single import batch_summary, predict_file
from cxr_helpers.progress import interactive_frontend

ACCEPT = ".png,.jpg,.jpeg,.dcm,.dicom,application/dicom,image/*"
NO_WIDGETS = "the upload panel needs ipywidgets: pip install 'cxr[app]' (then restart the kernel)"
# tornado's default websocket message limit, which a stock Jupyter server keeps: an upload (all files
# picked at once travel in one message) over it never reaches the kernel, so the panel states it.
JUPYTER_UPLOAD_MB = 10


def uploaded_files(value: Any) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` per file of a ``FileUpload.value``: ipywidgets 8's tuple of dicts with
    ``name`` and ``content`` (a memoryview), in upload order."""
    return [(str(f["name"]), bytes(f["content"])) for f in value or ()]


class UploadPanel:
    """The widgets and what happens on an upload.

    upload: the ``FileUpload`` (several files, PNG/JPEG/DICOM, DICOMs often lack an extension so
    any file is accepted); progress/status: an ``IntProgress`` and a line saying which file is being
    predicted; output: an ``HTML`` widget holding the batch summary and one card per image.
    ``widget`` is the ``VBox`` to display. ``results`` keeps the last batch's ``ImageResult``s.
    """

    def __init__(self, predictor: Predictor, reference: Any = None, show_thresholds: bool = True,
                 max_upload_mb: int = JUPYTER_UPLOAD_MB):
        import ipywidgets as w

        self.predictor = predictor
        self.reference = reference
        self.show_thresholds = show_thresholds
        self.results: list[Any] = []
        self.upload = w.FileUpload(accept=ACCEPT, multiple=True, description="Upload X-rays",
                                   button_style="primary", layout=w.Layout(width="auto"))
        self.progress = w.IntProgress(min=0, max=1, value=0, layout=w.Layout(visibility="hidden"))
        self.status = w.HTML(f"PNG, JPEG or DICOM; several files at once, up to {max_upload_mb} MB per upload "
                             "(the server's limit: a larger upload never arrives).")
        self.output = w.HTML(STYLE)
        self.widget = w.VBox([w.HBox([self.upload, self.progress]), self.status, self.output])
        self.upload.observe(self._on_upload, names="value")

    def _on_upload(self, change: dict[str, Any]) -> None:
        files = uploaded_files(change["new"])
        if files:
            self.predict(files)
            self.upload.value = ()  # frees the bytes; the same file can be uploaded again

    def predict(self, files: Sequence[tuple[str, bytes]]) -> list[Any]:
        """Predict ``(name, bytes)`` files one by one (progress bar + status line), then show the
        batch summary and the cards. A file that fails in any way is shown with its one-line error."""
        self.progress.max, self.progress.value = len(files), 0
        self.progress.layout.visibility = "visible"
        results = []
        for i, (name, data) in enumerate(files):
            self.status.value = f"Predicting {i + 1}/{len(files)}: {name} ..."
            results.append(self._predict_one(name, data))
            self.progress.value = i + 1
        self.results = results
        self.progress.layout.visibility = "hidden"
        self.status.value = f"Done: {len(files)} file(s). Upload more to replace them."
        n_failed = sum(not r.ok for r in results)
        summary = self._summary(results)
        cards = "".join(image_result_html(r, self.show_thresholds) for r in results)
        self.output.value = STYLE + batch_html(summary, len(results), n_failed) + cards
        return results

    def _predict_one(self, name: str, data: bytes) -> Any:
        try:
            return predict_file(self.predictor, data, name)
        except Exception as exc:  # a widget callback's exception would vanish: show it on the card
            return _FailedResult(name, f"could not be predicted: {type(exc).__name__}: {_first_line(exc)}")

    def _summary(self, results: list[Any]) -> list[str]:
        ok = [r for r in results if r.ok]
        if not ok:
            return []
        try:
            return list(batch_summary(ok, self.reference).sentences)
        except Exception as exc:  # the cards are still worth showing
            return [f"The batch summary failed: {type(exc).__name__}: {_first_line(exc)}"]


class _FailedResult:
    """An ``ImageResult`` stand-in for a file whose prediction raised: name, ok=False, error."""

    ok = False

    def __init__(self, name: str, error: str):
        self.name, self.error = name, error


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def upload_panel(predictor: Predictor, max_upload_mb: int = JUPYTER_UPLOAD_MB) -> UploadPanel:
    """The panel for ``predictor``, its batch summaries against the run's reference statistics
    (``Predictor.reference``; None for runs trained before they were saved, which the summary
    says). Thresholds are drawn on the bars unless the run decides by arg-max. ``max_upload_mb``:
    the server's websocket message limit, stated under the button."""
    return UploadPanel(predictor, predictor.reference, show_thresholds=predictor.rules.rule != "argmax",
                       max_upload_mb=max_upload_mb)


def show_upload_panel(predictor: Predictor, interactive: Optional[bool] = None) -> Optional[UploadPanel]:
    """05's last cell: display the upload panel in an interactive frontend; in a headless run
    (``interactive_frontend()`` False, or ``interactive=False``) do nothing and return None."""
    if not (interactive_frontend() if interactive is None else interactive):
        return None
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        print(NO_WIDGETS)
        return None
    from IPython.display import display

    panel = upload_panel(predictor)
    display(panel.widget)
    return panel
