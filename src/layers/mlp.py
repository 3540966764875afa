"""Multi-layer perceptron used as DETR's box head.

Follows facebookresearch/detr ``models/detr.py::MLP``: ``num_layers`` dense layers, ReLU between them and no
activation after the last one. The sub-cells live in a ``CellList`` named ``layers`` so parameter names are
``layers.{i}.weight`` / ``layers.{i}.bias`` like the torch module.
"""

from mindspore import nn, ops


class MLP(nn.Cell):
    """Feed-forward network ``Dense -> ReLU -> ... -> Dense``.

    Args:
        input_dim: Size of the last input axis.
        hidden_dim: Width of the hidden layers.
        output_dim: Size of the last output axis.
        num_layers: Number of ``nn.Dense`` layers (>= 1).

    Inputs:
        x (Tensor[float32]): ``[..., input_dim]``.

    Outputs:
        Tensor[float32]: ``[..., output_dim]``.

    Raises:
        ValueError: If ``num_layers < 1``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP needs at least one layer, got num_layers={num_layers}")
        self.num_layers = num_layers
        hidden = [hidden_dim] * (num_layers - 1)
        self.layers = nn.CellList(
            [nn.Dense(n_in, n_out) for n_in, n_out in zip([input_dim] + hidden, hidden + [output_dim])]
        )

    def construct(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = ops.relu(x)
        return x
