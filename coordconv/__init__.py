"""CoordConv: reproduction, ONNX export and serving. The `coordconv` command lives in `cli`."""

__version__ = "0.1.0"
