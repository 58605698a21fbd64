#!/usr/bin/env bash
# Download into .whl/ the wheels the GPU machine's image lacks for `cxr run` and the tests
# (papermill, nbconvert, nbclient, ipykernel, grad-cam, pydicom and what they need), for
# CPython 3.12 on x86-64 Linux, pinned to constraints.txt. Run here, in the repo root, before a
# device call that names ".whl" in carry. Ends with a closure check: every Requires-Dist of every
# wheel is met by another wheel or by the GPU image (scripts/gpu/wheel_closure.py).
#
#   bash scripts/gpu/fetch_wheels.sh          # ~8 MB, no debugger / no jedi completion
#   FULL=1 bash scripts/gpu/fetch_wheels.sh   # also debugpy + jedi + parso (~+10 MB)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=.whl

# name==version, as in constraints.txt (Python 3.11 CPU suite); one version of each.
WHEELS=(
  # the chain: papermill -> nbclient -> jupyter_client -> ipykernel kernel; nbconvert for HTML
  papermill==2.7.0 nbconvert==7.17.2 nbclient==0.11.0 nbformat==5.11.1 ipykernel==7.4.0
  jupyter_client==8.10.0 jupyter_core==5.9.1
  # notebooks 04 (Grad-CAM) and 05 (DICOM input)
  ttach==0.0.3 pydicom==3.0.2
  # their needs that the GPU image does not have (worked out with wheel_closure.py)
  beautifulsoup4==4.15.0 bleach==6.4.0 comm==0.2.3 defusedxml==0.7.1 entrypoints==0.4.2
  fastjsonschema==2.22.3 ipython==9.18.1 jsonschema==4.26.0 jupyterlab-pygments==0.3.0
  matplotlib-inline==0.2.2 mistune==3.4.0 nest-asyncio2==1.7.4 pandocfilters==1.5.1
  platformdirs==4.14.7 pyzmq==27.3.0 tenacity==9.2.1 tornado==6.6.1 traitlets==5.16.1
  ipython-pygments-lexers==1.1.1 jsonschema-specifications==2025.9.1 pexpect==4.9.0
  prompt-toolkit==3.0.53 referencing==0.37.0 rpds-py==2026.9.1 soupsieve==4.1.2 stack-data==0.6.3
  webencodings==0.6.1 asttokens==3.0.2 executing==2.3.0 ptyprocess==0.7.0 pure-eval==0.2.4
  wcwidth==0.9.4 tinycss2==1.5.1
)
# Optional at run time: ipykernel runs without its debugger, IPython without jedi completion.
OPTIONAL=(debugpy==1.8.22 jedi==0.20.1 parso==0.8.7)
GRADCAM=grad-cam==1.5.7  # sdist only on PyPI: built here into a pure-Python py3-none-any wheel

if [ "${FULL:-0}" = 1 ]; then WHEELS+=("${OPTIONAL[@]}"); fi

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${WHEELS[@]}"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$tmp" "$GRADCAM"
"$PY" -m pip wheel -q --no-deps -w "$DEST" "$tmp"/grad_cam-*.tar.gz
case "$(ls "$DEST"/grad_cam-*.whl)" in *py3-none-any.whl) ;; *) echo "grad-cam did not build as py3-none-any" >&2; exit 1;; esac

if [ "${FULL:-0}" = 1 ]; then
  "$PY" scripts/gpu/wheel_closure.py "$DEST"
else
  "$PY" scripts/gpu/wheel_closure.py "$DEST" --allow debugpy,jedi
fi
echo "$(ls "$DEST"/*.whl | wc -l) wheels, $(du -sb "$DEST" | cut -f1) bytes in $DEST (carry limit 64 MiB with the tree and datapack/)"
