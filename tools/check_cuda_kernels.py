#!/usr/bin/env python
"""Compile every CUDA kernel of `neuralbook.cuda` with NVRTC for explicit GPU architectures — no GPU needed.

    python tools/check_cuda_kernels.py                     # sm_80 and sm_90, every source and signature
    python tools/check_cuda_kernels.py --arch sm_90 --only conv

The exit status is 1 when a kernel does not compile (NVRTC's log is printed) or when the deliberately broken kernel
below is *accepted* — a check that cannot fail checks nothing. It is 2 when NVRTC itself is unavailable.

NVRTC comes from the pip wheels of the `gpu` extra (`pip install "neuralbook[gpu]"`: cupy-cuda13x and
nvidia-cuda-nvrtc). Its shared library lives in the wheel (site-packages/nvidia/cu13/lib); `preload_nvrtc` loads it
from there by absolute path before CuPy looks for it, so neither root, LD_LIBRARY_PATH nor a system CUDA is needed.
CuPy's public compile calls (RawModule, ElementwiseKernel) ask the driver for the current device to pick an
architecture, so without a GPU we go through `neuralbook.cuda.compile_source`, which gives NVRTC the architecture.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import importlib.util
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("sm_80", "sm_90")

# Must be rejected: an undefined identifier. If NVRTC ever accepted it, the check would be broken.
BROKEN_KERNEL = r"""
typedef float T;
extern "C" __global__ void broken(T* x, long long n) {
  long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (i < n) x[i] = undefined_identifier * x[i];
}
"""


def _cuda_majors() -> list[int]:
    "CUDA major versions of the installed CuPy wheels (cupy-cuda13x -> 13), newest first, without importing CuPy."
    from importlib import metadata
    majors = set()
    for d in metadata.distributions():
        m = re.fullmatch(r"cupy-cuda(\d+)x", (d.metadata["Name"] or "").lower())
        if m: majors.add(int(m.group(1)))
    return sorted(majors, reverse=True)


def nvrtc_library_dirs() -> list[Path]:
    "Directories of the pip wheels that may hold libnvrtc (nvidia/cu13/lib, nvidia/cuda_nvrtc/lib, ...)."
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
    dirs = []
    for r in map(Path, roots):
        dirs += sorted(p for p in r.glob("cu*/lib") if p.is_dir()) + sorted(p for p in r.glob("cuda_nvrtc/lib"))
    return dirs


def preload_nvrtc() -> str | None:
    """Load the wheel's libnvrtc (and its builtins library) by absolute path with RTLD_GLOBAL, so that CuPy's later
    dlopen("libnvrtc.so.NN") finds the already-loaded library. Returns the path loaded, or None (then CuPy's own
    search still runs). Only libraries matching the installed CuPy's CUDA major version are considered."""
    if not sys.platform.startswith("linux"):
        return None                      # Windows/macOS: CuPy's own loader handles the wheels
    majors = _cuda_majors()
    for d in nvrtc_library_dirs():
        for major in majors:
            libs = sorted(glob.glob(str(d / f"libnvrtc.so.{major}*")))
            if not libs: continue
            for builtins in sorted(glob.glob(str(d / f"libnvrtc-builtins.so.{major}*"))):
                try: ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
                except OSError: pass
            try:
                ctypes.CDLL(libs[0], mode=ctypes.RTLD_GLOBAL)
                return libs[0]
            except OSError:
                continue
    return None


def nvrtc_status() -> tuple[bool, str]:
    "(True, 'NVRTC 13.5 from <path>') when NVRTC can compile here, else (False, why) — never raises."
    try:
        path = preload_nvrtc()
    except Exception as e:  # a broken wheel layout must not crash the check
        path = None
        pre = f" (preloading failed: {type(e).__name__}: {e})"
    else:
        pre = ""
    try:
        import cupy  # noqa: F401
    except Exception as e:
        return False, (f"CuPy cannot be imported ({type(e).__name__}: {e}); install the gpu extra: "
                       f"pip install \"neuralbook[gpu]\" (cupy-cuda13x and nvidia-cuda-nvrtc){pre}")
    try:
        from cupy_backends.cuda.libs import nvrtc
        major, minor = nvrtc.getVersion()
    except Exception as e:
        return False, (f"NVRTC cannot be loaded ({type(e).__name__}: {e}); pip install nvidia-cuda-nvrtc{pre}")
    return True, f"NVRTC {major}.{minor} from {path or 'CuPy’s library search'}"


def _sources(only: str | None = None):
    sys.path.insert(0, str(ROOT))
    from neuralbook.cuda import kernel_sources
    return [s for s in kernel_sources() if only is None or only in s[0]]


def check(archs=ARCHS, sources=None, only: str | None = None, log=print) -> list[dict]:
    """Compile each (source, signature) for each architecture. Returns one dict per compilation:
    name, signature, arch, ok, error (NVRTC's log or None), seconds."""
    from neuralbook.cuda import compile_source
    sources = _sources(only) if sources is None else sources
    results = []
    for name, sig, code, kernels in sources:
        for arch in archs:
            t0 = time.perf_counter()
            try:
                compile_source(code, kernels, arch, name=f"{name}.cu")
                ok, err = True, None
            except Exception as e:
                ok, err = False, f"{type(e).__name__}: {e}"
            results.append(dict(name=name, signature=sig, arch=arch, ok=ok, error=err,
                                seconds=time.perf_counter() - t0))
            if log: log(f"{'ok  ' if ok else 'FAIL'} {name:14s} {'/'.join(sig):14s} {arch}"
                        + ("" if ok else "\n" + err))
    return results


def broken_kernel_rejected(arch: str = "sm_90") -> tuple[bool, str]:
    "(True, NVRTC's log) when NVRTC rejects BROKEN_KERNEL, as it must."
    from neuralbook.cuda import compile_source
    try:
        compile_source(BROKEN_KERNEL, ("broken",), arch, name="broken.cu")
    except Exception as e:
        return True, str(e)
    return False, "NVRTC accepted a kernel with an undefined identifier"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", help="architecture(s), e.g. sm_90 (default: sm_80 and sm_90)")
    ap.add_argument("--only", help="only sources whose name contains this string")
    args = ap.parse_args(argv)
    ok, why = nvrtc_status()
    print(why)
    if not ok:
        return 2
    archs = tuple(args.arch or ARCHS)
    results = check(archs, only=args.only)
    rejected, _ = broken_kernel_rejected(archs[0])
    print(f"{'ok  ' if rejected else 'FAIL'} the deliberately broken kernel is "
          f"{'rejected' if rejected else 'ACCEPTED: the check cannot fail'}")
    failed = [r for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)}/{len(results)} compilations passed for {', '.join(archs)} "
          f"in {sum(r['seconds'] for r in results):.1f} s")
    return 1 if failed or not rejected else 0


if __name__ == "__main__":
    os.environ.setdefault("CUPY_CACHE_IN_MEMORY", "1")   # no ~/.cupy writes from a check
    sys.exit(main())
