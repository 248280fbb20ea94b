"""The batch client (httpx; no torch, no onnxruntime).

    from client import CoordConvClient
    with CoordConvClient("http://127.0.0.1:8000") as c:
        images = c.render([[10, 20], [30, 40]])      # (2, 64, 64) float32
        points = c.locate(images > 0.5)              # (2, 2) pixels

`AsyncCoordConvClient` is the asyncio twin; `client.batch.run` pushes whole files.
"""

from client.api import AsyncCoordConvClient, ClientError, CoordConvClient

__all__ = ["AsyncCoordConvClient", "ClientError", "CoordConvClient"]
