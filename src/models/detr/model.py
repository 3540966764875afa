"""DETR: ResNet backbone + transformer + set-prediction heads.

Follows facebookresearch/detr ``models/detr.py::DETR`` and ``build``. The model always returns the predictions
of every decoder layer (``[L, ...]``) so that the criterion can add auxiliary losses on layers ``0..L-2``;
whether it does is the criterion's business (``aux_loss`` is kept on the model only as information).

Parameter names mirror the torch-hub checkpoint (``backbone.0.body`` becomes ``backbone.body``; LayerNorm
``weight/bias`` become ``gamma/beta``; ``query_embed.weight`` becomes ``query_embed.embedding_table``).
"""

from mindspore import nn, ops
from mindspore.common.initializer import Normal

from src.backbones.resnet import RESNET_DEPTHS, Backbone
from src.layers.mlp import MLP
from src.layers.position_encoding import PositionEmbeddingSine
from src.models.contract import DYNAMIC_IMAGE, DYNAMIC_MASK, ORIG_SIZE, Detector, NetWithCriterion
from src.models.detr.criterion import build_criterion
from src.models.detr.postprocess import PostProcess
from src.models.detr.transformer import Transformer


class DETR(nn.Cell):
    """DEtection TRansformer.

    Args:
        backbone: Cell mapping ``(image, mask)`` to ``(feature [B, Cb, h, w], mask [B, h, w])``; must expose
            ``num_channels`` (``Cb``).
        transformer: ``Transformer`` with width ``C = transformer.d_model``.
        num_classes: Number of class ids ``K`` (COCO: 91, i.e. max id + 1); logit ``K`` is "no object".
        num_queries: Number of object queries ``Q``.
        position_temperature: Temperature of the sine position encoding.
        aux_loss: Recorded for the training code; does not change the outputs.

    Inputs:
        image (Tensor[float32]): ``[B, 3, H, W]`` ImageNet-normalized RGB, zero-padded bottom/right.
        mask (Tensor[bool]): ``[B, H, W]``, True on padding.

    Outputs:
        Tuple of ``pred_logits`` (Tensor[float32] ``[L, B, Q, K+1]``, unnormalized class scores) and
        ``pred_boxes`` (Tensor[float32] ``[L, B, Q, 4]``, ``(cx, cy, w, h)`` in ``[0, 1]`` relative to the
        unpadded image). Index ``-1`` along ``L`` is the final decoder layer.
    """

    def __init__(self, backbone: nn.Cell, transformer: Transformer, num_classes: int, num_queries: int,
                 position_temperature: float = 10000, aux_loss: bool = True):
        super().__init__()
        hidden_dim = transformer.d_model
        self.num_queries = num_queries
        self.aux_loss = aux_loss
        self.backbone = backbone
        self.position_embedding = PositionEmbeddingSine(hidden_dim // 2, temperature=position_temperature)
        self.transformer = transformer
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, 1, pad_mode="valid", has_bias=True)
        # torch's nn.Embedding draws from N(0, 1).
        self.query_embed = nn.Embedding(num_queries, hidden_dim, embedding_table=Normal(sigma=1.0))
        self.class_embed = nn.Dense(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)

    def construct(self, image, mask):
        pred_logits, pred_boxes, _, _, _ = self.forward_with_attention(image, mask)
        return pred_logits, pred_boxes

    def forward_with_attention(self, image, mask):
        """``construct``'s outputs, then ``feature_mask`` (bool ``[B, h, w]``, True on padding, the grid the
        attention keys live on), the last encoder layer's self-attention (float32 ``[B, heads, h*w, h*w]``) and the
        last decoder layer's cross-attention (float32 ``[B, heads, Q, h*w]``); keys in row-major ``h x w`` order.
        One forward: ``construct`` is this with the attention outputs unused."""
        feature, feature_mask = self.backbone(image, mask)
        pos = self.position_embedding(feature_mask)  # [B, C, h, w]
        query_embed = self.query_embed.embedding_table  # [Q, C]
        hs, _, encoder_weights, decoder_weights = self.transformer.forward_with_attention(
            self.input_proj(feature), feature_mask, query_embed, pos)
        pred_logits = self.class_embed(hs)  # [L, B, Q, K+1]
        pred_boxes = ops.sigmoid(self.bbox_embed(hs))  # [L, B, Q, 4]
        return pred_logits, pred_boxes, feature_mask, encoder_weights, decoder_weights


def build_detr(backbone: str = "resnet50", dilation: bool = False, num_classes: int = 91,
               hidden_dim: int = 256, nheads: int = 8, enc_layers: int = 6, dec_layers: int = 6,
               dim_feedforward: int = 2048, dropout: float = 0.1, num_queries: int = 100,
               aux_loss: bool = True, position_temperature: float = 10000,
               train_backbone: bool = True) -> DETR:
    """Build DETR from the keys of the config's ``model:`` section (without ``name``).

    Returns:
        DETR: randomly initialized model (torch-like initializers; xavier for the transformer).

    Raises:
        ValueError: If ``backbone`` is not a supported ResNet, or ``hidden_dim`` is not divisible by
            ``nheads``.
    """
    if backbone not in RESNET_DEPTHS:
        raise ValueError(f"unknown DETR backbone {backbone!r}; supported: {sorted(RESNET_DEPTHS)}")
    transformer = Transformer(d_model=hidden_dim, nhead=nheads, num_encoder_layers=enc_layers,
                              num_decoder_layers=dec_layers, dim_feedforward=dim_feedforward, dropout=dropout)
    return DETR(Backbone(backbone, dilation=dilation, train_backbone=train_backbone), transformer,
                num_classes=num_classes, num_queries=num_queries, position_temperature=position_temperature,
                aux_loss=aux_loss)


__all__ = ["DETR", "build_detector", "build_detr"]


def build_detector(model_cfg: dict, loss_cfg: dict, catalog, distributed: bool = False, seed: int = 0) -> Detector:
    """The :class:`~src.models.contract.Detector` of a ``detr`` config, from its ``model`` and ``loss`` sections.

    Args:
        model_cfg: the config's ``model`` section, ``num_classes`` resolved (:func:`src.models.build_model`).
        loss_cfg: the config's ``loss`` section.
        catalog: the dataset's :class:`src.data.catalog.Catalog` (DETR predicts raw category ids: unused).
        distributed: average the criterion's box count over ranks.
        seed: unused (dropout follows MindSpore's global seed).
    """
    model_cfg = {k: v for k, v in model_cfg.items() if k != "name"}
    network = build_detr(**model_cfg)
    criterion = build_criterion(num_classes=model_cfg["num_classes"], aux_loss=model_cfg["aux_loss"],
                                distributed=distributed, **loss_cfg)
    return Detector(network, PostProcess(), NetWithCriterion(network, criterion), ("loss_ce", "loss_bbox", "loss_giou"))


def unpadded_parts(net) -> list:
    """The parts of DETR's inference network that compile once for every image size (see
    :mod:`src.models.contract`): the whole network and post-process, one graph (none of its shapes needs a Python
    integer).

    Args:
        net: the :class:`src.models.contract.InferenceNet` of :func:`build_detector`.

    Returns:
        ``[(net, (DYNAMIC_IMAGE, DYNAMIC_MASK, ORIG_SIZE))]``.
    """
    return [(net, (DYNAMIC_IMAGE, DYNAMIC_MASK, ORIG_SIZE))]
