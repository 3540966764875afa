"""export.py on DeFRCN: the exported MINDIR equals the eval network (InferenceNet) on a real coco_tiny image.

A random-init tiny DeFRCN (configs/defrcn/defrcn_tiny_base_coco.yaml) is saved as a checkpoint, exported by
``export.py``'s ``main`` (MINDIR, batch 1, the default size = the largest ``data.eval_pad_buckets`` entry),
loaded back with ``ms.load`` + ``nn.GraphCell`` (no Python model code) and run on the binaries that
``preprocess.py``'s code (:func:`src.deploy.pipeline.preprocess_split`) writes for the first val2017 image.

PCB (prototypical calibration of the scores, ``eval.pcb``) is not part of the exported graph: DeFRCN runs it
on the host after the network (:func:`src.evaluation.evaluate.evaluate_model`), so a deployment that wants PCB
scores must re-score the exported graph's outputs itself.
"""

from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

import export as export_cli
from src.checkpoint import save_checkpoint
from src.config import load_config
from src.data.dataset import create_dataset
from src.deploy.bin_io import input_specs, read_manifest, read_tensor, tensor_path
from src.deploy.pipeline import preprocess_split
from src.models import build_model

ROOT = Path(__file__).resolve().parents[1]
TINY = "configs/defrcn/defrcn_tiny_base_coco.yaml"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Checkpoint of a random-init tiny DeFRCN, its MINDIR (via export.py's main) and the reloaded InferenceNet."""
    from src.models import build_inference_net

    folder = tmp_path_factory.mktemp("defrcn_export")
    cfg = load_config(ROOT / TINY)
    ms.set_seed(5)
    checkpoint = save_checkpoint(folder / "tiny.ckpt", build_model(cfg).network)
    path = export_cli.main(["--config", TINY, "--checkpoint", str(checkpoint), "--export_file_format", "MINDIR",
                            "--file_name", str(folder / "out" / "defrcn_tiny")])
    return {"cfg": cfg, "path": Path(path), "dir": folder, "net": build_inference_net(cfg, checkpoint)}


@pytest.fixture(scope="module")
def real_input(shared_data, exported):
    """The first coco_tiny val2017 image as preprocess.py writes it (image, mask, orig_size) at the export size."""
    out = exported["dir"] / "bins"
    stems = preprocess_split(exported["cfg"], shared_data / "coco_tiny", "val2017", out, exported["dir"] / "mr",
                             max_images=1)
    assert read_manifest(out) == stems and len(stems) == 1
    height, width = max(exported["cfg"]["data"]["eval_pad_buckets"], key=lambda b: b[0] * b[1])
    return [read_tensor(tensor_path(out, stems[0], i), spec) for i, spec in enumerate(input_specs(height, width))]


def test_preprocessed_binaries_are_the_tensors_eval_feeds_defrcn(shared_data, exported, real_input):
    """preprocess_split and DeFRCN's eval both read the config's source (class subset, caffe BGR normalization),
    each into its own MindRecord folder: with the same single pad bucket both must give identical inputs."""
    data_cfg = {**exported["cfg"]["data"], "eval_pad_buckets": [list(real_input[1].shape[1:])]}
    dataset = create_dataset(shared_data / "coco_tiny", data_cfg, "val", exported["dir"] / "mr_eval", batch_size=1,
                             max_images=1)
    image, mask, orig_size = next(dataset.create_tuple_iterator(columns=["image", "mask", "orig_size"],
                                                                num_epochs=1, output_numpy=True))
    np.testing.assert_array_equal(real_input[0], image)
    np.testing.assert_array_equal(real_input[1], mask)
    np.testing.assert_array_equal(real_input[2], orig_size.astype(np.int32))
    assert real_input[1].any() and not real_input[1].all()  # real pixels and padding


def test_defrcn_mindir_graphcell_equals_inference_net_on_a_real_image(exported, real_input):
    assert sorted(p.name for p in exported["path"].parent.iterdir()) == ["defrcn_tiny.mindir"]  # no temp file left
    graph = nn.GraphCell(ms.load(str(exported["path"])))
    inputs = [ms.Tensor(a) for a in real_input]
    expected = [t.asnumpy() for t in exported["net"](*inputs)]
    got = [t.asnumpy() for t in graph(*inputs)]
    detections = exported["cfg"]["model"]["detections_per_image"]
    assert [g.shape for g in got] == [(1, detections), (1, detections), (1, detections, 4)]
    assert [g.dtype for g in got] == [np.float32, np.int32, np.float32]
    np.testing.assert_allclose(got[0], expected[0], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[2], expected[2], rtol=0, atol=1e-5 * float(real_input[2].max()))
    # Filled slots carry base-class COCO ids, and their boxes are scaled to the original image (far beyond the
    # 192 px input); a random-init net must still fill some slots, or the comparison above proves little.
    labels = got[1][0]
    filled = labels >= 0
    assert filled.any()
    base_ids = set(range(1, 91)) - {1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72}
    assert set(labels[filled].tolist()) <= base_ids
    assert got[2][0, filled, 2:].max() > max(real_input[0].shape[2:])
