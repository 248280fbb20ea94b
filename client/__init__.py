"""The batch client (httpx; no torch, no onnxruntime)."""
