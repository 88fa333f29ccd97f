"""Builds the optional compiled free index (``core/scheduling/_freeindex_c.pyx``).

Everything else is in pyproject.toml. The extension is optional: where
Cython or a C compiler is missing, or the build fails, apportion installs
without it and ``core/scheduling/fastindex.py`` falls back to the pure
``freeindex.FreeIndex`` (same answers, slower; bench/README.md, h26-native).
"""

from setuptools import Extension, setup

SOURCE = "src/apportion/core/scheduling/_freeindex_c.pyx"


def extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:  # no Cython: the pure index
        return []
    ext = Extension("apportion.core.scheduling._freeindex_c", [SOURCE], optional=True)
    return list(cythonize([ext], language_level=3, quiet=True))


setup(ext_modules=extensions())
