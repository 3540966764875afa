"""The Ascend 310 C++ harness without an Ascend machine: lint, the file protocol, and the launcher's early stop.

clang-format and cppcheck check every C++ file, clang-tidy (checks in ascend310_infer/.clang-tidy) the one that
needs no MindSpore headers, src/utils.cc; the protocol helpers are compiled with the system C++ compiler into
``test/protocol_echo.cc`` and run on a folder written by the Python side (src/deploy/bin_io.py).
Missing tools skip these tests on a developer machine but FAIL under CI (``CI`` set), where .ci/run installs
them (apt: clang-format cppcheck clang-tidy g++).
"""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from src.deploy.bin_io import read_manifest, tensor_path, write_manifest, write_tensor

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "ascend310_infer"
CPP_FILES = sorted(str(p.relative_to(HARNESS)) for p in HARNESS.rglob("*") if p.suffix in (".cc", ".h"))
MINDSPORE_FREE = ["src/utils.cc", "test/protocol_echo.cc"]  # compiled here; clang-tidy runs on utils.cc


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install clang-format cppcheck clang-tidy g++)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"CI is set but {message}; .ci/run must install it")
        pytest.skip(message)
    return path


def _run(args, cwd=HARNESS, env=None):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_sources_are_found():
    assert {"src/main.cc", "src/utils.cc", "inc/utils.h", "test/protocol_echo.cc"} <= set(CPP_FILES)


def test_clang_format_clean():
    proc = _run([_tool("clang-format"), "--dry-run", "-Werror", *CPP_FILES])
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_cppcheck_clean():
    proc = _run([_tool("cppcheck"), "--error-exitcode=1", "--enable=warning,style,performance,portability",
                 "--std=c++17", "--language=c++", "-I", ".", "--suppress=missingIncludeSystem",
                 "--suppress=missingInclude", "-q", *[f for f in CPP_FILES if f.endswith(".cc")]])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_clang_tidy_clean_on_the_protocol_helpers():
    proc = _run([_tool("clang-tidy"), "--quiet", "src/utils.cc", "--", "-std=c++17", "-I", "."])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


@pytest.fixture(scope="module")
def protocol_echo(tmp_path_factory):
    compiler = shutil.which("c++") or _tool("g++")
    binary = tmp_path_factory.mktemp("echo") / "protocol_echo"
    proc = _run([compiler, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-I", ".", *MINDSPORE_FREE, "-o",
                 str(binary)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return binary


def test_cpp_helpers_follow_the_python_protocol(protocol_echo, tmp_path):
    inputs, results = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    results.mkdir()
    rng = np.random.default_rng(0)
    stems = ["000000000042", "000000000007", "000000123456"]  # deliberately not sorted: order comes from the manifest
    arrays = {}
    for stem in stems:
        arrays[stem] = [rng.standard_normal((1, 3, 8, 6)).astype(np.float32), rng.random((1, 8, 6)) > 0.5,
                        np.array([[480, 640]], np.int32)]
        for index, array in enumerate(arrays[stem]):
            write_tensor(tensor_path(inputs, stem, index), array)
    write_tensor(tensor_path(inputs, "000000000099", 0), np.zeros(3, np.float32))  # not listed: must be ignored
    write_manifest(inputs, stems)

    proc = _run([str(protocol_echo), f"--input_dir={inputs}", f"--result_dir={results}", "--num_inputs=3"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("3 images")
    assert read_manifest(results) == stems
    assert sorted(p.name for p in results.iterdir()) == sorted(
        ["manifest.txt"] + [tensor_path(results, s, i).name for s in stems for i in range(3)])
    for stem in stems:
        for index, array in enumerate(arrays[stem]):
            assert tensor_path(results, stem, index).read_bytes() == array.tobytes()


@pytest.mark.parametrize("manifest, message", [("000000000042\nabc\n", "line 2: 'abc'"), ("\n\n", "lists no images")])
def test_cpp_manifest_reader_rejects_bad_manifests(protocol_echo, tmp_path, manifest, message):
    (tmp_path / "manifest.txt").write_text(manifest)
    proc = _run([str(protocol_echo), f"--input_dir={tmp_path}", f"--result_dir={tmp_path}", "--num_inputs=3"])
    assert proc.returncode == 1 and message in proc.stderr


def test_run_infer_310_stops_early_without_the_ascend_toolkit(tmp_path, shared_data):
    mindir = tmp_path / "model.mindir"
    mindir.write_bytes(b"placeholder: the script must stop before reading it")
    coco = shared_data / "coco_tiny"
    args = ["bash", "scripts/run_infer_310.sh", str(mindir), str(coco),
            str(coco / "annotations" / "instances_val2017.json"), "Ascend"]
    env = dict(os.environ, OUTPUT_DIR=str(tmp_path / "out"))
    env.pop("ASCEND_HOME_PATH", None)
    proc = _run(args, cwd=ROOT, env=env)
    assert proc.returncode == 1 and "the Ascend toolkit was not found" in proc.stderr
    env.update(ASCEND_HOME_PATH=str(tmp_path), MINDSPORE_PATH=str(tmp_path))
    proc = _run(args, cwd=ROOT, env=env)
    assert proc.returncode == 1 and "the MindSpore C++ headers were not found" in proc.stderr
    assert not (tmp_path / "out").exists()
