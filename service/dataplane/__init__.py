"""The data plane: what a front end can ask of the server, on plain types (no HTTP, no gRPC).

plane     DataPlane: health, metadata, statistics, repository control, inference
types     InferRequest, InputTensor, InferResponse, OutputTensor
codecs    PNG, NPY and JSON arrays, and the value checks
auth      the API key rule
offload   where decoding runs: inline, a thread or a parsing process
"""
