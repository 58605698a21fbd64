# Source me on the GPU machine, in the repo root:  source scripts/gpu/install_on_device.sh
# Installs the carried wheels (.whl/, from scripts/gpu/fetch_wheels.sh) into /tmp/site without
# touching the image's own packages, and puts them and the repo on the paths:
# - PYTHONPATH: /tmp/site first, then the repo (cxr_helpers; no `pip install -e .`, which would
#   need setuptools from an index the machine cannot reach). The notebook kernel inherits it.
# - JUPYTER_PATH: /tmp/site/share/jupyter, where nbconvert's HTML templates land with --target
#   (without it the report export fails: "No template sub-directory with name 'lab'").
# - PATH: /tmp/site/bin (papermill, jupyter) and a `cxr` function = python3 -m cxr_helpers.run.cli.
# No kernel registration: `cxr run` writes its own kernelspec for sys.executable
# (cxr_helpers/run/runner.py kernel_for_this_python) and puts it first on JUPYTER_PATH.
CXR_SITE=${CXR_SITE:-/tmp/site}
CXR_PY=${CXR_PY:-python3}
if ! ls .whl/*.whl >/dev/null 2>&1; then
  echo "install_on_device: no .whl/*.whl here; run scripts/gpu/fetch_wheels.sh locally and carry .whl" >&2
  return 1 2>/dev/null || exit 1
fi
"$CXR_PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$CXR_SITE" .whl/*.whl \
  || { echo "install_on_device: pip install of .whl/*.whl failed" >&2; return 1 2>/dev/null || exit 1; }
export PYTHONPATH="$CXR_SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export JUPYTER_PATH="$CXR_SITE/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}"
export PATH="$CXR_SITE/bin:$PATH"
export PYTHONUNBUFFERED=1
cxr() { "$CXR_PY" -m cxr_helpers.run.cli "$@"; }
"$CXR_PY" -c "import papermill, nbconvert, nbclient, ipykernel, pytorch_grad_cam, pydicom, cxr_helpers" \
  || { echo "install_on_device: an import failed after install (see above)" >&2; return 1 2>/dev/null || exit 1; }
