"""The gRPC front end (inference.GRPCInferenceService, as Triton defines it).

servicer      each RPC as an adapter over the data plane
interceptors  the API key, typed errors as status codes, metrics and the log line
server        the grpc.aio server, health service and reflection
"""
