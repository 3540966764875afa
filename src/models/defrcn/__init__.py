"""DeFRCN (Qiao et al., ICCV 2021): Faster R-CNN C4 with Gradient Decoupled Layers, for few-shot detection."""
