"""The three distributions' metadata: one version, exact pins, licence files, absolute links."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tiered_cache.cli import main, version_text

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = {"redis": "tiered-cache-redis", "dynamodb": "tiered-cache-dynamodb"}


def _project(directory: Path) -> dict[str, Any]:
    with (directory / "pyproject.toml").open("rb") as file:
        project: dict[str, Any] = tomllib.load(file)["project"]
    return project


CORE = _project(ROOT)
VERSION = CORE["version"]


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_an_adapter_has_the_core_version_and_pins_the_core_exactly(adapter: str) -> None:
    project = _project(ROOT / "adapters" / adapter)
    assert project["name"] == ADAPTERS[adapter]
    assert project["version"] == VERSION
    core_requirements = [dep for dep in project["dependencies"] if dep.startswith("tiered-cache")]
    assert core_requirements == [f"tiered-cache=={VERSION}"]


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_the_core_extra_of_an_adapter_pins_its_version(adapter: str) -> None:
    assert CORE["optional-dependencies"][adapter] == [f"{ADAPTERS[adapter]}=={VERSION}"]


def test_all_names_every_backend_extra() -> None:
    (requirement,) = CORE["optional-dependencies"]["all"]
    match = re.fullmatch(r"tiered-cache\[(.*)\]", requirement)
    assert match is not None
    named = set(match.group(1).split(","))
    assert set(ADAPTERS) <= named
    assert named <= set(CORE["optional-dependencies"]) - {"all", "dev", "docs", "examples"}


def test_testing_extra_provides_pytest_for_the_conformance_suite() -> None:
    assert any(dep.startswith("pytest") for dep in CORE["optional-dependencies"]["testing"])


@pytest.mark.parametrize("directory", [".", "adapters/redis", "adapters/dynamodb"])
def test_licence_readme_and_urls_are_declared(directory: str) -> None:
    project = _project(ROOT / directory)
    assert project["license"] == "Apache-2.0"  # an SPDX expression, not the deprecated table
    for pattern in project["license-files"]:
        licence = ROOT / directory / pattern
        assert licence.read_text() == (ROOT / "LICENSE").read_text()
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert (ROOT / directory / project["readme"]).is_file()
    assert project["urls"]["Documentation"] == CORE["urls"]["Documentation"]
    assert not any(c.startswith("License ::") for c in project["classifiers"])


@pytest.mark.parametrize(
    "readme", ["README.md", "adapters/redis/README.md", "adapters/dynamodb/README.md"]
)
def test_readme_links_are_absolute_so_they_work_on_a_package_index(readme: str) -> None:
    text = (ROOT / readme).read_text()
    targets = re.findall(r"\]\(([^)]+)\)", text)
    relative = [target for target in targets if not re.match(r"https?://|#", target)]
    assert relative == []


def test_the_changelog_has_an_entry_for_this_version() -> None:
    assert f"## {VERSION}" in (ROOT / "CHANGELOG.md").read_text()


def test_version_names_the_core_and_the_installed_adapters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    printed = capsys.readouterr().out.strip()
    assert printed == version_text()
    assert printed.startswith(f"tiered-cache {VERSION} (")
    for name in ADAPTERS.values():  # both are installed (editable) in the test environment
        assert f"{name} {VERSION}" in printed


def test_the_wheel_build_has_what_mypyc_needs_to_compile_the_core() -> None:
    """setup.py compiles the core into the wheel with mypyc, which type-checks what the
    compiled modules import: in a clean build environment (``python -m build``) a runtime
    dependency without its types there failed the compile, and the wheel was pure Python."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        requires = tomllib.load(file)["build-system"]["requires"]
    names = {re.split(r"[<>=!~\[ ]", requirement)[0].lower() for requirement in requires}
    assert "mypy" in names
    for dependency in CORE["dependencies"]:
        name = re.split(r"[<>=!~\[ ]", dependency)[0].lower()
        assert name in names or f"types-{name}" in names, name
