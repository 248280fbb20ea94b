"""The HTTP front end, a thin adapter over the data plane.

app          create_app(settings, plane): routers, exception handlers, middleware
v1, v2       the product API and the Open Inference Protocol (with its extensions)
health       probes, /metrics and the demo page
schemas      the /v1 bodies as pydantic models (documentation and checks)
deps         what routes depend on: the data plane, the API key check
dispatch     the hot routes without FastAPI's per-request layers, read off the route table
responses    JSON, Accept, model headers, cancelling a request whose client left
errors       error bodies and the exception-to-status mapping
middleware   request id, body and concurrency limits, metrics, one log line per request
connections  uvicorn's HTTP protocol with connection guards (timeouts, sizes, connection cap)
coalesce     one write per response (head and body together)
"""
