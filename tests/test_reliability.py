"""Not a test module: tests/system/test_drain.py still imports `serve_process` from here, where it
lived before the tiers (it is in tests/helpers.py now). Delete this file once test_drain.py imports
it from tests.helpers."""

from tests.helpers import serve_process

__all__ = ["serve_process"]
