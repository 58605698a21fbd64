"""Names vulture cannot see used: read by frameworks or by tests only (``make lint`` passes this file
to vulture with ``cxr_helpers/`` and the notebooks' code, so names notebooks use need no entry).

Each line is an attribute access vulture counts as a use; keep it short and say why.
"""

# ruff: noqa
# torch calls nn.Module.forward through __call__
_.forward
# nbconvert / pydicom / torch settings assigned as attributes and read by those libraries
_.embed_images
_.exclude_input
_.exclude_input_prompt
_.exclude_output_prompt
_.SOPClassUID
_.SOPInstanceUID
_.Modality
_.PatientID
_.BitsAllocated
_.HighBit
_.PixelRepresentation
_.PixelData
_.benchmark
# pytorch-grad-cam's CAM object: dropped on exit so the model outputs can be freed
_.outputs
# tests/conftest.py: where the real data beside the checkout lives
_.shared_data_dir
# result records users read in notebooks (PredictionResult.raw_probs, CalibrationRecord.fitted_on)
_.raw_probs
_.fitted_on
# predict.single / predict.shift records read by the widget, the app, tests and benchmarks
_.available
_.n_unreadable
# predict/app_page.show_app: called by the notebook run/app_cmd.py writes for Voilà
_.show_app
# ipywidgets layout / Voilà (traitlets Config) settings assigned as attributes and read by those libraries
_.visibility
_.ip
_.port_retries
_.log_level
_.tornado_settings
_.template
_.strip_sources
_.show_tracebacks
# data.imageio.read_header: the header-only reader (no pixels), public API exercised by tests/test_dicom_headers.py
_.read_header
# train/mixing.BatchMix: the last batch's lam and kind (mixup/cutmix), read by tests/test_mixing.py
_.last_lam
_.last_kind
