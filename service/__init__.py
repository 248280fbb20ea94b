"""The inference service: the Open Inference Protocol and a product API on onnxruntime. Never
imports torch. One concern per package, each importing only from those above it in this list
(tests/unit/test_architecture.py checks it):

settings, errors, metrics, logs   configuration, the typed errors, Prometheus metrics, logging
models/      what is served: the repository on disk, config.pbtxt, one version's session and
             lifecycle, its dynamic batcher, statistics, and the registry (model control)
dataplane/   every protocol rule on plain types: the DataPlane, the request and response types,
             codecs, the authentication rule, and where decoding runs (offload)
http/        the HTTP front end: app factory, middleware, connection guards, /v1, /v2, health
grpc/        the gRPC front end: servicer, interceptor (auth, status codes, metrics), server
scaling/     worker processes (cluster, supervisor) and Ray Serve replicas
server       one process composed: registry, data plane, HTTP and gRPC, signals and drain
cli          `coordconv serve`
"""
