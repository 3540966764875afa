"""export.py: the exported inference graph equals InferenceNet on a real image; formats, sizes and failures.

One tiny DETR (random init, configs/detr/detr_tiny.yaml, 160 px) is saved, exported through the CLI and
loaded back with ``ms.load`` + ``nn.GraphCell``, i.e. without any Python model code. The same holds for the
tiny Focus-DETR (through the CLI) and for DETR-R50 (random weights, a 256 px export shape, in-process; its
InferenceNet runs in PyNative, so that the R50 graph is compiled for the export and the loaded graph only).
"""

import os
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

import export as export_cli
from src.checkpoint import save_checkpoint
from src.config import load_config
from src.data.dataset import BatchPadder
from src.data.transforms import build_eval_transform
from src.deploy.bin_io import DeployError
from src.deploy.export import example_inputs, export_graph, output_path, resolve_image_size
from src.evaluation.predict import load_image
from src.models import build_model

ROOT = Path(__file__).resolve().parents[1]
TINY = "configs/detr/detr_tiny.yaml"
FOCUS_TINY = "configs/focus_detr/focus_detr_tiny.yaml"
DETR_R50 = "configs/detr/detr_r50.yaml"
# R50 at a small export shape: the eval resize and the single pad bucket shrink together.
R50_SMALL = ["data.eval_size=192", "data.eval_max_size=256", "data.eval_pad_buckets=[[256, 256]]"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-init tiny DETR saved as a checkpoint, and its InferenceNet loaded back from that file."""
    from src.models import build_inference_net

    folder = tmp_path_factory.mktemp("tiny")
    cfg = load_config(ROOT / TINY)
    ms.set_seed(3)
    checkpoint = save_checkpoint(folder / "tiny.ckpt", build_model(cfg).network)
    return {"cfg": cfg, "checkpoint": checkpoint, "net": build_inference_net(cfg, checkpoint), "dir": folder}


def _padded_real_image(shared_data, data_cfg):
    """A portrait coco_tiny val image at ``data_cfg``'s eval settings, padded to its single eval bucket.

    Returns (image float32 [1, 3, H, W], mask bool [1, H, W], orig_size int32 [1, 2]); the mask has padding.
    """
    path = shared_data / "coco_tiny" / "val2017" / "000000005001.jpg"
    image = load_image(path)
    if image.shape[0] <= image.shape[1]:
        image = np.ascontiguousarray(image.transpose(1, 0, 2))
    resized, _, _ = build_eval_transform(data_cfg)(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int32), None)
    size = np.array(image.shape[:2], np.int32)
    batch = BatchPadder(data_cfg["eval_pad_buckets"], max_boxes=1)(
        [resized], [np.zeros((0, 4), np.float32)], [np.zeros(0, np.int32)], [5001], [size],
        [np.array(resized.shape[1:], np.int32)])
    assert batch[1].any() and not batch[1].all()  # both real pixels and padding
    return batch[0], batch[1], size[None]


def _assert_graph_equals_net(graph, net, real_input, num_outputs, pynative_net=False):
    """The loaded graph's (scores, labels, boxes) equal the InferenceNet's: shapes, dtypes, values within 1e-5.

    ``pynative_net`` runs the InferenceNet in PyNative (no graph compilation of it); the loaded graph always runs
    in graph mode.
    """
    inputs = [ms.Tensor(a) for a in real_input]
    if pynative_net:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    expected = [t.asnumpy() for t in net(*inputs)]
    ms.set_context(mode=ms.GRAPH_MODE)
    got = [t.asnumpy() for t in graph(*inputs)]
    assert [g.shape for g in got] == [(1, num_outputs), (1, num_outputs), (1, num_outputs, 4)]
    assert [g.dtype for g in got] == [np.float32, np.int32, np.float32]
    np.testing.assert_allclose(got[0], expected[0], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[2], expected[2], rtol=0, atol=1e-5 * float(real_input[2].max()))
    return got


@pytest.fixture(scope="module")
def real_input(shared_data, tiny):
    """The real image at the tiny DETR's eval settings, padded to its 160x160 export shape."""
    return _padded_real_image(shared_data, tiny["cfg"]["data"])


def _run_cli(args, cwd=ROOT):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def exported(tiny):
    """export.py run as a user runs it, MINDIR at the default size into a fresh folder."""
    out_dir = tiny["dir"] / "export"
    proc = _run_cli(["export.py", "--config", TINY, "--checkpoint", str(tiny["checkpoint"]),
                     "--export_file_format", "MINDIR", "--file_name", str(out_dir / "detr_tiny")])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"path": out_dir / "detr_tiny.mindir", "dir": out_dir, "stdout": proc.stdout}


