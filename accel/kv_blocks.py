"""The host's KV block manager: many sequences in one paged KV pool (vLLM's PagedAttention,
arXiv 2309.06180, section 4), and continuous batching over it.

Contract
--------
``BlockManager(n_blocks=, block_tokens=)`` owns a pool of ``n_blocks`` physical KV blocks
of ``block_tokens`` token rows each (the accelerator's ``kv_block_tokens``; one block id
addresses the same rows in every layer's K and V pools, ``compiler.image``). Each
sequence has a block table, logical block -> physical block, as the device reads it
(``block_table(seq)``: int32):

- ``add(seq, prompt)`` maps the prompt's blocks. With ``prefix_sharing`` a *full* block
  whose tokens, and every token before them, equal a block already in the pool is shared
  (its reference count goes up) instead of allocated: the key of logical block ``j`` is
  ``(key of block j - 1, its block_tokens token ids)``, as vLLM's prefix cache keys it.
  ``cached_tokens`` of the returned ``Admission`` is how many leading prompt tokens have
  their K/V in the pool already, at most ``len(prompt) - 1`` (the last prompt token is
  always computed: its logits give the first new token).
- ``append(seq, token)`` adds one token: a block is allocated only when the last one is
  full (allocation on demand). If the last block is shared (after ``fork``), it is copied
  first (copy on write at block granularity): the returned ``CopyOnWrite`` names the
  source and destination blocks and the rows to copy, which the runtime must copy before
  the device writes the new row.
- ``fork(parent, child)`` gives ``child`` the parent's table, every block shared.
- ``evict(seq, n)`` drops the sequence's first ``n`` blocks from the pool (their K/V go
  to a slower tier; LLMS's context swapping, arXiv 2403.11805): their table entries
  become ``EVICTED``, which the device must never read. ``restore(seq)`` maps them to
  free blocks again and returns ``(logical, physical)`` pairs for the runtime to fill, by
  reloading or by recomputing (``sweeps.analytic.context_switch`` times both).
- ``free(seq)`` drops the sequence's references; a block whose count reaches zero goes
  back to the free queue. A freed full block keeps its prefix key until it is reused
  (vLLM's evictor): a later prompt with the same prefix takes it back without a copy.
  Free blocks are reused least recently freed first.

Refusals: a sequence the pool cannot hold raises ``PoolExhausted`` with the blocks it
needs and the blocks free; an unknown or duplicate sequence id raises ``KeyError``.
``can_add(prompt)`` says beforehand whether ``add`` would succeed.

``ContiguousReservation`` is the baseline vLLM measures against (Orca-style serving): each
sequence reserves ``reserve_tokens`` contiguous token slots when admitted (first fit over
the pool's slots), whatever its length turns out to be. It has the same ``add``,
``append``, ``free``, ``can_add`` and accounting.

``ContinuousBatcher(manager, requests)`` serves a trace of ``Request``s step by step:
between steps, finished sequences leave and waiting ones join (first come, first served)
while the pool admits them; each step appends one token to every running sequence. When
an append finds no free block, the most recently admitted sequence is preempted (freed,
and later recomputed from its prompt and the tokens it had generated, vLLM's
recomputation policy); a sequence that alone outgrows the pool, or its reservation,
raises ``PoolExhausted``. ``run()`` returns a ``TraceStats``: steps, tokens generated,
preemptions and the KV memory waste averaged over the steps with KV allocated.

Waste is ``1 - live token rows / allocated token rows`` of the pool: reserved slots not
yet written, and the unused rows of each sequence's last block. Shared blocks count once
in both (their rows are live once).

Tested by tests/accel/test_kv_blocks.py.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from arch.isa import KV_SHARED

EVICTED = -1        # a block-table entry whose K/V is not in the pool


class PoolExhausted(RuntimeError):
    """The KV pool has fewer free blocks (or contiguous slots) than a sequence needs."""


class ReservationExceeded(PoolExhausted):
    """A sequence outgrew its contiguous reservation (``ContiguousReservation``)."""


@dataclass(frozen=True)
class Admission:
    """What ``add`` did: the sequence's block table and how many leading prompt tokens
    already have their K/V in the pool (shared prefix blocks), so need no computing."""
    table: tuple[int, ...]
    cached_tokens: int
    shared_blocks: int


@dataclass(frozen=True)
class CopyOnWrite:
    """Copy token rows ``0..rows-1`` of physical block ``src`` into ``dst`` (every layer's
    K and V) before writing the sequence's next row into ``dst``."""
    src: int
    dst: int
    rows: int


