"""Check that a wheel of tiered-cache carries the compiled core when this machine can build it.

``setup.py`` compiles the core into the wheel (``tools/build_core.py``'s build) when a C
compiler, Python headers and mypyc are there, and leaves a pure-Python wheel otherwise. This
builds a wheel (or takes one: ``check_wheel.py path/to.whl``), checks that it holds every
compiled module and extension of ``tiered_cache/compiled.py`` and the ``compiled.json`` that
switches them on, then installs it into a fresh venv and asks
``tiered_cache.compiled.compiled_core()``. Exits 1 when the core should be in the wheel and is
not (or is there but does not run). Run by ``make wheel-check``; takes a few minutes (mypyc).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

from build_core import EXTENSIONS, MODULES, ROOT, unavailable


def build_wheel(outdir: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(ROOT)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (wheel,) = outdir.glob("tiered_cache-*.whl")
    return wheel


def missing_from(wheel: Path) -> list[str]:
    """The compiled core's files the wheel lacks."""
    names = [Path(name).name for name in zipfile.ZipFile(wheel).namelist()]
    wanted = [*MODULES, *EXTENSIONS, "_core__mypyc"]
    absent = [
        name
        for name in wanted
        if not any(n.startswith(f"{name}.") and n.endswith(".so") for n in names)
    ]
    return [*absent, *([] if "compiled.json" in names else ["compiled.json"])]


def runs_compiled(wheel: Path, scratch: Path) -> bool:
    """Installed into a fresh venv (with its dependencies), does the core run compiled?"""
    venv.create(scratch / "venv", with_pip=True)
    python = scratch / "venv" / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(wheel)], check=True)
    asked = subprocess.run(
        [python, "-c", "from tiered_cache.compiled import compiled_core; print(compiled_core())"],
        check=True,
        capture_output=True,
        text=True,
        cwd=scratch,  # not the checkout: its tiered_cache/ would be imported instead
    )
    return asked.stdout.strip() == "True"


def main() -> int:
    why = unavailable()
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        wheel = Path(sys.argv[1]) if len(sys.argv) > 1 else build_wheel(scratch)
        missing = missing_from(wheel)
        if why is not None:
            print(f"check_wheel: {why} here, so {wheel.name} may be pure Python")
            return 0
        if missing:
            print(f"check_wheel: {wheel.name} lacks the compiled core: {', '.join(missing)}")
            return 1
        if not runs_compiled(wheel, scratch):
            print(f"check_wheel: {wheel.name} holds the compiled core, but installed it runs pure")
            return 1
    print(f"check_wheel: {wheel.name} carries the compiled core, and it runs compiled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