def test_mindir_graphcell_equals_inference_net_on_a_real_image(tiny, exported, real_input):
    assert sorted(p.name for p in exported["dir"].iterdir()) == ["detr_tiny.mindir"]  # no temp file, no .mindir.mindir
    assert "[1, 3, 160, 160]" in exported["stdout"]
    graph = nn.GraphCell(ms.load(str(exported["path"])))
    got = _assert_graph_equals_net(graph, tiny["net"], real_input, tiny["cfg"]["model"]["num_queries"])
    # Boxes come out scaled to the original image (480x640 here), far beyond the 160 px input.
    assert got[2][..., 2:].max() > 160


def test_focus_detr_mindir_through_the_cli_equals_inference_net(tmp_path, shared_data):
    from src.data.coco_classes import COCO_CATEGORY_NAMES
    from src.models import build_inference_net

    cfg = load_config(ROOT / FOCUS_TINY)
    ms.set_seed(4)
    checkpoint = save_checkpoint(tmp_path / "focus_tiny.ckpt", build_model(cfg).network)
    proc = _run_cli(["export.py", "--config", FOCUS_TINY, "--checkpoint", str(checkpoint), "--file_name",
                     str(tmp_path / "export" / "focus_tiny")])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["focus_tiny.mindir"]
    graph = nn.GraphCell(ms.load(str(tmp_path / "export" / "focus_tiny.mindir")))
    real_input = _padded_real_image(shared_data, cfg["data"])
    got = _assert_graph_equals_net(graph, build_inference_net(cfg, checkpoint), real_input,
                                   cfg["model"]["num_select"])
    # Sigmoid top-k detections sorted by score, labelled with raw COCO category ids.
    assert np.all(np.diff(got[0][0]) <= 0)
    assert set(got[1][0].tolist()) <= set(COCO_CATEGORY_NAMES)
    # The exported graph clips to the original image (detectron2 detector_postprocess), as the eval network does.
    height, width = (float(v) for v in real_input[2][0])
    assert got[2][0][:, 0::2].min() >= 0 and got[2][0][:, 0::2].max() <= width
    assert got[2][0][:, 1::2].min() >= 0 and got[2][0][:, 1::2].max() <= height


def test_detr_r50_mindir_equals_inference_net(tmp_path, shared_data):
    cfg = load_config(ROOT / DETR_R50, R50_SMALL)
    ms.set_seed(6)
    detector = build_model(cfg)
    net = detector.inference_network
    net.set_train(False)
    height, width = resolve_image_size(cfg)
    path = export_graph(net, example_inputs(height, width), tmp_path / "detr_r50", "MINDIR")
    real_input = _padded_real_image(shared_data, cfg["data"])
    _assert_graph_equals_net(nn.GraphCell(ms.load(str(path))), net, real_input, cfg["model"]["num_queries"],
                             pynative_net=True)


