"""Executed notebook -> one self-contained HTML file a reviewer opens from disk.

Images are already base64 in the notebook outputs; attachments are embedded too; nothing is
loaded from the network (the template's CDN scripts and the widget state are left out). Code cells
are hidden behind a toggle button by default (readers want results first) or left out
entirely with ``hide_code``.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat

from cxr_helpers.paths import write_text

_TOGGLE = """
<style>
body.cxr-code-hidden .jp-CodeCell .jp-Cell-inputWrapper { display: none; }
#cxr-toggle { position: fixed; top: 8px; right: 12px; z-index: 1000; padding: 4px 10px;
  font: 13px sans-serif; border: 1px solid #888; border-radius: 4px; background: #f7f7f7; cursor: pointer; }
.cxr-banner { font: 13px sans-serif; padding: 6px 12px; background: #eef3fb; border-bottom: 1px solid #ccd; }
</style>
<script>
document.addEventListener("DOMContentLoaded", function () {
  document.body.classList.add("cxr-code-hidden");
  var b = document.createElement("button");
  b.id = "cxr-toggle"; b.textContent = "Show code";
  b.onclick = function () {
    var hidden = document.body.classList.toggle("cxr-code-hidden");
    b.textContent = hidden ? "Show code" : "Hide code";
  };
  document.body.appendChild(b);
});
</script>
"""


def notebook_to_html(ipynb: str | os.PathLike, html: str | os.PathLike, hide_code: bool = False,
                     banner: str | None = None) -> Path:
    """Render ``ipynb`` to ``html`` (lab template, images embedded) and return the html path."""
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(ipynb), as_version=4)
    nb.metadata.pop("widgets", None)  # tqdm widget state: nbconvert would load the widget manager from unpkg.com
    exporter = HTMLExporter(template_name="lab")
    exporter.embed_images = True
    if hide_code:
        exporter.exclude_input = True
        exporter.exclude_input_prompt = True
        exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nb)
    body = _without_cdn_scripts(body, exporter)
    if not hide_code:
        head_end = body.find("</head>")
        body = body[:head_end] + _TOGGLE + body[head_end:]
    if banner:
        at = body.find(">", body.find("<body")) + 1
        body = body[:at] + f'<div class="cxr-banner">{banner}</div>' + body[at:]
    return write_text(html, body)


def _without_cdn_scripts(body: str, exporter) -> str:
    """The lab template loads require.js and MathJax from cdnjs: offline a console error per report,
    online each opened report is announced to a third party. Reports need neither (images embedded,
    widget state dropped, no LaTeX in the notebooks)."""
    for url in (exporter.require_js_url, exporter.mathjax_url):
        body = body.replace(f'<script src="{url}"></script>', "").replace(f'<script src="{url}"> </script>', "")
    return body
