"""What is served, and how it changes while the server runs.

repository  the model repository on disk (names, version folders, fingerprints)
config      config.pbtxt: parsed as Triton's ModelConfig, verified, completed, scheduling
version     one model version: its onnxruntime session, warm-up and lifecycle
batcher     the dynamic batcher of one version (scheduler threads, queue policy)
statistics  per-version statistics in the shape of Triton's statistics extension
registry    the routing table (name -> version) and model control (none, explicit, poll)
"""
