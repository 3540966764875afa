"""Swin Transformer backbone for detection (Liu et al. 2021, "Swin Transformer: Hierarchical Vision Transformer
using Shifted Windows", sections 3.1-3.3).

Follows the detection variant used by detectron2 (``detectron2/modeling/backbone/swin.py``) and therefore by
detrex's Focus-DETR/DINO Swin configs, itself taken from Microsoft's Swin-Transformer-Object-Detection: images of
any size are padded bottom/right to the patch size, every block pads its map to a multiple of the window (the
padded zeros take part in attention as keys, exactly as in the reference), patch merging pads odd sizes, and the
outputs are the *pre-downsampling* stage features passed through one extra LayerNorm per returned stage
(``norm{i}``).

Parameter names mirror the PyTorch module tree, so a detrex checkpoint maps with the ``backbone.`` prefix and no
renames: ``patch_embed.proj.weight``, ``patch_embed.norm.weight``,
``layers.{i}.blocks.{j}.{norm1,norm2}.{weight,bias}``, ``layers.{i}.blocks.{j}.attn.relative_position_bias_table``,
``...attn.qkv.{weight,bias}`` (rows q, k, v), ``...attn.proj``, ``...mlp.fc1``, ``...mlp.fc2``,
``layers.{i}.downsample.{norm,reduction}`` and ``norm{i}.{weight,bias}``. The LayerNorm here keeps torch's
``weight``/``bias`` names (not MindSpore's ``gamma``/``beta``). The reference's buffer
``attn.relative_position_index`` is a constant here (derived from the window size) and is dropped on conversion.

Graph mode: every spatial size is read from the static input shape at compile time, so the padding amounts and
the shifted-window masks are compile-time constants; one graph is compiled per input bucket shape.
"""

from typing import Dict, Sequence, Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import TruncatedNormal, initializer

# Architecture presets (embed dim C, blocks per stage, heads per stage, window). The *_384 variants are the
# ImageNet-22k 384-px checkpoints with 12x12 windows (Swin-B/L as used by Focus-DETR's Swin-B-384 results).
SWIN_CONFIGS: Dict[str, Dict] = {
    "swin_t": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24), "window_size": 7},
    "swin_s": {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24), "window_size": 7},
    "swin_b": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32), "window_size": 7},
    "swin_b_384": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32), "window_size": 12},
    "swin_l": {"embed_dim": 192, "depths": (2, 2, 18, 2), "num_heads": (6, 12, 24, 48), "window_size": 7},
    "swin_l_384": {"embed_dim": 192, "depths": (2, 2, 18, 2), "num_heads": (6, 12, 24, 48), "window_size": 12},
}

# Attention logit added between tokens of different regions after the cyclic shift (value of the reference).
_SHIFT_MASK_VALUE = -100.0


def _dense(in_channels: int, out_channels: int, has_bias: bool = True) -> nn.Dense:
    # The reference initialises every Linear with trunc_normal(std=0.02) and zero bias.
    return nn.Dense(in_channels, out_channels, weight_init=TruncatedNormal(0.02), bias_init="zeros",
                    has_bias=has_bias)


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis with torch parameter names ``weight``/``bias``.

    Args:
        dim: Normalized size (last axis).
        eps: Variance epsilon; 1e-5 as in ``torch.nn.LayerNorm``.

    Inputs:
        x (Tensor[float32]): ``[..., dim]``.

    Outputs:
        Tensor[float32]: same shape.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = Parameter(Tensor(np.ones(dim, np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros(dim, np.float32)), name="bias")
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x):
        return self.layer_norm(x, self.weight, self.bias)[0]


class DropPath(nn.Cell):
    """Stochastic depth: drops the whole residual branch per sample with probability ``drop_prob`` in training.

    Kept samples are rescaled by ``1 / (1 - drop_prob)``; identity in inference (timm ``DropPath`` semantics).

    Inputs:
        x (Tensor[float32]): ``[B, ...]``.

    Outputs:
        Tensor[float32]: same shape.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def construct(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        keep = ops.floor(ops.rand(shape, dtype=x.dtype) + keep_prob)
        return x / keep_prob * keep


class Mlp(nn.Cell):
    """Block feed-forward: ``fc2(dropout(GELU(fc1(x))))`` with exact (erf) GELU, as torch's ``nn.GELU()``."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = _dense(dim, hidden_dim)
        self.fc2 = _dense(hidden_dim, dim)
        self.drop = nn.Dropout(p=drop)

    def construct(self, x):
        x = self.drop(ops.gelu(self.fc1(x), approximate="none"))
        return self.drop(self.fc2(x))


