"""The published R50 4-scale Focus-DETR config in graph mode on a real coco_tiny image: forward and one step;
and the DINO-equivalent encoder (``token_selection=False``) the benchmark compares it with.

``configs/focus_detr/focus_detr_r50_4scale_12ep.yaml`` is built unchanged (6 + 6 layers, width 256, 900 queries,
cascade and OESM sizes as published) through ``src.models.build_model``; only the input is small: one real
train2017 image resized to 240 px short side / 320 px long side (the data pipeline's eval transform) and
zero-padded into a 320 x 320 batch, so the padding mask is exercised. Random weights (no download).

Nothing is reduced for time: the runtime (about 100 s on a quiet 2-core CPU) is almost all graph compilation of the
full model (about 30 s for the inference graph, 70 s for the training step with denoising), which neither the
image size nor the query counts change much.
"""

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Tensor, nn
from transformers import DeformableDetrConfig
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrEncoder

from src.config import family_defaults, load_config
from src.data.catalog import resolve_num_classes
from src.data.coco import image_dir, load_coco_split
from src.data.dataset import BatchPadder
from src.data.transforms import build_eval_transform, prepare_target
from src.engine.optim.adamw import build_optimizer
from src.engine.train_step import TrainStep
from src.evaluation.predict import load_image
from src.layers.ms_deform_attn import level_start_indices
from src.models import build_model
from src.models.focus_detr.encoder import FocusDETREncoder
from src.models.focus_detr.model import encoder_reference_points
from tests.conftest import REPO_ROOT

CONFIG = REPO_ROOT / "configs" / "focus_detr" / "focus_detr_r50_4scale_12ep.yaml"
PAD = (320, 320)
MAX_BOXES = 20


@pytest.fixture(scope="module")
def real_batch(shared_data):
    """One real train2017 image with at least two boxes, as the training pipeline batches it."""
    coco = shared_data / "coco_tiny"
    records, _, _ = load_coco_split(coco, "train2017")
    record = next(r for r in records if (r.iscrowd == 0).sum() >= 2)
    rgb = load_image(image_dir(coco, "train2017") / record.file_name)
    boxes, labels = prepare_target(record.boxes, record.category_ids, record.iscrowd, record.height, record.width)
    transform = build_eval_transform({**family_defaults("focus_detr")["data"], "eval_size": 240,
                                      "eval_max_size": PAD[1]})
    image, cxcywh, labels = transform(rgb, boxes, labels, None)
    padded = BatchPadder([PAD], MAX_BOXES)([image], [cxcywh], [labels], [record.image_id],
                                          [np.array([record.height, record.width])], [np.array(image.shape[1:])])
    image, mask, tgt_boxes, tgt_labels, tgt_valid, _, orig_size, _ = padded
    assert mask.any() and not mask.all()  # the resized image does not fill the 320 x 320 pad
    return {"net_inputs": (Tensor(image), Tensor(mask)), "targets": (Tensor(tgt_boxes), Tensor(tgt_labels),
                                                                    Tensor(tgt_valid)),
            "orig_size": Tensor(orig_size.astype(np.float32)), "labels": labels}


def test_r50_4scale_forward_and_training_step(real_batch):
    cfg = resolve_num_classes(load_config(CONFIG))
    model_cfg = cfg["model"]
    assert (model_cfg["backbone"], model_cfg["embed_dim"], model_cfg["num_queries"]) == ("resnet50", 256, 900)
    detector = build_model(cfg)
    network = detector.network

    network.set_train(False)
    outputs = network(*real_batch["net_inputs"])
    logits, boxes = outputs[0].asnumpy(), outputs[1].asnumpy()
    queries, classes = model_cfg["num_queries"], model_cfg["num_classes"]
    assert logits.shape == (model_cfg["dec_layers"], 1, queries, classes)
    assert boxes.shape == (model_cfg["dec_layers"], 1, queries, 4)
    assert np.isfinite(logits).all() and (boxes >= 0).all() and (boxes <= 1).all()
    scores, labels, xyxy = (t.asnumpy() for t in detector.postprocess(*outputs, real_batch["orig_size"]))
    select = model_cfg["num_select"]
    assert scores.shape == (1, select) and labels.shape == (1, select) and xyxy.shape == (1, select, 4)
    height, width = real_batch["orig_size"].asnumpy()[0]
    # Sigmoid cxcywh boxes scaled by the original size: centres inside the image, corners ordered (not clamped).
    centre_x, centre_y = (xyxy[..., 0] + xyxy[..., 2]) / 2, (xyxy[..., 1] + xyxy[..., 3]) / 2
    assert (centre_x >= -1e-3).all() and (centre_x <= width + 1e-3).all()
    assert (centre_y >= -1e-3).all() and (centre_y <= height + 1e-3).all()
    assert (xyxy[..., 2] >= xyxy[..., 0]).all() and (xyxy[..., 3] >= xyxy[..., 1]).all()

    optimizer = build_optimizer(network, cfg["train"], steps_per_epoch=1)
    step = TrainStep(detector.train_network, optimizer, clip_max_norm=cfg["train"]["clip_max_norm"])
    step.set_train(True)
    before = {p.name: p.asnumpy().copy() for p in network.get_parameters()}
    loss, loss_terms, grad_norm = step(*real_batch["net_inputs"], *real_batch["targets"])
    assert np.isfinite(loss.asnumpy()) and float(loss.asnumpy()) > 0
    assert np.isfinite(loss_terms.asnumpy()).all()
    assert np.isfinite(grad_norm.asnumpy()) and float(grad_norm.asnumpy()) > 0
    after = {p.name: p.asnumpy() for p in network.get_parameters()}
    trainable = {p.name for p in network.trainable_params()}
    changed = {name for name in trainable if not np.array_equal(before[name], after[name])}
    # Transformer, heads and the trained backbone stages move; the frozen stem does not.
    for name in ("class_embed.0.weight", "transformer.enc_mask_predictor.layer1.1.weight",
                 "transformer.encoder.layers.0.attentions.1.sampling_offsets.weight", "neck.convs.0.conv.weight",
                 "backbone.body.layer4.2.conv3.weight"):
        assert name in changed, name
    assert len(changed) >= 0.9 * len(trainable), sorted(trainable - changed)[:20]
    frozen = [name for name in before if name not in trainable]
    assert "backbone.body.conv1.weight" in frozen
    assert all(np.array_equal(before[name], after[name]) for name in frozen)


