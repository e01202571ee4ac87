"""Build the Cython extensions in ext/ as raftfast._<name>.

RAFTFAST_ONLY=codec,resp limits a development build to some extensions
(every extension is always built by ``pip install``).
RF_DEBUG=1 compiles with assertions and bounds checks on.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

EXTENSIONS = ["crc", "entrylog", "logstore", "codec", "resp", "kv"]

only = [n for n in os.environ.get("RAFTFAST_ONLY", "").split(",") if n]
debug = os.environ.get("RF_DEBUG") == "1"
names = [n for n in EXTENSIONS if not only or n in only]

extensions = [
    Extension(
        f"raftfast._{name}",
        [f"ext/{name}.pyx"],
        include_dirs=["ext"],
        extra_compile_args=["-O2"] + ([] if debug else ["-DNDEBUG"]),
    )
    for name in names
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": debug,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)
