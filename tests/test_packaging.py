"""The wheel: one top-level package, ``stemdeck`` (issue 18 item 7). Bare ``models``/``engine``/
``gui`` would collide with other projects' packages in one environment."""

import subprocess
import sys
import zipfile

import pytest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    from test_import_graph import ROOT

    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (path,) = out.glob("stemdeck-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_installs_one_top_level_package(wheel):
    top = {name.split("/")[0] for name in wheel.namelist()}
    assert top == {"stemdeck", "stemdeck-0.1.0.dist-info"}


def test_the_wheel_holds_every_module_and_the_bundled_weights(wheel):
    from test_import_graph import _modules

    names = set(wheel.namelist())
    for module, path in _modules().items():
        inside = module.replace(".", "/") + ("/__init__.py" if path.name == "__init__.py" else ".py")
        assert inside in names, inside
    assert "stemdeck/models/weights/tiny.safetensors" in names
    assert "stemdeck/models/recipes/tiny.toml" in names
    assert "stemdeck/engine/audio/mixer.py" in names