@dataclass
class _Block:
    refs: int = 0
    rows: int = 0                  # token rows written (a shared block's once)
    key: tuple | None = None       # prefix key once full (and hashed), else None
    generation: int = 0            # times taken for new data (its old rows then lost)


@dataclass
class _Seq:
    table: list[int]
    tokens: list[int]
    key: tuple | None              # prefix key of the last full block
    # logical block -> (physical block, its generation) when evicted: the rows are still
    # there while the generation is
    evicted: dict[int, tuple[int, int]] = field(default_factory=dict)


def _check_counts(**counts) -> None:
    """Refuse a count that is not an integer of at least 1, naming it."""
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer ≥ 1, not {value!r}")


class BlockManager:
    """A paged KV pool with per-sequence block tables (see the module docstring).

    ``n_blocks``, ``block_tokens``: the pool's size, both ≥ 1. ``prefix_sharing``: share
    full prompt blocks with the same prefix (default on). Raises ``ValueError`` for a
    size below 1."""

    def __init__(self, *, n_blocks: int, block_tokens: int, prefix_sharing: bool = True):
        _check_counts(n_blocks=n_blocks, block_tokens=block_tokens)
        self.n_blocks, self.block_tokens = n_blocks, block_tokens
        self.prefix_sharing = prefix_sharing
        self._blocks = [_Block() for _ in range(n_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(n_blocks))
        self._by_key: dict[tuple, int] = {}
        self._seqs: dict[object, _Seq] = {}
        self._live = 0                 # the blocks' written rows, summed

    # -- accounting ------------------------------------------------------------------
    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def used_blocks(self) -> int:
        return self.n_blocks - len(self._free)

    def allocated_rows(self) -> int:
        return self.used_blocks * self.block_tokens

    def live_rows(self) -> int:
        """Token rows holding a live sequence's K/V, a shared block's rows counted once."""
        return self._live

    def _fill(self, block: int, rows: int) -> None:
        b = self._blocks[block]
        if rows > b.rows:
            self._live += rows - b.rows
            b.rows = rows

    def logical_rows(self) -> int:
        """Token rows the sequences would need unshared: the sum of their lengths."""
        return sum(len(s.tokens) for s in self._seqs.values())

    def block_table(self, seq) -> list[int]:
        return list(self._seqs[seq].table)

    def refs(self, block: int) -> int:
        if not 0 <= block < self.n_blocks:
            raise IndexError(f"block {block} is outside the pool of {self.n_blocks}")
        return self._blocks[block].refs

    def __contains__(self, seq) -> bool:
        return seq in self._seqs

    # -- allocation ------------------------------------------------------------------
    def _blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_tokens)

    def _key(self, prev: tuple | None, tokens: Sequence[int], j: int) -> tuple:
        """The prefix key of full block ``j`` of ``tokens``, after block ``j - 1``'s."""
        return (prev, tuple(tokens[j * self.block_tokens:(j + 1) * self.block_tokens]))

    def _prefix_hits(self, prompt: Sequence[int]) -> list[tuple[tuple, int]]:
        """(key, physical block) of the prompt's leading full blocks already in the pool."""
        hits, key = [], None
        if not self.prefix_sharing:
            return hits
        for j in range(len(prompt) // self.block_tokens):
            key = self._key(key, prompt, j)
            block = self._by_key.get(key)
            if block is None:
                break
            hits.append((key, block))
        return hits

    def blocks_needed(self, prompt: Sequence[int]) -> int:
        """Free blocks ``add(prompt)`` takes: the blocks it cannot share, and the shared
        ones that sit in the free queue (freed, their K/V kept)."""
        hits = self._prefix_hits(prompt)
        revived = sum(1 for _, b in hits if self._blocks[b].refs == 0)
        return self._blocks_for(len(prompt)) - len(hits) + revived

    def can_add(self, prompt: Sequence[int], seq=None, headroom_blocks: int = 0) -> bool:
        """Whether ``add(seq, prompt)`` would succeed and leave ``headroom_blocks`` free."""
        return self.blocks_needed(prompt) + headroom_blocks <= self.free_blocks

    def _take(self, block: int | None = None) -> int:
        """Take ``block`` (a freed block revived for its prefix key, which it keeps) or,
        with None, the free queue's head, whose old prefix key no longer names it."""
        if block is not None:
            del self._free[block]
            return block
        block, _ = self._free.popitem(last=False)
        b = self._blocks[block]
        b.generation += 1
        if b.key is not None:
            if self._by_key.get(b.key) == block:
                del self._by_key[b.key]
            b.key = None
        return block

    def _ref(self, block: int) -> None:
        self._blocks[block].refs += 1

    def _unref(self, block: int) -> None:
        b = self._blocks[block]
        b.refs -= 1
        if b.refs == 0:
            self._free[block] = None            # last in the queue: reused last
            self._live -= b.rows
            b.rows = 0

    def _register(self, block: int, key: tuple) -> None:
        """Name a full block by its prefix key (first holder wins, as in vLLM)."""
        if not self.prefix_sharing:
            return
        self._blocks[block].key = key
        self._by_key.setdefault(key, block)

    def add(self, seq, prompt: Sequence[int]) -> Admission:
        """Map ``prompt``'s blocks for a new sequence ``seq``; raises ``PoolExhausted``
        (blocks needed, blocks free) or ``KeyError`` for an id already present, and
        ``ValueError`` for an empty prompt."""
        if seq in self._seqs:
            raise KeyError(f"sequence {seq!r} is already in the KV pool")
        if len(prompt) == 0:
            raise ValueError(f"sequence {seq!r} has an empty prompt")
        need = self.blocks_needed(prompt)
        if need > self.free_blocks:
            raise PoolExhausted(f"sequence {seq!r} needs {need} KV blocks "
                                f"({len(prompt)} tokens of {self.block_tokens}), "
                                f"{self.free_blocks} of {self.n_blocks} are free")
        hits = self._prefix_hits(prompt)
        table = []
        for _, block in hits:
            if self._blocks[block].refs == 0:
                self._take(block)
            self._ref(block)
            self._fill(block, self.block_tokens)
            table.append(block)
        key = hits[-1][0] if hits else None
        for j in range(len(hits), self._blocks_for(len(prompt))):
            block = self._take()
            self._ref(block)
            table.append(block)
            self._fill(block, min(self.block_tokens, len(prompt) - j * self.block_tokens))
            if (j + 1) * self.block_tokens <= len(prompt):
                key = self._key(key, prompt, j)
                self._register(block, key)
        self._seqs[seq] = _Seq(table, list(prompt), key)
        cached = min(len(hits) * self.block_tokens, len(prompt) - 1)
        return Admission(tuple(table), cached, len(hits))

    def append(self, seq, token: int) -> CopyOnWrite | None:
        """Add one token's row to ``seq``: a new block when the last is full, a copy when
        the last is shared. Raises ``PoolExhausted`` when a block is needed and none is
        free (the sequence is left unchanged)."""
        s = self._seqs[seq]
        token = int(token)                 # before any change: a bad token changes nothing
        n = len(s.tokens)
        cow = None
        if n % self.block_tokens == 0:                      # last block full: a new one
            if not self._free:
                raise PoolExhausted(f"sequence {seq!r} needs 1 KV block for token {n}, "
                                    f"0 of {self.n_blocks} are free")
            block = self._take()
            self._ref(block)
            s.table.append(block)
        elif self._blocks[s.table[-1]].refs > 1:            # shared partial block: copy
            if not self._free:
                raise PoolExhausted(f"sequence {seq!r} needs 1 KV block to copy its shared "
                                    f"last block, 0 of {self.n_blocks} are free")
            src = s.table[-1]
            dst = self._take()
            self._ref(dst)
            self._unref(src)
            s.table[-1] = dst
            cow = CopyOnWrite(src, dst, n % self.block_tokens)
            self._fill(dst, cow.rows)
        s.tokens.append(token)
        self._fill(s.table[-1], (n % self.block_tokens) + 1)
        if len(s.tokens) % self.block_tokens == 0:          # just filled: name it
            s.key = self._key(s.key, s.tokens, len(s.tokens) // self.block_tokens - 1)
            self._register(s.table[-1], s.key)
        return cow

    def fork(self, parent, child) -> None:
        """``child`` shares every block of ``parent`` (parallel sampling, beam search),
        evicted ones evicted for it too."""
        if child in self._seqs:
            raise KeyError(f"sequence {child!r} is already in the KV pool")
        p = self._seqs[parent]
        for b in p.table:
            if b != EVICTED:
                self._ref(b)
        self._seqs[child] = _Seq(list(p.table), list(p.tokens), p.key, dict(p.evicted))

    def free(self, seq) -> None:
        """Drop ``seq``; its blocks whose count reaches zero return to the free queue.
        ``KeyError`` naming ``seq`` if the pool does not hold it."""
        if seq not in self._seqs:
            raise KeyError(f"sequence {seq!r} is not in the pool (never added, or freed)")
        s = self._seqs.pop(seq)
        for b in reversed(s.table):      # the tail first: a prefix's head stays longest
            if b != EVICTED:
                self._unref(b)

    def evict(self, seq, n_blocks: int) -> list[int]:
        """Drop the first ``n_blocks`` of ``seq``'s table from the pool (all of them at
        most but the last, which the next token is written into); returns the logical
        blocks evicted now, whose rows the runtime saves to the slower tier. A block
        another sequence shares stays in the pool for it. Raises ``ValueError`` for a
        count out of range."""
        s = self._seqs[seq]
        if (isinstance(n_blocks, bool) or not isinstance(n_blocks, int)
                or not 0 <= n_blocks < max(len(s.table), 1)):
            raise ValueError(f"sequence {seq!r} has {len(s.table)} KV blocks: cannot evict "
                             f"{n_blocks!r} (at most all but the last)")
        out = []
        for j in range(n_blocks):
            block = s.table[j]
            if block != EVICTED:
                s.evicted[j] = (block, self._blocks[block].generation)
                self._unref(block)
                s.table[j] = EVICTED
                out.append(j)
        return out

    def evicted_blocks(self, seq) -> list[int]:
        return [j for j, b in enumerate(self._seqs[seq].table) if b == EVICTED]

    def _intact(self, block: int, generation: int) -> bool:
        """Whether ``block`` still holds the rows it held at ``generation``."""
        return self._blocks[block].generation == generation

    def restore(self, seq) -> list[tuple[int, int]]:
        """Map ``seq``'s evicted blocks back into the pool: a block still holding its rows
        (shared by another sequence, or free but not reused) is taken back as it is, the
        others get free blocks. Returns ``(logical, physical)`` of the blocks the runtime
        must fill (reload or recompute). Raises ``PoolExhausted`` (blocks needed, free)
        and changes nothing then."""
        s = self._seqs[seq]
        todo = self.evicted_blocks(seq)
        kept = {j for j in todo if self._intact(*s.evicted[j])}
        need = sum(1 for j in todo if j not in kept or self._blocks[s.evicted[j][0]].refs == 0)
        if need > self.free_blocks:
            raise PoolExhausted(f"sequence {seq!r} needs {need} KV blocks to come back, "
                                f"{self.free_blocks} of {self.n_blocks} are free")
        for j in sorted(kept):                       # first: the free queue must not reuse them
            block = s.evicted.pop(j)[0]
            if self._blocks[block].refs == 0:
                self._take(block)
            self._ref(block)
            self._fill(block, self.block_tokens)
            s.table[j] = block
        out, key = [], None
        for j in range(len(s.table)):
            if (j + 1) * self.block_tokens > len(s.tokens):
                break
            key = self._key(key, s.tokens, j)
            if s.table[j] == EVICTED:
                del s.evicted[j]
                block = self._take()
                self._ref(block)
                self._fill(block, self.block_tokens)
                self._register(block, key)
                s.table[j] = block
                out.append((j, block))
        return out


class ContiguousReservation:
    """The baseline: each sequence reserves ``reserve_tokens`` contiguous token slots of a
    ``n_blocks × block_tokens``-slot pool at admission, first fit. ``reserve_tokens`` is a
    number (the model's maximum length) or a function of the sequence id (the request's
    own limit, prompt plus ``max_new_tokens``)."""

    def __init__(self, *, n_blocks: int, block_tokens: int, reserve_tokens):
        _check_counts(n_blocks=n_blocks, block_tokens=block_tokens,
                      **({} if callable(reserve_tokens) else {"reserve_tokens": reserve_tokens}))
        self.n_slots = n_blocks * block_tokens
        self.n_blocks, self.block_tokens = n_blocks, block_tokens
        self._reserve = (reserve_tokens if callable(reserve_tokens)
                         else lambda _seq: reserve_tokens)
        self._spans: dict[object, tuple[int, int, int]] = {}    # seq -> (start, size, used)

    def _first_fit(self, size: int) -> int | None:
        start = 0
        for s, n, _ in sorted(self._spans.values()):
            if s - start >= size:
                return start
            start = max(start, s + n)
        return start if self.n_slots - start >= size else None

    def can_add(self, prompt: Sequence[int], seq=None, headroom_blocks: int = 0) -> bool:
        """Whether ``add(seq, prompt)`` would succeed (a reservation never grows, so it
        needs no headroom)."""
        return self._first_fit(max(self._reserve(seq), len(prompt))) is not None

    def add(self, seq, prompt: Sequence[int]) -> Admission:
        if seq in self._spans:
            raise KeyError(f"sequence {seq!r} is already in the KV pool")
        if len(prompt) == 0:
            raise ValueError(f"sequence {seq!r} has an empty prompt")
        size = max(self._reserve(seq), len(prompt))
        start = self._first_fit(size)
        if start is None:
            raise PoolExhausted(f"sequence {seq!r} needs {size} contiguous token slots, "
                                f"none free of {self.n_slots}")
        self._spans[seq] = (start, size, len(prompt))
        return Admission((), 0, 0)

    def append(self, seq, token: int) -> None:
        start, size, used = self._spans[seq]
        if used >= size:
            raise ReservationExceeded(f"sequence {seq!r} has used its {size} reserved "
                                      f"token slots")
        self._spans[seq] = (start, size, used + 1)

    def free(self, seq) -> None:
        del self._spans[seq]

    def allocated_rows(self) -> int:
        return sum(n for _, n, _ in self._spans.values())

    def live_rows(self) -> int:
        return sum(u for _, _, u in self._spans.values())

    def __contains__(self, seq) -> bool:
        return seq in self._spans


@dataclass(frozen=True)
class Request:
    """A trace entry: ``prompt`` token ids, ``output_tokens`` it will generate (its end of
    sequence), ``max_new_tokens`` its limit (``output_tokens`` ≤ it) and the step it
    arrives at."""
    prompt: tuple[int, ...]
    output_tokens: int
    max_new_tokens: int
    arrival_step: int = 0

    def __post_init__(self):
        if len(self.prompt) == 0:
            raise ValueError("a request needs a prompt of at least one token")
        if not 1 <= self.output_tokens <= self.max_new_tokens:
            raise ValueError(f"output_tokens must be in [1, max_new_tokens = "
                             f"{self.max_new_tokens}], not {self.output_tokens}")
        if self.arrival_step < 0:
            raise ValueError(f"arrival_step must be at least 0, not {self.arrival_step}")


@dataclass
class TraceStats:
    steps: int = 0
    generated_tokens: int = 0
    preemptions: int = 0
    prefill_tokens: int = 0            # prompt tokens computed (shared prefixes skipped)
    waste_sum: float = 0.0
    busy_steps: int = 0                # steps with KV allocated
    batch_sum: int = 0
    max_batch: int = 0
    finished: list = field(default_factory=list)

    @property
    def mean_waste(self) -> float:
        """Allocated-but-not-live KV rows over allocated rows, averaged over the steps
        with KV allocated."""
        return self.waste_sum / self.busy_steps if self.busy_steps else 0.0

    @property
    def mean_batch(self) -> float:
        return self.batch_sum / self.steps if self.steps else 0.0


class ContinuousBatcher:
    """Serve ``requests`` on ``manager`` one decode step at a time (see the module
    docstring). A request joins only if it leaves ``watermark`` of the pool's blocks free
    for the running sequences to grow into (vLLM's default, 1%, which keeps admissions
    from being preempted at once). A request the empty pool could never hold raises
    ``PoolExhausted``."""

    def __init__(self, manager, requests: Sequence[Request], watermark: float = 0.01):
        if not 0 <= watermark < 1:
            raise ValueError(f"watermark must be in [0, 1), not {watermark!r}")
        self.manager = manager
        self.headroom = math.ceil(watermark * manager.n_blocks)
        self.waiting = sorted(enumerate(requests), key=lambda r: (r[1].arrival_step, r[0]))
        self.running: list[int] = []
        self.generated: dict[int, list[int]] = {}
        self.requests = dict(enumerate(requests))
        self.stats = TraceStats()

    def _tokens(self, rid: int) -> list[int]:
        return list(self.requests[rid].prompt) + self.generated.get(rid, [])

    def _admit(self, step: int) -> None:
        while self.waiting and self.waiting[0][1].arrival_step <= step:
            rid, _ = self.waiting[0]
            tokens = self._tokens(rid)
            if not self.manager.can_add(tokens, rid, 0 if not self.running else self.headroom):
                if not self.running:
                    raise PoolExhausted(f"request {rid} ({len(tokens)} tokens) does not fit "
                                        f"the empty KV pool")
                return
            admission = self.manager.add(rid, tokens)
            self.stats.prefill_tokens += len(tokens) - admission.cached_tokens
            self.waiting.pop(0)
            self.running.append(rid)

    def step(self, step: int) -> None:
        self._admit(step)
        for rid in list(self.running):
            if rid not in self.running:              # preempted earlier in this step
                continue
            token = len(self._tokens(rid)) % 50_000  # a stand-in id; contents do not matter
            while True:
                try:
                    self.manager.append(rid, token)
                    break
                except ReservationExceeded:
                    raise
                except PoolExhausted:
                    if self.running == [rid]:
                        raise PoolExhausted(
                            f"request {rid} needs more than the whole KV pool "
                            f"({len(self._tokens(rid)) + 1} tokens)") from None
                    victim = self.running[-1]
                    self.manager.free(victim)
                    self.running.remove(victim)
                    self.waiting.insert(0, (victim, self.requests[victim]))
                    self.stats.preemptions += 1
                    if victim == rid:
                        break
            if rid not in self.running:
                continue
            self.generated.setdefault(rid, []).append(token)
            self.stats.generated_tokens += 1
            if len(self.generated[rid]) >= self.requests[rid].output_tokens:
                self.manager.free(rid)
                self.running.remove(rid)
                self.stats.finished.append(rid)
        allocated = self.manager.allocated_rows()
        if allocated:
            self.stats.waste_sum += 1 - self.manager.live_rows() / allocated
            self.stats.busy_steps += 1
        self.stats.steps += 1
        self.stats.batch_sum += len(self.running)
        self.stats.max_batch = max(self.stats.max_batch, len(self.running))

    def run(self, max_steps: int = 100_000_000) -> TraceStats:
        """Serve the whole trace; steps with nothing to serve (before the next arrival)
        are counted, not simulated. Raises ``RuntimeError`` if ``max_steps`` steps are
        simulated first."""
        step = simulated = 0
        while self.waiting or self.running:
            if not self.running and self.waiting[0][1].arrival_step > step:
                idle = self.waiting[0][1].arrival_step - step
                self.stats.steps += idle
                step += idle
            if simulated >= max_steps:
                raise RuntimeError(f"the trace was not served in {max_steps} steps "
                                   f"({len(self.waiting)} waiting, {len(self.running)} "
                                   f"running)")
            self.step(step)
            step += 1
            simulated += 1
        return self.stats


# -- a batch of sequences for the device ---------------------------------------------------

@dataclass(frozen=True)
class DevicePlan:
    """A batched build's host decisions (``compiler.driver.compile_batch``'s input): each
    sequence's ``SequencePlan`` (physical block table, cached prefix), the program
    ``schedule`` and the pool's size, with what sharing saved, and the blocks the block
    manager's tables hold while each program runs, with their owner codes (what
    ``driver.block_owners`` hands the device, derived again from the tables and the
    schedule)."""

    sequences: tuple
    schedule: tuple
    pool_blocks: int
    shared_blocks: int            # blocks mapped by more than one sequence at a time
    peak_blocks: int              # the most blocks in use at once
    live: tuple = ()              # per program, {physical block: owner code} of the held


def plan_batch(prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], *,
               max_batch: int, pool_blocks: int, block_tokens: int, seed: int = 0
               ) -> DevicePlan:
    """Serve ``prompts`` on the device with continuous batching over one paged KV pool of
    ``pool_blocks`` blocks: between decode steps, a finished sequence leaves (its blocks
    are freed) and waiting ones join in order, each with a prefill program of its own,
    while at most ``max_batch`` run and the pool holds every running sequence's whole
    remaining growth (so no sequence is ever preempted: the device plan has no
    recomputation). Each decode step is one program over the running sequences.

    A ``BlockManager`` with prefix sharing allocates the blocks on demand: a prompt that
    starts with another's full blocks maps them and its prefill starts after them. The
    manager's block ids are mapped to the pool through a fixed random permutation
    (``seed``), so a sequence's rows are not contiguous in DRAM. The rows a decode step
    appends are keyed by stand-in token ids no prompt holds: the host cannot know the
    tokens the device will generate, so blocks filled by decoding are never shared.

    Raises ``ValueError`` for mismatched or empty inputs and ``PoolExhausted`` (with the
    blocks needed and the pool's) for a sequence that does not fit the empty pool."""
    import numpy as np

    from compiler.driver import BatchStep, SequencePlan

    if len(prompts) != len(max_new_tokens) or not prompts:
        raise ValueError(f"{len(prompts)} prompts and {len(max_new_tokens)} output lengths: "
                         f"give one output length per prompt, and at least one prompt")
    _check_counts(max_batch=max_batch, pool_blocks=pool_blocks, block_tokens=block_tokens)
    if any(n < 1 for n in max_new_tokens):
        raise ValueError(f"max_new_tokens must be at least 1 for every sequence, not "
                         f"{list(max_new_tokens)}")
    manager = BlockManager(n_blocks=pool_blocks, block_tokens=block_tokens)
    physical = np.random.default_rng(seed).permutation(pool_blocks)

    def rows(s: int) -> int:                         # the K/V rows sequence s writes
        return len(prompts[s]) + max_new_tokens[s] - 1

    def growth(s: int) -> int:                       # blocks s has yet to allocate
        return -(-rows(s) // block_tokens) - len(manager.block_table(s))

    waiting = list(range(len(prompts)))
    running: list[int] = []
    generated = [0] * len(prompts)
    cached, tables = [0] * len(prompts), [()] * len(prompts)
    schedule: list = []
    live: list[dict[int, int]] = []         # each program's held blocks: owner codes

    def referenced() -> dict[int, int]:
        """Each physical block some sequence's table holds: its owner code (``s + 1`` for
        sequence ``s`` alone, ``KV_SHARED`` for several: ``arch.isa``'s ``KV_LIVE``)."""
        holders: dict[int, set[int]] = {}
        for s in range(len(prompts)):
            if s in manager:
                for b in manager.block_table(s):
                    holders.setdefault(int(physical[b]), set()).add(s)
        return {b: next(iter(h)) + 1 if len(h) == 1 else KV_SHARED for b, h in holders.items()}

    shared = peak = 0

    def finish(s: int) -> None:
        tables[s] = tuple(int(physical[b]) for b in manager.block_table(s))
        manager.free(s)

    while waiting or running:
        while waiting and len(running) < max_batch:
            s = waiting[0]
            whole = -(-rows(s) // block_tokens)
            need = (manager.blocks_needed(prompts[s]) + whole
                    - -(-len(prompts[s]) // block_tokens))
            if need + sum(growth(r) for r in running) > manager.free_blocks:
                if not running:
                    raise PoolExhausted(f"sequence {s} needs {need} KV blocks "
                                        f"({rows(s)} rows of {block_tokens}), "
                                        f"{manager.free_blocks} of {pool_blocks} are free")
                break
            waiting.pop(0)
            admission = manager.add(s, prompts[s])
            cached[s] = admission.cached_tokens
            schedule.append(BatchStep("prefill", (s,)))
            live.append(referenced())
            generated[s] = 1
            if generated[s] == max_new_tokens[s]:
                finish(s)
            else:
                running.append(s)
        peak = max(peak, manager.used_blocks)
        shared = max(shared, sum(1 for b in range(pool_blocks) if manager.refs(b) > 1))
        if not running:
            continue
        for s in running:
            manager.append(s, -1 - s)               # a stand-in id no prompt holds
        peak = max(peak, manager.used_blocks)
        schedule.append(BatchStep("decode", tuple(running)))
        live.append(referenced())
        for s in list(running):
            generated[s] += 1
            if generated[s] == max_new_tokens[s]:
                finish(s)
                running.remove(s)
    sequences = tuple(SequencePlan(tuple(int(t) for t in prompts[s]), int(max_new_tokens[s]),
                                   tables[s], cached[s]) for s in range(len(prompts)))
    return DevicePlan(sequences, tuple(schedule), pool_blocks, shared, peak, tuple(live))
