"""More than one process behind one address.

cluster    what keeps N worker processes one server (shared control log, summed statistics)
workers    the supervisor of `--workers N`
ray_serve  Ray Serve replicas (`--ray`)
"""
