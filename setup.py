"""Builds the optional compiled modules: the free index
(``core/scheduling/_freeindex_c.pyx``) and the replays' kernels
(``core/_replay_c.pyx``); everything else is in pyproject.toml.

Optional, each on its own: where Cython or a C compiler is missing, or a
build fails, apportion installs without that module (with a warning) and
its import falls back to the Python (``core/scheduling/fastindex.py``: the
pure ``freeindex.FreeIndex``; ``core/fastreplay.py``: the callers' own
loops): the same answers, slower (bench/README.md, h26-native and
h28-adaptive). A module left in the source tree by an earlier build is
removed then, so that a failed build of newer sources never leaves the
older module in use.
"""

from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODULES = [
    ("apportion.core.scheduling._freeindex_c", "src/apportion/core/scheduling/_freeindex_c.pyx"),
    ("apportion.core._replay_c", "src/apportion/core/_replay_c.pyx"),
]
"""(NAME, SOURCE) of each compiled module."""


def drop_built(name: str) -> None:
    """Remove compiled builds of module ``name`` from the source tree (where
    an editable install and ``PYTHONPATH=src`` import them)."""
    source = Path(dict(MODULES)[name])
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
                self.warn(f"{ext.name} was not built ({error}); apportion runs on its "
                          "pure-Python fallback")
                drop_built(ext.name)
            else:
                built.append(ext)
        self.extensions = built


def extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("warning: Cython is missing: the compiled modules are not built")
        for name, _ in MODULES:
            drop_built(name)
        return []
    out: list[Extension] = []
    for name, source in MODULES:
        ext = Extension(name, [source], optional=True)
        try:
            out.extend(cythonize([ext], language_level=3, quiet=True))
        except Exception as error:  # a source Cython refuses: install without it
            print(f"warning: {name} was not translated ({error}); apportion runs on its "
                  "pure-Python fallback")
            drop_built(name)
    return out


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
