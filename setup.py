"""Builds the optional compiled free index (``core/scheduling/_freeindex_c.pyx``);
everything else is in pyproject.toml.

Optional: where Cython or a C compiler is missing, or the build fails,
apportion installs without it (with a warning) and
``core/scheduling/fastindex.py`` falls back to the pure ``freeindex.FreeIndex``:
the same answers, slower (bench/README.md, h26-native). A module left in the
source tree by an earlier build is removed then, so that a failed build of
newer sources never leaves the older module in use.
"""

from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCE = "src/apportion/core/scheduling/_freeindex_c.pyx"
NAME = "apportion.core.scheduling._freeindex_c"


def drop_built() -> None:
    """Remove compiled modules of the index from the source tree (where an
    editable install and ``PYTHONPATH=src`` import them)."""
    source = Path(SOURCE)
    for built in source.parent.glob(f"{source.stem}.*.so"):
        built.unlink()


class OptionalBuildExt(build_ext):
    """``build_ext`` that warns instead of failing, and leaves what it could
    not build out of the install. (``Extension(optional=True)`` alone is not
    enough: recent setuptools lets a compiler that cannot run raise
    ``CalledProcessError``, which its optional handling does not catch, and
    an editable install then copies the missing library.)"""

    def build_extensions(self) -> None:
        built = []
        for ext in self.extensions:
            try:
                self.build_extension(ext)
            except Exception as error:  # any failure: install without it
                self.warn(f"{ext.name} was not built ({error}); apportion runs on the "
                          "pure-Python free index")
                drop_built()
            else:
                built.append(ext)
        self.extensions = built


def extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("warning: Cython is missing: the compiled free index is not built")
        drop_built()
        return []
    ext = Extension(NAME, [SOURCE], optional=True)
    try:
        return list(cythonize([ext], language_level=3, quiet=True))
    except Exception as error:  # a source Cython refuses: install without it
        print(f"warning: {NAME} was not translated ({error}); apportion runs on the "
              "pure-Python free index")
        drop_built()
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
