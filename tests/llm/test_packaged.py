"""A packaged GGUF is assembled once into the cache and reused while it is the file the installed package
ships (its ``EXPECTED_SHA256``); a file assembled from another version of the package is assembled again,
so the model loaded is the one the fingerprint (package and version) names."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from reallod.errors import ConfigError
from reallod.llm.backends.packaged import cache_dir, packaged_gguf


@pytest.fixture
def package(tmp_path, monkeypatch) -> types.ModuleType:
    """A stand-in model package: ``assemble`` writes the current ``content`` and counts its calls."""
    module = types.ModuleType("fake_model_pkg")
    module.MODEL_NAME = "fake.gguf"
    module.EXPECTED_SHA256 = "sha-v1"
    module.content = b"GGUF v1"
    module.calls = 0

    def assemble(path, overwrite=False):
        module.calls += 1
        Path(path).write_bytes(module.content)
        return Path(path)

    module.assemble = assemble
    monkeypatch.setitem(sys.modules, "fake_model_pkg", module)
    monkeypatch.setenv("REALLOD_CACHE", str(tmp_path / "cache"))
    return module


def test_assembled_once_then_reused(package):
    first = packaged_gguf("fake-model-pkg")
    assert first.read_bytes() == b"GGUF v1" and package.calls == 1
    assert packaged_gguf("fake-model-pkg") == first and package.calls == 1
    assert [p.name for p in first.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_another_version_of_the_package_is_assembled_again(package):
    path = packaged_gguf("fake-model-pkg")
    package.EXPECTED_SHA256, package.content = "sha-v2", b"GGUF v2"  # the package was upgraded
    assert packaged_gguf("fake-model-pkg") == path and path.read_bytes() == b"GGUF v2" and package.calls == 2
    assert packaged_gguf("fake-model-pkg").read_bytes() == b"GGUF v2" and package.calls == 2


def test_a_file_without_its_stamp_is_assembled_again(package):
    path = packaged_gguf("fake-model-pkg")
    path.with_name(".fake.gguf.sha256").unlink()  # assembled by a version that kept no stamp
    path.write_bytes(b"GGUF old")
    assert packaged_gguf("fake-model-pkg").read_bytes() == b"GGUF v1" and package.calls == 2


def test_a_package_without_a_checksum_reuses_its_file(package):
    del package.EXPECTED_SHA256
    packaged_gguf("fake-model-pkg")
    package.content = b"GGUF v2"
    assert packaged_gguf("fake-model-pkg").read_bytes() == b"GGUF v1" and package.calls == 1


def test_a_failed_assembly_names_the_package_and_leaves_nothing(package):
    def broken(path, overwrite=False):
        Path(path).write_bytes(b"half")
        raise ValueError("Assembled file sha256 did not match expected value")

    package.assemble = broken
    with pytest.raises(ConfigError, match=r"cannot assemble fake\.gguf from fake-model-pkg into .*sha256 did not"):
        packaged_gguf("fake-model-pkg")
    assert sorted(p.name for p in (cache_dir() / "models").iterdir()) == []
