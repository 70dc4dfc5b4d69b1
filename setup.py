"""The wheel's build hook: a wheel carries the compiled core when this machine can build it.

The same build as ``make install``'s in-place one (``tools/build_core.py``: the memory tier's
hot modules through mypyc, the C extensions), into the wheel with its ``compiled.json``, so
that a pip-installed tiered-cache runs compiled (``tiered_cache.compiled.compiled_core()``).
Without a C compiler, Python headers or mypyc, or if the build fails, the wheel holds the
pure-Python core, which runs the same code from the sources. An editable install builds
nothing here: ``make install`` builds in place afterwards. Everything else about the
distribution is in pyproject.toml.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _build_core() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_build_core", ROOT / "tools" / "build_core.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildCore(build_ext):
    """``build_ext`` for the compiled core, optional: any failure leaves the pure wheel."""

    def finalize_options(self) -> None:
        self._core = _build_core()
        self._why: str | None = (
            "an editable install" if self.editable_mode or self.inplace else None
        ) or self._core.unavailable()
        if self._why is None:
            try:  # mypyc writes the C of the compiled modules now
                self.distribution.ext_modules = self._core.extensions(Path("."))
            except (Exception, SystemExit) as exc:
                self._why = f"mypyc failed ({exc})"
        if self._why is not None:
            self.distribution.ext_modules = []
        super().finalize_options()

    def run(self) -> None:
        if self._why is None:
            try:
                super().run()
            except (Exception, SystemExit) as exc:
                self._why = f"the build failed ({exc})"
                for extension in self.extensions:  # none of a partial build in the wheel
                    Path(self.get_ext_fullpath(extension.name)).unlink(missing_ok=True)
            else:
                self._manifest().write_text(self._core.manifest(), encoding="utf-8")
        if self._why is not None:
            print(f"tiered-cache: the core is not compiled ({self._why}): the wheel is pure Python")

    def _manifest(self) -> Path:
        return Path(self.build_lib) / "tiered_cache" / "compiled.json"

    def get_outputs(self) -> list[str]:
        outputs: list[str] = super().get_outputs()
        return [*outputs, str(self._manifest())] if self._why is None else outputs


# Declared so that the wheel is built (and tagged) as a platform wheel; BuildCore decides
# what is compiled, from tiered_cache/compiled.py's lists.
setup(
    ext_modules=[Extension("tiered_cache._hitcall", ["tiered_cache/_hitcall.c"])],
    cmdclass={"build_ext": BuildCore},
)
