"""tools/build_core.py's manifest records the sources as the build read them: a source edited
while mypyc ran must not get a hash matching its new text beside a build of its old one (then
tiered_cache/compiled.py would run the stale build: a changed signature failed with "takes at
most 4 arguments (5 given)")."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def build_core() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_build_core", ROOT / "tools" / "build_core.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_source_edited_during_the_build_is_recorded_as_the_build_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = build_core()
    tree = tmp_path / "tree"
    (tree / "tiered_cache").mkdir(parents=True)
    for name in (*tool.MODULES, *tool.DEPENDENCIES):
        shutil.copy2(ROOT / "tiered_cache" / f"{name}.py", tree / "tiered_cache" / f"{name}.py")
    for name in tool.EXTENSIONS:
        shutil.copy2(ROOT / "tiered_cache" / f"{name}.c", tree / "tiered_cache" / f"{name}.c")
    edited = tree / "tiered_cache" / f"{tool.MODULES[0]}.py"
    as_read = hashlib.sha256(edited.read_bytes()).hexdigest()

    def extensions_while_editing(base: Path) -> list[Any]:
        # mypyc has read the sources; the developer saves an edit before the build ends.
        edited.write_text(edited.read_text() + "\n# edited during the build\n")
        return []

    monkeypatch.setattr(tool, "ROOT", tree)
    monkeypatch.setattr(tool, "unavailable", lambda: None)
    monkeypatch.setattr(tool, "extensions", extensions_while_editing)
    monkeypatch.setattr("setuptools.setup", lambda **kwargs: kwargs["ext_modules"])
    monkeypatch.chdir(tmp_path)  # build() changes directory: restored after the test

    assert tool.build() == 0
    recorded = json.loads((tree / "tiered_cache" / "compiled.json").read_text())
    assert recorded["modules"][tool.MODULES[0]] == as_read
    assert as_read != hashlib.sha256(edited.read_bytes()).hexdigest()  # the edit was made
