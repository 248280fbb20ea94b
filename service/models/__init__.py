"""What is served, and how it changes while the server runs. Generic: a model's task and what it
requires are the task rules given from above (rules.py), never the CoordConv contract itself.

repository  the model repository on disk (names, version folders, fingerprints); reads: its reads
config      config.pbtxt: parsed as Triton's ModelConfig, verified, completed, scheduling
rules       the task rules the layer is given (the product's: service/dataplane/tasks.py)
served      what every servable meets and shares: lifecycle, hold, drain, request, describe
runtime     onnxruntime: providers, session options, a version's session
graph       what is read from the ONNX graph itself (inputs read only through Round)
loading     open and verify one version, and what a config may ask for (`admit`)
warmup      warm-up: its rule, its files and its runs
version     one model version at run time (session, batcher, cache), and `open_version`
batcher     the dynamic batcher of one version (scheduler threads, queue policy)
cache       the response cache
statistics  per-version statistics in the shape of Triton's statistics extension
pipeline    an ensemble's steps, parsed and checked; ensemble: the served ensemble
registry    the routing table (name -> version) and its atomic switch
control     model control (none, explicit, poll): start, load, unload, ensembles, the index
poller      poll mode's rescans
"""
