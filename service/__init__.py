"""The inference service: FastAPI on onnxruntime. Never imports torch.

settings  configuration (environment variables COORDCONV_*, or `coordconv serve` options)
errors    typed errors mapped to HTTP status codes
registry  the model repository: onnxruntime sessions, metadata, checks, warm-up
batching  a dynamic batcher per model
codecs    PNG, base64, NPY and JSON array encodings
metrics   Prometheus metrics
routes/   one APIRouter per concern: v1 (product API), v2 (Open Inference Protocol), health
app       the app factory `create_app(settings)`; fastpath: the hot routes without FastAPI's layers
cli       `coordconv serve`
workers   `--workers N`: the supervisor; cluster: what keeps the workers one server
"""
