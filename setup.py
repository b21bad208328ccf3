"""Builds the kvcodec Python package: CMake compiles the extension module (python/src) against
the library, setuptools packages it with python/kvcodec/*.py.

Environment:
  KVCODEC_PYTHON_BUILD_DIR  an existing CMake build tree configured with -DKVCODEC_BUILD_PYTHON=ON
                            (e.g. build/): only its _kvcodec target is built and copied, nothing
                            is reconfigured (scripts/test.sh uses this to keep the check cheap).
  KVCODEC_JOBS              parallel compile jobs (default: all cores).
ccache is used when installed. Nothing is downloaded.
"""
import glob
import os
import pathlib
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).parent.resolve()


def stream_deps():
    """Whether the streaming library's dependencies (hiredis, nlohmann-json) are installed: the
    package then has Store, Server, put, load and fetch (KVCODEC_PYTHON_STREAM=0/1 overrides)."""
    forced = os.environ.get("KVCODEC_PYTHON_STREAM")
    if forced in ("0", "1"):
        return forced == "1"
    if not shutil.which("pkg-config"):
        return False
    hiredis = subprocess.run(["pkg-config", "--exists", "hiredis"]).returncode == 0
    return hiredis and any(pathlib.Path(p, "nlohmann", "json.hpp").exists() for p in ("/usr/include", "/usr/local/include"))


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        dest = pathlib.Path(self.get_ext_fullpath(ext.name)).resolve()
        reuse = os.environ.get("KVCODEC_PYTHON_BUILD_DIR")
        if reuse and (pathlib.Path(reuse) / "CMakeCache.txt").exists():
            build = pathlib.Path(reuse).resolve()
        else:
            build = pathlib.Path(self.build_temp).resolve() / "cmake"
            args = ["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    "-DKVCODEC_BUILD_PYTHON=ON", "-DKVCODEC_BUILD_TESTS=OFF", "-DKVCODEC_BUILD_BENCH=OFF",
                    "-DKVCODEC_BUILD_TOOLS=OFF", "-DKVCODEC_BUILD_EXAMPLES=OFF",
                    f"-DKVCODEC_BUILD_STREAM={'ON' if stream_deps() else 'OFF'}",
                    f"-DPython3_EXECUTABLE={sys.executable}"]
            if shutil.which("ninja") and not (build / "CMakeCache.txt").exists():
                args += ["-G", "Ninja"]
            if shutil.which("ccache"):
                args.append("-DCMAKE_CXX_COMPILER_LAUNCHER=ccache")
            subprocess.check_call(args)
        jobs = os.environ.get("KVCODEC_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call(["cmake", "--build", str(build), "--target", "_kvcodec", "-j", jobs])
        built = glob.glob(str(build / "python" / "kvcodec" / "_kvcodec*.so"))
        if len(built) != 1:
            raise RuntimeError(f"expected one built _kvcodec module under {build}, found {built}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built[0], dest)


setup(
    packages=["kvcodec"],
    package_dir={"": "python"},
    ext_modules=[Extension("kvcodec._kvcodec", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    options={"build": {"build_base": "build/setuptools"}},
    zip_safe=False,
)
