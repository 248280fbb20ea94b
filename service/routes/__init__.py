"""One APIRouter per concern: health (probes, metrics), v1 (product API), v2 (Open Inference
Protocol)."""
