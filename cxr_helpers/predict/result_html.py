"""What the upload widget and ``cxr app`` show, as HTML: one card per uploaded image, the batch
verdict and the model's description.

Plain HTML strings (no ipywidgets, no matplotlib), so the same markup serves JupyterLab, the Voilà
page and the tests. Images are embedded as PNG data URIs, scaled down to ``MAX_SIDE`` pixels (a
30 MB DICOM must not become a 30 MB page). Probability bars are CSS: the bar is the probability,
the black tick the run's validation threshold, red bars are called findings.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
from PIL import Image

MAX_SIDE = 320

STYLE = """<style>
.cxr-app { font: 14px/1.45 system-ui, sans-serif; max-width: 1100px; }
.cxr-note { background: #fff4e5; border-left: 4px solid #e08a00; padding: 6px 10px; margin: 6px 0; }
.cxr-synthetic { background: #fde8e8; border-left: 4px solid #c0392b; padding: 6px 10px; margin: 6px 0; }
.cxr-result { border: 1px solid #ccd; border-radius: 6px; padding: 8px 12px; margin: 10px 0; }
.cxr-result h3 { margin: 2px 0 6px; font-size: 15px; }
.cxr-error { color: #a11; font-weight: 600; }
.cxr-warnings { color: #8a5a00; margin: 4px 0; }
.cxr-findings { font-weight: 600; }
.cxr-bars { border-collapse: collapse; margin: 6px 0; }
.cxr-bars td { padding: 1px 6px; font-size: 13px; }
.cxr-bar { position: relative; width: 220px; height: 12px; background: #eef0f4; }
.cxr-bar .fill { position: absolute; left: 0; top: 0; bottom: 0; background: #8aa2c8; }
.cxr-bar .fill.called { background: #d0342c; }
.cxr-bar .tick { position: absolute; top: -3px; bottom: -3px; width: 2px; background: #000; }
.cxr-images { display: flex; flex-wrap: wrap; gap: 8px; }
.cxr-images figure { margin: 0; text-align: center; font-size: 12px; }
.cxr-images img { width: 224px; height: auto; }
.cxr-batch { background: #eef3fb; border-radius: 6px; padding: 6px 12px; margin: 10px 0; }
</style>"""


def png_data_uri(image: np.ndarray, max_side: int = MAX_SIDE) -> str:
    """``data:image/png;base64,...`` of a uint8 image, (H, W) grey or (H, W, 3) RGB, scaled down so
    its longer side is at most ``max_side`` pixels (aspect kept; never scaled up)."""
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if max(pil.size) > max_side:
        pil.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _e(text: Any) -> str:
    return html.escape(str(text))


def probability_bars_html(
    probabilities: Mapping[str, float], thresholds: Mapping[str, float], decisions: Mapping[str, bool],
    show_thresholds: bool = True,
) -> str:
    """A table, one row per class: name, bar of the probability in [0, 1] (red when called), a tick
    at the class's threshold (left out under the arg-max rule, where no threshold decides), the
    probability and the threshold as numbers."""
    rows = []
    for c, p in probabilities.items():
        called = bool(decisions.get(c, False))
        t = thresholds.get(c)
        tick = (f"<span class='tick' style='left:{100 * min(float(t), 1.0):.1f}%'></span>"
                if show_thresholds and t is not None else "")
        thr = f"threshold {float(t):.2f}" if show_thresholds and t is not None else ""
        rows.append(
            f"<tr class='{'called' if called else 'not-called'}' data-class='{_e(c)}'><td>{_e(c)}</td>"
            f"<td><div class='cxr-bar'><span class='fill{' called' if called else ''}' "
            f"style='width:{100 * float(p):.1f}%'></span>{tick}</div></td>"
            f"<td>{float(p):.3f}</td><td>{thr}</td><td>{'<b>called</b>' if called else ''}</td></tr>"
        )
    return "<table class='cxr-bars'>" + "".join(rows) + "</table>"


def image_result_html(result: Any, show_thresholds: bool = True) -> str:
    """One image's card from a ``predict.single.ImageResult``: its name; for an unreadable file the
    one-line error and nothing else; otherwise the quality warnings, the findings in plain words
    (and notes such as why Grad-CAM was skipped), the probability bars, the image as the model saw
    it and one Grad-CAM overlay per called finding (for the top class when none is called, said so)."""
    name = _e(result.name)
    if not result.ok:
        error = str(result.error)
        error = error if error.startswith(str(result.name)) else f"{result.name}: {error}"
        return (f"<div class='cxr-result failed' data-name='{name}'><h3>{name}</h3>"
                f"<p class='cxr-error'>{_e(error)}</p></div>")
    parts = [f"<div class='cxr-result' data-name='{name}'><h3>{name}</h3>"]
    if result.warnings:
        parts.append("<ul class='cxr-warnings'>" + "".join(f"<li>{_e(w)}</li>" for w in result.warnings) + "</ul>")
    parts.append(f"<p class='cxr-findings'>{_e(result.findings_text)}</p>")
    parts += [f"<p class='cxr-notes'>{_e(n)}</p>" for n in getattr(result, "notes", [])]
    parts.append(probability_bars_html(result.probabilities, result.thresholds, result.decisions, show_thresholds))
    figures = [f"<figure class='cxr-input'><img alt='{name}' src='{png_data_uri(result.image)}'>"
               "<figcaption>image</figcaption></figure>"]
    for finding, overlay in result.overlays.items():
        caption = (f"{finding}: where the evidence lies" if result.decisions.get(finding)
                   else f"{finding} (highest score, not called): where the model looks")
        figures.append(f"<figure class='cxr-overlay' data-finding='{_e(finding)}'><img alt='{_e(finding)} overlay' "
                       f"src='{png_data_uri(overlay)}'><figcaption>{_e(caption)}</figcaption></figure>")
    parts.append("<div class='cxr-images'>" + "".join(figures) + "</div></div>")
    return "".join(parts)


def batch_html(sentences: Sequence[str], n_images: int, n_failed: int) -> str:
    """The batch verdict: how many images were predicted and could not be read, then the batch
    summary's sentences (shift check and findings across the batch)."""
    head = f"<b>{n_images - n_failed} of {n_images} image(s) predicted</b>"
    if n_failed:
        head += f", <span class='cxr-error'>{n_failed} could not be read (see below)</span>"
    body = "".join(f"<p>{_e(s)}</p>" for s in sentences)
    return f"<div class='cxr-batch'><p>{head}.</p>{body}</div>"


def model_html(
    arch: str, task: str, classes: Sequence[str], trained_on: str, rule: str, threshold_source: str,
    research_note: str, synthetic: bool = False, warnings: Optional[Sequence[str]] = None,
) -> str:
    """The page head: research-use disclaimer first, then which model, what it was trained on and
    how its scores become findings (and the predictor's warnings, one line each)."""
    parts = [STYLE, f"<div class='cxr-note'><b>{_e(research_note)}</b></div>"]
    if synthetic:
        parts.append("<div class='cxr-synthetic'><b>Synthetic data:</b> this model was trained on generated "
                     "CXR-like images; its scores on real radiographs mean nothing clinically.</div>")
    parts.append(
        "<ul class='cxr-model'>"
        f"<li>Model: <code>{_e(arch)}</code>, task {_e(task)}, classes: {_e(', '.join(classes))}</li>"
        f"<li>Training data: {_e(trained_on)}</li>"
        f"<li>{_e(rule)}</li><li>Thresholds: {_e(threshold_source)}</li></ul>"
    )
    parts += [f"<p class='cxr-warnings'>Warning: {_e(w)}</p>" for w in warnings or []]
    return "".join(parts)