def _relative_position_index(window_size: int) -> np.ndarray:
    """``[N, N]`` int32 index into the bias table, ``N = ws * ws``, for the pair (query i, key j).

    The offset ``(dy, dx)`` between the two tokens is shifted to ``[0, 2ws-2]`` and flattened row-major over a
    ``(2ws-1) x (2ws-1)`` table (paper section 3.2, "Relative position bias").
    """
    coords = np.stack(np.meshgrid(np.arange(window_size), np.arange(window_size), indexing="ij")).reshape(2, -1)
    relative = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window_size - 1)
    return (relative[..., 0] * (2 * window_size - 1) + relative[..., 1]).astype(np.int32)


class WindowAttention(nn.Cell):
    """Multi-head self-attention inside non-overlapping windows with a learned relative position bias.

    Args:
        dim: Channels ``C``.
        window_size: Window side ``ws`` (tokens per window ``N = ws * ws``).
        num_heads: Heads ``h``.
        qkv_bias: Bias on the packed q/k/v projection.
        attn_drop: Dropout on the attention probabilities.
        proj_drop: Dropout after the output projection.

    Inputs:
        x (Tensor[float32]): ``[B * nW, N, C]`` windows.
        mask (Tensor[float32] or None): ``[nW, N, N]`` additive mask (0 or -100) for shifted windows.

    Outputs:
        Tensor[float32]: ``[B * nW, N, C]``.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.relative_position_bias_table = Parameter(
            initializer(TruncatedNormal(0.02), ((2 * window_size - 1) ** 2, num_heads), ms.float32),
            name="relative_position_bias_table",
        )
        self.relative_position_index = Tensor(_relative_position_index(window_size).reshape(-1), ms.int32)
        self.qkv = _dense(dim, 3 * dim, has_bias=qkv_bias)
        self.attn_drop = nn.Dropout(p=attn_drop)
        self.proj = _dense(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop)

    def construct(self, x, mask=None):
        windows, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(windows, tokens, 3, self.num_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]  # [B*nW, h, N, d]
        attn = ops.matmul(q, k.transpose(0, 1, 3, 2))
        bias = ops.gather(self.relative_position_bias_table, self.relative_position_index, 0)
        attn = attn + bias.reshape(tokens, tokens, self.num_heads).transpose(2, 0, 1)[None]
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.reshape(windows // num_windows, num_windows, self.num_heads, tokens, tokens)
            attn = (attn + mask[None, :, None]).reshape(windows, self.num_heads, tokens, tokens)
        attn = self.attn_drop(ops.softmax(attn, axis=-1))
        out = ops.matmul(attn, v).transpose(0, 2, 1, 3).reshape(windows, tokens, channels)
        return self.proj_drop(self.proj(out))


def _window_partition(x, window_size: int):
    """``[B, H, W, C]`` (H, W multiples of ws) -> ``[B * nW, ws * ws, C]``, windows in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)


