"""Deployment: MINDIR/AIR/ONNX export and the binary-file protocol shared by the offline inference runners.

``export.py`` writes the inference graph (network + post-process); ``preprocess.py`` turns a COCO split into
padded input binaries; ``tools/infer_mindir.py`` (MindSpore, CPU/GPU) or ``ascend310_infer`` (C++, Ascend 310)
runs the graph on them; ``postprocess.py`` scores the outputs with pycocotools. :mod:`src.deploy.bin_io`
defines the files they exchange.
"""
