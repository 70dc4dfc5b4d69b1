"""Compile the memory tier's hot modules with mypyc, in place, when a C compiler is present.

With them, the C extensions of the package (``tiered_cache/_hitcall.c``: a decorated
function's plain hit) are built; they have Python references too (the decorator's generated
wrapper), used when nothing is built.

The compiled modules are built from the same typed source and sit beside it
(``tiered_cache/policy.cpython-311-*.so``); Python imports them in preference to the ``.py``
files. The pure-Python modules stay the reference: without a compiler nothing is built and the
library runs on them, and ``tests/test_compiled_core.py`` runs the same operations on both and
demands identical results. ``--remove`` deletes the compiled modules again.

Run by ``make install`` (``make compiled`` / ``make pure`` by hand). A wheel's build
(``setup.py``) compiles the same modules with :func:`extensions` and writes the same
:func:`manifest` into the wheel.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _lists() -> ModuleType:
    """tiered_cache/compiled.py, the one owner of what is compiled, loaded by its path: it
    imports only the standard library, and this script does not import the package it builds
    (the package would import the stale extensions it is about to replace)."""
    spec = importlib.util.spec_from_file_location(
        "_compiled_lists", ROOT / "tiered_cache" / "compiled.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_COMPILED = _lists()
#: The modules compiled, the extensions written in C and the sources they were checked against.
MODULES: tuple[str, ...] = _COMPILED.MODULES
EXTENSIONS: tuple[str, ...] = _COMPILED.EXTENSIONS
DEPENDENCIES: tuple[str, ...] = _COMPILED.DEPENDENCIES
#: The compiled modules share one runtime library, kept inside the package.
GROUP = "tiered_cache._core"


def sources() -> list[Path]:
    """Every source the build reads: a change to one makes the build stale."""
    package = ROOT / "tiered_cache"
    return [
        *(package / f"{name}.py" for name in (*MODULES, *DEPENDENCIES)),
        *(package / f"{name}.c" for name in EXTENSIONS),
    ]


def compiled_files() -> list[Path]:
    """The extension modules a build left in the package."""
    package = ROOT / "tiered_cache"
    names = (*MODULES, *EXTENSIONS, "_core__mypyc")
    return sorted(path for name in names for path in package.glob(f"{name}.*.so"))


def compiler() -> str | None:
    """The C compiler Python's build would use, if it is installed."""
    command = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(command)


def unavailable() -> str | None:
    """Why the core cannot be compiled here, or None when it can."""
    if compiler() is None:
        return "no C compiler found"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (python3-dev)"
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc is not installed"
    return None


def extensions(base: Path) -> list[Any]:
    """The core's extension modules (setuptools Extensions): :data:`MODULES` through
    mypyc (which writes their C now, into ``build/`` under the working directory), and the C
    :data:`EXTENSIONS`; their sources named under ``base`` (the project's root, or ``.`` for
    a ``setup.py`` run from it)."""
    from mypyc.build import mypycify
    from setuptools import Extension

    package = base / "tiered_cache"
    sources = [str(package / f"{name}.py") for name in MODULES]
    written_in_c = [
        Extension(f"tiered_cache.{name}", [str(package / f"{name}.c")]) for name in EXTENSIONS
    ]
    return [*mypycify(sources, group_name=GROUP, opt_level="3"), *written_in_c]


def manifest() -> str:
    """What was compiled, so that a changed source is imported instead of its stale build
    (tiered_cache/compiled.py): the text of ``tiered_cache/compiled.json``."""
    hashed = (*MODULES, *DEPENDENCIES)
    return (
        json.dumps(
            {
                "modules": {name: _sha256(ROOT / "tiered_cache" / f"{name}.py") for name in hashed},
                "extensions": {
                    name: _sha256(ROOT / "tiered_cache" / f"{name}.c") for name in EXTENSIONS
                },
            },
            indent=1,
        )
        + "\n"
    )


def build() -> int:
    why = unavailable()
    if why is not None:
        print(f"build_core: {why}; tiered-cache runs its pure-Python core")
        return 0
    from setuptools import setup

    # The sources' hashes are taken before mypyc reads them: taken after the build, a source
    # edited while it ran got a hash matching its new text beside a build of its old one, and
    # compiled.py ran that stale build (a changed signature: "takes at most 4 arguments (5
    # given)"). Taken first, such an edit only makes the build look stale: the source runs.
    recorded = manifest()
    # Built in a folder of its own (setuptools would read the project's pyproject.toml), then
    # copied beside the sources.
    work = ROOT / "build" / "core"
    (work / "tiered_cache").mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    try:
        setup(
            name="tiered-cache-core",
            ext_modules=extensions(ROOT),
            script_args=["--quiet", "build_ext", "--inplace"],
        )
    except (Exception, SystemExit) as exc:  # the build is optional: never fail the install
        print(f"build_core: the build failed ({exc}); tiered-cache runs its pure-Python core")
        return 0
    for built in (work / "tiered_cache").glob("*.so"):
        # Copied aside and renamed into place: a process that has the old build loaded keeps
        # its (unlinked) file; overwriting it in place could crash that process.
        target = ROOT / "tiered_cache" / built.name
        partial = target.with_name(target.name + ".partial")
        shutil.copy2(built, partial)
        os.replace(partial, target)
    (ROOT / "tiered_cache" / "compiled.json").write_text(recorded)
    names = ", ".join(path.name.split(".")[0] for path in compiled_files())
    print(f"build_core: compiled with mypyc and the C compiler: {names}")
    return 0


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def remove() -> int:
    for path in compiled_files():
        path.unlink()
    (ROOT / "tiered_cache" / "compiled.json").unlink(missing_ok=True)
    print("build_core: compiled modules removed; tiered-cache runs its pure-Python core")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--remove", action="store_true", help="delete the compiled modules")
    parser.add_argument(
        "--sources",
        action="store_true",
        help="print the sources the build reads, one a line (the Makefile's prerequisites)",
    )
    args = parser.parse_args()
    if args.sources:
        print("\n".join(str(path.relative_to(ROOT)) for path in sources()))
        return 0
    return remove() if args.remove else build()


if __name__ == "__main__":
    sys.exit(main())
