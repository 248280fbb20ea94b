"""The response cache (Triton's `response_cache { enable: true }` in config.pbtxt): a version's
answers kept by their inputs, item by item, so an item seen before (in an earlier request, or
earlier in the same one) is answered without running the model, whichever protocol asked.

- One cache per process, bounded in bytes (CACHE_SIZE_BYTES; 0: no cache at all, as Triton
  without `--cache-config`), least recently used out. An entry costs its outputs' bytes, its key
  and a fixed overhead; an entry larger than the whole cache is not kept.
- A key is its owner (one served version object: a model, a version and one load of it; a reload is
  a new owner), what else the answer depends on (an ensemble's: the load of every step version that
  computed it), the dtype and per-item shape of each input and the item's bytes (their 32-byte
  BLAKE2b digest when longer), so no answer of another model, version or load is ever served. A
  version's entries go when it closes (unload, shutdown, a reload that replaces it) or is reloaded
  as it is, and nothing is stored for an owner that has gone.
- Every output of an item is kept, whatever a request asks for (the data plane picks the
  requested ones), so the outputs asked for need not be part of the key.
- The statistics count items, not requests: `cache_hit` (look-up, and copying the answer out)
  and `cache_miss` (look-up, and inserting the computed answer). Items answered from the cache
  never reach the batcher, so they count in neither `inference_count` nor the queue and compute
  phases, as in Triton.

Used on the event loop only (no lock).
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from service.models.statistics import ModelStats

Outputs = tuple[np.ndarray, ...]
ENTRY_OVERHEAD = 256  # bytes an entry costs beyond its arrays and key (dict slot, tuples, headers)
DIGEST_OVER = 32  # item bytes longer than this are keyed by their digest
_owners = itertools.count(1)


class ResponseCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.bytes = 0
        self.evictions = 0
        self._entries: OrderedDict[tuple[object, ...], tuple[Outputs, int]] = OrderedDict()
        self._live: set[int] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def register(self) -> int:
        """A new owner: one served version object."""
        owner = next(_owners)
        self._live.add(owner)
        return owner

    def clear(self, owner: int) -> None:
        """Forget every entry of `owner` (a reload of its version)."""
        for key in [k for k in self._entries if k[0] == owner]:
            _, size = self._entries.pop(key)
            self.bytes -= size

    def purge(self, owner: int) -> None:
        """Forget every entry of `owner`, and keep none of it from now on (its version
        closed)."""
        self._live.discard(owner)
        self.clear(owner)

    def get(self, key: tuple[object, ...]) -> Outputs | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: tuple[object, ...], rows: Outputs) -> None:
        if key[0] not in self._live:
            return
        size = ENTRY_OVERHEAD + sum(r.nbytes for r in rows) + len(key[-1])  # type: ignore[arg-type]
        if size > self.capacity:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = (rows, size)
        self.bytes += size
        while self.bytes > self.capacity:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped
            self.evictions += 1

    async def infer(
        self,
        owner: int,
        inputs: Sequence[np.ndarray],
        compute: Callable[[tuple[np.ndarray, ...]], Awaitable[Outputs]],
        stats: ModelStats,
        key_inputs: Sequence[np.ndarray] | None = None,
        context: tuple[object, ...] = (),
    ) -> Outputs:
        """The outputs for `inputs` (arrays of one request, N rows each): each row looked up,
        the rows not found computed by `compute` in one call (each distinct row once), stored,
        and the answer put together in row order. `key_inputs` (default `inputs`): what the
        keys are made of, for a model whose answer depends on its input only through it (the
        rounded point of a model that rounds in its graph). `context`: what else the answer
        depends on, part of every key (an ensemble's step versions)."""
        t0 = time.perf_counter_ns()
        keyed = inputs if key_inputs is None else key_inputs
        n = len(inputs[0])
        keys = item_keys(owner, keyed, n, context)
        found: dict[int, Outputs] = {}
        first: dict[tuple[object, ...], int] = {}  # key -> its first row among the misses
        misses: list[int] = []
        repeats: list[tuple[int, int]] = []  # (row, the earlier missing row with its key)
        for i, key in enumerate(keys):
            rows = self.get(key)
            if rows is not None:
                found[i] = rows
            elif key in first:
                repeats.append((i, first[key]))
            else:
                first[key] = i
                misses.append(i)
        t1 = time.perf_counter_ns()
        lookup = t1 - t0
        hits = n - len(misses)
        if not misses:  # every row known: no model call at all
            result = _assemble(n, found, [], None, [])
            stats.cache_hit.add(lookup + time.perf_counter_ns() - t1, hits)
            return result
        try:
            if hits == 0:  # nothing known: the request as it is
                computed = await compute(tuple(inputs))
            else:
                index = np.asarray(misses)
                computed = await compute(tuple(x[index] for x in inputs))
        except BaseException:
            stats.cache_miss.add(lookup * len(misses) // n, len(misses))
            raise
        t2 = time.perf_counter_ns()
        for j, i in enumerate(misses):  # copies: a row must not keep its whole batch alive
            self.put(keys[i], tuple(np.array(o[j]) for o in computed))
        t3 = time.perf_counter_ns()
        stats.cache_miss.add(lookup * len(misses) // n + t3 - t2, len(misses))
        if hits == 0:
            return computed
        result = _assemble(n, found, misses, computed, repeats)
        stats.cache_hit.add(lookup * hits // n + time.perf_counter_ns() - t3, hits)
        return result


def item_keys(
    owner: int, inputs: Sequence[np.ndarray], n: int, context: tuple[object, ...] = ()
) -> list[tuple[object, ...]]:
    """One key per row: (owner, the context and the inputs' dtypes and per-item shapes, the
    row's bytes or their digest)."""
    signature = (context, tuple((x.dtype.str, x.shape[1:]) for x in inputs))
    flat = [np.ascontiguousarray(x).reshape(n, -1).view(np.uint8) for x in inputs]
    if len(flat) == 1:
        raw = [row.tobytes() for row in flat[0]]
    else:
        raw = [b"".join(x[i].tobytes() for x in flat) for i in range(n)]
    return [
        (owner, signature, r if len(r) <= DIGEST_OVER else hashlib.blake2b(r).digest()[:32])
        for r in raw
    ]


def _assemble(
    n: int,
    found: dict[int, Outputs],
    misses: list[int],
    computed: Outputs | None,
    repeats: list[tuple[int, int]],
) -> Outputs:
    """The answer of N rows out of cached rows, computed rows and rows that repeat them."""
    if computed is not None:
        columns = [(o.shape[1:], o.dtype) for o in computed]
    else:
        columns = [(r.shape, r.dtype) for r in next(iter(found.values()))]
    position = {row: j for j, row in enumerate(misses)}
    out = []
    for k, (shape, dtype) in enumerate(columns):
        column = np.empty((n, *shape), dtype=dtype)
        for i, rows in found.items():
            column[i] = rows[k]
        if computed is not None:
            column[misses] = computed[k]
            for i, earlier in repeats:
                column[i] = computed[k][position[earlier]]
        out.append(column)
    return tuple(out)