def test_onnx_export_runs_in_onnxruntime_or_fails_with_the_exporters_message(tiny, real_input, tmp_path):
    inputs = [ms.Tensor(a) for a in real_input]
    try:
        path = export_graph(tiny["net"], inputs, tmp_path / "detr_tiny", "ONNX")
    except DeployError as error:
        message = str(error)
        assert message.startswith("MindSpore's ONNX exporter failed: ")
        assert len(message) > len("MindSpore's ONNX exporter failed: ") + 10  # the exporter's own reason follows
        assert "C++ Call Stack" not in message
        assert list(tmp_path.iterdir()) == []
        return
    assert path == tmp_path / "detr_tiny.onnx" and sorted(tmp_path.iterdir()) == [path]
    ort = pytest.importorskip("onnxruntime", reason="ONNX export worked; onnxruntime is needed to run it")
    session = ort.InferenceSession(str(path))
    feeds = {node.name: array for node, array in zip(session.get_inputs(), real_input)}
    expected = [t.asnumpy() for t in tiny["net"](*inputs)]
    for got, want in zip(session.run(None, feeds), expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(1.0, float(np.abs(want).max())))


def _main_args(tiny, out_dir, *extra):
    return ["--config", TINY, "--checkpoint", str(tiny["checkpoint"]), "--file_name", str(out_dir / "m"), *extra]


def test_air_on_cpu_fails_clearly_before_building_anything(tiny, tmp_path):
    with pytest.raises(DeployError, match="AIR needs Ascend"):
        export_cli.main(_main_args(tiny, tmp_path, "--export_file_format", "AIR", "--device_target", "CPU"))
    with pytest.raises(DeployError, match="AIR needs Ascend"):
        export_graph(tiny["net"], [], tmp_path / "m", "air", device_target="GPU")
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_errors_as_one_line_without_traceback(tiny, tmp_path):
    proc = _run_cli(["export.py", *_main_args(tiny, tmp_path, "--export_file_format", "AIR")])
    assert proc.returncode != 0
    assert "export.py: error: AIR needs Ascend" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, message", [
    (["--export_file_format", "PB"], "unknown export format 'PB'"),
    (["--image_size", "100", "100"], "not one of the config's data.eval_pad_buckets"),
    (["--image_size", "128", "160", "--set", "data.eval_pad_buckets=[[160, 160], [128, 160]]"],
     "smaller than needed"),
    (["--image_size", "0", "160"], "two positive integers"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
])
def test_bad_options_fail_clearly_and_leave_nothing(tiny, tmp_path, extra, message):
    with pytest.raises(DeployError, match=message):
        export_cli.main(_main_args(tiny, tmp_path, *extra))
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_fails_clearly(tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(DeployError, match=f"checkpoint '{missing}' does not exist"):
        export_cli.main(["--config", TINY, "--checkpoint", str(missing), "--file_name", str(tmp_path / "m")])
    assert list(tmp_path.iterdir()) == []


def test_a_failing_exporter_leaves_no_partial_file(tiny, tmp_path, monkeypatch):
    def half_written(net, *inputs, file_name, file_format):
        Path(file_name + ".mindir").write_bytes(b"\x00" * 100)
        raise RuntimeError("disk full\n----\n- C++ Call Stack: (For framework developers)")

    monkeypatch.setattr(ms, "export", half_written)
    (tmp_path / "m.mindir").write_bytes(b"previous good export")
    with pytest.raises(DeployError, match="MindSpore's MINDIR exporter failed: disk full$"):
        export_graph(tiny["net"], [], tmp_path / "m", "MINDIR")
    assert [p.name for p in tmp_path.iterdir()] == ["m.mindir"]
    assert (tmp_path / "m.mindir").read_bytes() == b"previous good export"


def test_extension_is_added_once_and_size_defaults_to_the_largest_bucket():
    assert output_path("out/detr", "MINDIR") == Path("out/detr.mindir")
    assert output_path("out/detr.mindir", "mindir") == Path("out/detr.mindir")
    assert output_path("out/detr.v2", "ONNX") == Path("out/detr.v2.onnx")
    cfg = load_config(ROOT / TINY, ["data.eval_pad_buckets=[[160, 160], [192, 160], [160, 176]]"])
    assert resolve_image_size(cfg) == (192, 160)
    assert resolve_image_size(cfg, [160, 176]) == (160, 176)