DENSE_SHAPES = ((6, 8), (3, 4), (2, 2), (1, 1))
# transformers' DeformableDetrEncoderLayer name -> ours inside FocusDETREncoder.layers.{i}.
_HF_TO_OURS = {"self_attn.": "attentions.1.", "self_attn_layer_norm.weight": "norms.0.gamma",
               "self_attn_layer_norm.bias": "norms.0.beta", "mlp.fc1.": "ffns.0.layers.0.0.",
               "mlp.fc2.": "ffns.0.layers.1.", "final_layer_norm.weight": "norms.1.gamma",
               "final_layer_norm.bias": "norms.1.beta"}


class _DenseEncoder(nn.Cell):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def construct(self, feat, pos, mask, refs):
        # The selector inputs are unused without token selection; placeholders of the right kinds.
        return self.encoder(feat, pos, mask, refs, feat[:, :, 0], mask.astype(ms.int32), (mask,), DENSE_SHAPES)


def test_dense_encoder_matches_deformable_detr_encoder():
    """token_selection=False equals transformers' Deformable DETR encoder (DINO's) with the same random weights."""
    rng = np.random.default_rng(3)
    batch, dim, heads, points, ffn, layers = 2, 16, 4, 2, 32, 2
    tokens = sum(h * w for h, w in DENSE_SHAPES)
    ours = FocusDETREncoder(nn.Dense(dim, 5), dim, heads, ffn, layers, len(DENSE_SHAPES), points,
                            token_selection=False)
    config = DeformableDetrConfig(d_model=dim, encoder_layers=layers, encoder_attention_heads=heads,
                                  encoder_ffn_dim=ffn, encoder_n_points=points, num_feature_levels=len(DENSE_SHAPES),
                                  activation_function="relu", dropout=0.0, disable_custom_kernels=True)
    theirs = DeformableDetrEncoder(config).eval()
    params = dict(ours.parameters_and_names())
    copied = set()
    with torch.no_grad():
        for name, tensor in theirs.named_parameters():
            layer, rest = name.removeprefix("layers.").split(".", 1)
            target = next(rest.replace(k, v, 1) for k, v in _HF_TO_OURS.items() if rest.startswith(k))
            data = rng.standard_normal(tuple(tensor.shape)).astype(np.float32) * 0.3
            if "norm" in rest and rest.endswith("weight"):
                data += 1.0
            tensor.copy_(torch.from_numpy(data))
            params[f"layers.{layer}.{target}"].set_data(Tensor(data))
            copied.add(f"layers.{layer}.{target}")
    unused = {n for n in params if n not in copied}
    assert all(".attentions.0." in n or ".norm2." in n or n.startswith("enhance_mcsp.") for n in unused), unused

    # Image 0 fills the pad; image 1 has padding at the bottom/right of every level.
    level_masks = []
    for height, width in DENSE_SHAPES:
        mask = np.zeros((batch, height, width), bool)
        mask[1, max(1, height - 1):] = True
        mask[1, :, max(1, width - 1):] = True
        level_masks.append(mask)
    mask = np.concatenate([m.reshape(batch, -1) for m in level_masks], axis=1)
    valid_ratios = np.stack([np.stack([(~m[:, 0, :]).sum(1) / m.shape[2], (~m[:, :, 0]).sum(1) / m.shape[1]], -1)
                             for m in level_masks], axis=1).astype(np.float32)
    feat = rng.standard_normal((batch, tokens, dim)).astype(np.float32)
    pos = rng.standard_normal((batch, tokens, dim)).astype(np.float32)
    refs = encoder_reference_points(DENSE_SHAPES, Tensor(valid_ratios))

    out = _DenseEncoder(ours)(Tensor(feat), Tensor(pos), Tensor(mask), refs).asnumpy()
    with torch.no_grad():
        expected = theirs(inputs_embeds=torch.tensor(feat), attention_mask=torch.tensor(~mask),
                          spatial_position_embeddings=torch.tensor(pos),
                          spatial_shapes=torch.tensor(DENSE_SHAPES), spatial_shapes_list=list(DENSE_SHAPES),
                          level_start_index=torch.tensor(level_start_indices(DENSE_SHAPES)),
                          valid_ratios=torch.tensor(valid_ratios)).last_hidden_state.numpy()
    assert np.abs(out - feat).max() > 0.1  # the layers did something
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)