def _window_reverse(windows, window_size: int, b: int, h: int, w: int):
    """Inverse of :func:`_window_partition`: ``[B * nW, ws * ws, C]`` -> ``[B, H, W, C]``."""
    c = windows.shape[-1]
    x = windows.reshape(b, h // window_size, w // window_size, window_size, window_size, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def _roll2d(x, shift: int):
    """Cyclic shift of ``[B, H, W, C]`` by ``shift`` along H and W (``torch.roll`` semantics).

    Written with slices and concat because the Roll kernel is not available on the MindSpore CPU backend.
    """
    height, width = x.shape[1], x.shape[2]
    s = shift % height
    if s:
        x = ops.concat((x[:, height - s:], x[:, :height - s]), 1)
    s = shift % width
    if s:
        x = ops.concat((x[:, :, width - s:], x[:, :, :width - s]), 2)
    return x


def _shift_window_mask(height: int, width: int, window_size: int, shift_size: int):
    """Additive ``[nW, N, N]`` mask for shifted windows of a (padded) ``height x width`` map.

    After the cyclic shift, windows on the bottom/right border contain tokens from up to three regions per axis
    (``[0, H-ws)``, ``[H-ws, H-shift)``, ``[H-shift, H)``) that were not neighbours in the image; pairs from
    different regions get -100 (paper section 3.2, "Efficient batch computation for shifted configuration").
    """
    rows = ops.arange(height)
    cols = ops.arange(width)
    row_region = (rows >= height - window_size).astype(ms.int32) + (rows >= height - shift_size).astype(ms.int32)
    col_region = (cols >= width - window_size).astype(ms.int32) + (cols >= width - shift_size).astype(ms.int32)
    region = (row_region[:, None] * 3 + col_region[None, :]).astype(ms.float32)
    region = _window_partition(region[None, :, :, None], window_size)[..., 0]  # [nW, N]
    different = (region[:, None, :] - region[:, :, None]) != 0
    return ops.select(different, ops.fill(ms.float32, different.shape, _SHIFT_MASK_VALUE),
                      ops.zeros(different.shape, ms.float32))


class SwinTransformerBlock(nn.Cell):
    """Pre-norm block: ``x + DropPath(W-MSA or SW-MSA(LN(x)))`` then ``x + DropPath(MLP(LN(x)))``.

    Inputs:
        x (Tensor[float32]): ``[B, H * W, C]`` tokens in row-major order.
        height, width (int): static map size.
        attn_mask (Tensor[float32] or None): shifted-window mask for the padded map (shifted blocks only).

    Outputs:
        Tensor[float32]: ``[B, H * W, C]``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift_size: int = 0, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size={shift_size} must be in [0, window_size={window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def construct(self, x, height: int, width: int, attn_mask=None):
        b, _, c = x.shape
        ws = self.window_size
        shortcut = x
        x = self.norm1(x).reshape(b, height, width, c)
        pad_bottom = (ws - height % ws) % ws
        pad_right = (ws - width % ws) % ws
        if pad_bottom or pad_right:
            x = ops.pad(x, (0, 0, 0, pad_right, 0, pad_bottom))
        hp, wp = height + pad_bottom, width + pad_right
        if self.shift_size:
            x = _roll2d(x, -self.shift_size)
        x = self.attn(_window_partition(x, ws), attn_mask if self.shift_size else None)
        x = _window_reverse(x, ws, b, hp, wp)
        if self.shift_size:
            x = _roll2d(x, self.shift_size)
        if pad_bottom or pad_right:
            x = x[:, :height, :width]
        x = shortcut + self.drop_path(x.reshape(b, height * width, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Cell):
    """2x downsampling: concatenate each 2x2 neighbourhood (order (0,0), (1,0), (0,1), (1,1) as (dy, dx)),
    LayerNorm over 4C, then a bias-free linear map to 2C. Odd sizes are zero-padded bottom/right first.

    Inputs:
        x (Tensor[float32]): ``[B, H * W, C]``; height, width (int): static size.

    Outputs:
        Tensor[float32]: ``[B, ceil(H/2) * ceil(W/2), 2C]``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = LayerNorm(4 * dim)
        self.reduction = _dense(4 * dim, 2 * dim, has_bias=False)

    def construct(self, x, height: int, width: int):
        b, _, c = x.shape
        x = x.reshape(b, height, width, c)
        if height % 2 or width % 2:
            x = ops.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        h2, w2 = (height + 1) // 2, (width + 1) // 2
        # [B, H/2, dy, W/2, dx, C] -> [B, H/2, W/2, dx, dy, C]: channel groups come out in the reference's
        # (dy, dx) order (0,0), (1,0), (0,1), (1,1). A reshape instead of step-2 slices, whose gradient
        # (StridedSliceGrad) fails on the MindSpore CPU backend.
        x = x.reshape(b, h2, 2, w2, 2, c).transpose(0, 1, 3, 4, 2, 5)
        return self.reduction(self.norm(x.reshape(b, h2 * w2, 4 * c)))


class BasicLayer(nn.Cell):
    """One stage: ``depth`` blocks alternating regular and shifted windows, then optional patch merging.

    Inputs:
        x (Tensor[float32]): ``[B, H * W, C]``; height, width (int): static size.

    Outputs:
        tuple: (stage output before downsampling ``[B, H * W, C]``, downsampled tokens
        ``[B, ceil(H/2) * ceil(W/2), 2C]`` or the stage output itself when there is no downsample).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int = 7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: Sequence[float] = (), downsample: bool = True):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        drop_path = list(drop_path) or [0.0] * depth
        self.blocks = nn.CellList([
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else self.shift_size, mlp_ratio,
                                 qkv_bias, drop, attn_drop, drop_path[i])
            for i in range(depth)
        ])
        self.downsample = PatchMerging(dim) if downsample else None

    def construct(self, x, height: int, width: int):
        ws = self.window_size
        hp = -(-height // ws) * ws
        wp = -(-width // ws) * ws
        attn_mask = _shift_window_mask(hp, wp, ws, self.shift_size)
        for block in self.blocks:
            x = block(x, height, width, attn_mask)
        if self.downsample is None:
            return x, x
        return x, self.downsample(x, height, width)


class PatchEmbed(nn.Cell):
    """Non-overlapping ``patch x patch`` conv embedding (stride = patch), with LayerNorm when ``patch_norm``.

    Inputs:
        x (Tensor[float32]): ``[B, 3, H, W]``; H, W need not be multiples of the patch (zero-padded bottom/right).

    Outputs:
        Tensor[float32]: ``[B, C, ceil(H/p), ceil(W/p)]``.
    """

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, patch_norm: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, pad_mode="valid", has_bias=True)
        self.norm = LayerNorm(embed_dim) if patch_norm else None

    def construct(self, x):
        p = self.patch_size
        pad_h = (p - x.shape[2] % p) % p
        pad_w = (p - x.shape[3] % p) % p
        if pad_h or pad_w:
            x = ops.pad(x, (0, pad_w, 0, pad_h))
        x = self.proj(x)
        if self.norm is not None:
            b, c, h, w = x.shape
            x = self.norm(x.reshape(b, c, h * w).transpose(0, 2, 1)).transpose(0, 2, 1).reshape(b, c, h, w)
        return x


class SwinTransformer(nn.Cell):
    """Swin backbone returning normalized multi-scale feature maps (detectron2 ``SwinTransformer`` semantics).

    Args:
        patch_size: Patch side (stride of the first stage).
        in_chans: Input channels.
        embed_dim: Channels ``C`` of stage 0; stage ``i`` has ``C * 2**i``.
        depths: Blocks per stage.
        num_heads: Heads per stage.
        window_size: Window side (7 for 224-px, 12 for 384-px ImageNet checkpoints).
        mlp_ratio: MLP hidden size over channels.
        qkv_bias: Bias on q/k/v.
        drop_rate: Dropout after attention/MLP projections and on the patch embedding.
        attn_drop_rate: Dropout on attention probabilities.
        drop_path_rate: Stochastic-depth rate, increased linearly from 0 over all blocks (training only).
        patch_norm: LayerNorm after the patch embedding.
        out_indices: Stages to return (0-based); detrex's 4-scale detectors use (1, 2, 3).

    Inputs:
        x (Tensor[float32]): ``[B, 3, H, W]`` normalized image, any static size.

    Outputs:
        tuple[Tensor[float32]]: one ``[B, C * 2**i, H_i, W_i]`` per ``i`` in ``out_indices``, stride
        ``patch_size * 2**i``, ``H_0 = ceil(H / patch)``, ``H_{i+1} = ceil(H_i / 2)``.

    Raises:
        ValueError: If ``depths`` and ``num_heads`` differ in length, or ``out_indices`` is out of range.
    """

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.2, patch_norm: bool = True,
                 out_indices: Sequence[int] = (1, 2, 3)):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
        num_layers = len(depths)
        if not out_indices or any(not 0 <= i < num_layers for i in out_indices):
            raise ValueError(f"out_indices {tuple(out_indices)} must be within 0..{num_layers - 1}")
        self.out_indices = tuple(out_indices)
        self.num_features = tuple(int(embed_dim * 2 ** i) for i in range(num_layers))
        self.out_channels = tuple(self.num_features[i] for i in self.out_indices)
        self.strides = tuple(patch_size * 2 ** i for i in self.out_indices)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
        starts = np.cumsum([0, *depths]).tolist()
        self.layers = nn.CellList([
            BasicLayer(self.num_features[i], depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias, drop_rate,
                       attn_drop_rate, rates[starts[i]:starts[i + 1]], downsample=i < num_layers - 1)
            for i in range(num_layers)
        ])
        self.num_layers = num_layers
        # Stored under the reference's names (``norm{i}``) so checkpoint keys match without a rename.
        self.out_norm_names = tuple(f"norm{i}" for i in self.out_indices)
        for i in self.out_indices:
            setattr(self, f"norm{i}", LayerNorm(self.num_features[i]))

    def construct(self, x) -> Tuple[Tensor, ...]:
        x = self.pos_drop(self.patch_embed(x))
        b, c, height, width = x.shape
        x = x.reshape(b, c, height * width).transpose(0, 2, 1)
        outs = ()
        for i in range(self.num_layers):
            stage_out, x = self.layers[i](x, height, width)
            if i in self.out_indices:
                feat = getattr(self, self.out_norm_names[self.out_indices.index(i)])(stage_out)
                outs = outs + (feat.reshape(b, height, width, -1).transpose(0, 3, 1, 2),)
            height, width = (height + 1) // 2, (width + 1) // 2
        return outs


def build_swin(name: str = "swin_t", **kwargs) -> SwinTransformer:
    """Build a preset from :data:`SWIN_CONFIGS`; keyword arguments (e.g. ``drop_path_rate``, ``out_indices``)
    override the preset.

    Raises:
        KeyError: For an unknown preset name.
    """
    if name not in SWIN_CONFIGS:
        raise KeyError(f"unknown Swin preset {name!r}; choose from {sorted(SWIN_CONFIGS)}")
    return SwinTransformer(**{**SWIN_CONFIGS[name], **kwargs})


__all__ = ["SWIN_CONFIGS", "LayerNorm", "SwinTransformer", "build_swin"]
