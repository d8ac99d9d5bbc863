"""Builds the native extension by driving CMakeLists.txt, the one description of the build.

Environment switches:
  LOWRES_CUDA=0|1          skip / require the CUDA kernels (default: build them when torch and nvcc have CUDA)
  TORCH_CUDA_ARCH_LIST     e.g. "8.0;9.0" (default "8.0;9.0"; there may be no GPU to detect)
  LOWRES_DEBUG=1           debug build (-O0 -g)
  MAX_JOBS                 parallel compile jobs
A failed native build fails the install: the package never falls back to Python silently.
"""

import os
import shutil
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext


def _cmake_cuda_archs(arch_list: str) -> str:
    # "8.0;9.0+PTX 9.0a" -> "80;90;90a"
    archs = []
    for arch in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        arch = arch.strip().replace("+PTX", "")
        if arch:
            archs.append(arch.replace(".", ""))
    return ";".join(archs)


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        output = os.path.abspath(self.get_ext_fullpath(ext.name))
        build_dir = os.path.abspath(os.path.join(self.build_temp, "cmake"))
        os.makedirs(build_dir, exist_ok=True)
        os.makedirs(os.path.dirname(output), exist_ok=True)
        with_cuda = {"0": "OFF", "1": "ON"}.get(os.environ.get("LOWRES_CUDA", ""), "AUTO")
        if with_cuda != "OFF" and "CUDA_HOME" in os.environ:
            os.environ.setdefault("CUDACXX", os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
        elif with_cuda != "OFF" and shutil.which("nvcc") is None and os.path.exists("/usr/local/cuda/bin/nvcc"):
            os.environ.setdefault("CUDACXX", "/usr/local/cuda/bin/nvcc")
        config = [
            "cmake", "-S", os.path.dirname(os.path.abspath(__file__)), "-B", build_dir,
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DLOWRES_OUTPUT={output}",
            f"-DLOWRES_WITH_CUDA={with_cuda}",
            f"-DLOWRES_CUDA_ARCHS={_cmake_cuda_archs(os.environ.get('TORCH_CUDA_ARCH_LIST', '8.0;9.0'))}",
            f"-DCMAKE_BUILD_TYPE={'Debug' if os.environ.get('LOWRES_DEBUG') == '1' else 'Release'}",
        ]
        if shutil.which("ninja"):
            config.append("-GNinja")
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run(config, check=True)
        subprocess.run(["cmake", "--build", build_dir, "--parallel", jobs], check=True)


setup(
    packages=find_packages(include=["lowres_kernels*"]) + find_packages("python", include=["lowres_vision*"]),
    package_dir={"lowres_vision": "python/lowres_vision"},
    package_data={"lowres_vision": ["data/captions/*.txt", "weights/lowres-clip/*.json", "weights/lowres-clip/*.safetensors",
                                   "weights/lowres-clip/*.md"]},
    ext_modules=[Extension("lowres_kernels._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
)
