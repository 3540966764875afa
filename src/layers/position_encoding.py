"""Sine positional encoding of a 2-D feature map, computed from its padding mask.

Follows facebookresearch/detr ``models/position_encoding.py::PositionEmbeddingSine`` with ``normalize=True``:
the running count of valid pixels along each axis is normalized to ``(0, 2*pi]`` per image (so padding does
not change the encoding of the valid region), divided by ``temperature ** (2 * (i // 2) / num_pos_feats)``,
and passed through sin (even channels) and cos (odd channels), interleaved. The y encoding comes first.
"""

import math

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from src.layers.expand import expand_to


class PositionEmbeddingSine(nn.Cell):
    """Parameter-free 2-D sine embedding.

    Args:
        num_pos_feats: Channels per axis ``F``; the output has ``2F`` channels (DETR: ``hidden_dim // 2``).
        temperature: Base of the geometric frequency progression (DETR: 10000).
        scale: Range the normalized coordinates are stretched to (DETR: ``2*pi``).
        eps: Added to the per-image extent before dividing (DETR: 1e-6).

    Inputs:
        mask (Tensor[bool]): ``[B, H, W]``, True on padding.

    Outputs:
        Tensor[float32]: ``[B, 2F, H, W]``; channels ``0..F-1`` encode y, ``F..2F-1`` encode x.
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000, scale: float = 2 * math.pi,
                 eps: float = 1e-6):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.scale = scale
        self.eps = eps
        index = np.arange(num_pos_feats, dtype=np.float32)
        dim_t = np.power(np.float32(temperature), 2 * np.floor(index / 2) / num_pos_feats).astype(np.float32)
        self.dim_t = Tensor(dim_t, ms.float32)

    def _encode(self, embed):
        # embed [B, H, W] -> [B, F, H, W], sin/cos interleaved along the channels. Built channel-first, so no
        # Transpose kernel runs (src/layers/channel_first.py), and divided with both operands expanded: a
        # broadcasting division keeps index tables in a compiled CPU graph (src/layers/expand.py).
        b, h, w = embed.shape
        shape = (b, self.num_pos_feats, h, w)
        pos = expand_to(embed[:, None], shape) / expand_to(self.dim_t[:, None, None], shape)
        pos = ops.stack((ops.sin(pos[:, 0::2]), ops.cos(pos[:, 1::2])), axis=2)
        return pos.reshape(shape)

    def construct(self, mask):
        not_mask = ops.logical_not(mask).astype(ms.float32)
        y_embed = ops.cumsum(not_mask, axis=1)
        x_embed = ops.cumsum(not_mask, axis=2)
        y_embed = y_embed / (y_embed[:, -1:, :] + self.eps) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + self.eps) * self.scale
        return ops.concat((self._encode(y_embed), self._encode(x_embed)), axis=1)
