"""Training: the CoordConv layer, the Not-so-Clevr data, networks, metrics, the training loop,
the reproduction of the paper's table and ONNX export.

`data` and `metrics` use numpy only, so evaluation code and tests can use them without torch.
"""
