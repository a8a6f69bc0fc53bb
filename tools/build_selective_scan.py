"""Build mamba-ssm's selective-scan CUDA extension (`selective_scan_cuda`) for this machine's GPU only, from its sdist.

mamba-ssm ships source only, and its setup.py compiles the extension for every architecture from sm_75 to sm_121
(tens of minutes). On a lent GPU machine with no internet, `tools/gpu_check.sh` unpacks the sdist and runs this: the
same sources and nvcc flags as mamba-ssm's setup.py, for the visible GPU's architecture alone, in parallel (MAX_JOBS).

    # the unpacked sdist; writes /tmp/mamba/build/selective_scan_cuda*.so
    python3 tools/build_selective_scan.py /tmp/mamba
"""

import os, sys, time
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

NVCC_FLAGS = [
    "-O3",
    "-std=c++17",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__",
    "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
    "--expt-relaxed-constexpr",
    "--expt-extended-lambda",
    "--use_fast_math",
    "-lineinfo",
]
KINDS = ["fwd_fp32", "fwd_fp16", "fwd_bf16"] + [
    f"bwd_{t}_{c}" for t in ("fp32", "fp16", "bf16") for c in ("real", "complex")
]


def main(root: str):
    src = Path(root) / "csrc" / "selective_scan"
    if not src.is_dir():
        sys.exit(f"{src} is missing: pass the folder of the unpacked mamba-ssm sdist")
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU is visible: the extension is built for the GPU it will run on")
    major, minor = torch.cuda.get_device_capability()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    os.environ.setdefault("MAX_JOBS", str(max(1, (os.cpu_count() or 2) - 2)))
    build = Path(root) / "build"
    build.mkdir(exist_ok=True)
    t0 = time.time()
    load(
        name="selective_scan_cuda",
        sources=[str(src / "selective_scan.cpp")] + [str(src / f"selective_scan_{k}.cu") for k in KINDS],
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=NVCC_FLAGS,
        extra_include_paths=[str(src)],
        build_directory=str(build),
        verbose=False,
    )
    print(f"built selective_scan_cuda for sm_{major}{minor} in {time.time() - t0:.0f} s: {build}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/mamba")
