"""Check that the wheels in a folder, plus the GPU image's own packages, satisfy each other.

Reads every ``*.whl``'s METADATA ``Requires-Dist`` (markers evaluated for CPython 3.12 on
x86-64 Linux, extras skipped) and prints the requirement names that neither another wheel in the
folder nor the GPU image (KINDS.md's package list, copied below) provides. Also fails when two
wheels carry the same project (pip refuses to install both).

    python scripts/gpu/wheel_closure.py .whl          # exit 1 and list what is missing
    python scripts/gpu/wheel_closure.py .whl --pins constraints.txt   # print NAME==VERSION to fetch
    python scripts/gpu/wheel_closure.py .whl --allow debugpy,jedi     # these may stay missing
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

# The 'cuda' image of nvidia-h100-x1 / nvidia-h200, as /work/.library/device/KINDS.md listed it
# (read on a machine running it, 2026-11-17). Python 3.12.3, torch 2.11.0, numpy 2.5.2.
GPU_IMAGE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet
httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib
mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq
torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()

# Provided by another name on the image: grad-cam asks for opencv-python, the image has the
# headless build of the same cv2 module.
PROVIDED_AS = {"opencv-python": "opencv-python-headless"}


def canon(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_metadata(path: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist lines) of one wheel file."""
    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode("utf-8", "replace")
    headers = text.split("\n\n", 1)[0].splitlines()
    name = next(h.split(":", 1)[1].strip() for h in headers if h.startswith("Name:"))
    version = next(h.split(":", 1)[1].strip() for h in headers if h.startswith("Version:"))
    reqs = [h.split(":", 1)[1].strip() for h in headers if h.startswith("Requires-Dist:")]
    return name, version, reqs


def target_env() -> dict[str, str]:
    """Marker environment of the GPU image: CPython 3.12 on x86-64 Linux, no extras."""
    env = dict(default_environment())
    env.update(python_version="3.12", python_full_version="3.12.3", implementation_name="cpython",
               platform_python_implementation="CPython", sys_platform="linux", platform_system="Linux",
               platform_machine="x86_64", os_name="posix", extra="")
    return env


def missing_requirements(wheel_dir: Path) -> tuple[dict[str, str], dict[str, list[str]], list[str]]:
    """(carried {name: version}, missing {name: [asked by]}, duplicated names) for a wheel folder.

    Follows extras: ``bleach[css]`` asked by nbconvert adds bleach's ``extra == "css"`` needs.
    """
    carried: dict[str, str] = {}
    requires: dict[str, list[Requirement]] = {}
    dupes: list[str] = []
    for whl in sorted(wheel_dir.glob("*.whl")):
        name, version, reqs = wheel_metadata(whl)
        if canon(name) in carried:
            dupes.append(f"{name} ({carried[canon(name)]} and {version})")
        carried[canon(name)] = version
        requires[canon(name)] = [Requirement(r) for r in reqs]
    have = set(carried) | {canon(p) for p in GPU_IMAGE_PACKAGES}
    missing: dict[str, list[str]] = {}
    queue = [(name, "") for name in carried]
    seen = set(queue)
    while queue:
        name, extra = queue.pop()
        env = target_env() | {"extra": extra}
        for req in requires.get(name, []):
            if req.marker is None and extra:
                continue
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            need = canon(req.name)
            if need not in have and canon(PROVIDED_AS.get(need, need)) not in have:
                missing.setdefault(need, []).append(name + (f"[{extra}]" if extra else ""))
            for x in req.extras:
                if (need, x) not in seen:
                    seen.add((need, x))
                    queue.append((need, x))
    return carried, missing, dupes


def read_pins(path: Path) -> dict[str, str]:
    """{canonical name: version} from a constraints file of NAME==VERSION lines."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canon(name)] = version.strip()
    return pins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel_dir", type=Path)
    parser.add_argument("--pins", type=Path, default=None,
                        help="constraints file: print the missing ones as NAME==VERSION (one a line)")
    parser.add_argument("--allow", default="",
                        help="comma-separated requirements that may stay missing (optional at run time)")
    args = parser.parse_args(argv)
    if not args.wheel_dir.is_dir():
        print(f"wheel_closure: no folder {args.wheel_dir}; run scripts/gpu/fetch_wheels.sh first", file=sys.stderr)
        return 2
    carried, missing, dupes = missing_requirements(args.wheel_dir)
    for name in filter(None, args.allow.split(",")):
        missing.pop(canon(name.strip()), None)
    if args.pins:
        pins = read_pins(args.pins)
        for name in sorted(missing):
            print(f"{name}=={pins[name]}" if name in pins else name)
        return 0
    for d in dupes:
        print(f"DUPLICATE {d}: keep one version", file=sys.stderr)
    for name, by in sorted(missing.items()):
        print(f"MISSING {name} (needed by {', '.join(sorted(set(by)))})", file=sys.stderr)
    if not missing and not dupes:
        print(f"ok: {len(carried)} wheels, every requirement met by them or by the GPU image")
    return 1 if (missing or dupes) else 0


if __name__ == "__main__":
    sys.exit(main())
