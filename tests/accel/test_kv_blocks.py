"""The host's KV block manager (``accel.kv_blocks``): block tables that read back every
sequence's tokens through random interleavings of add, append, fork and free; prefix
sharing, copy on write, refusals with their numbers; continuous batching over a trace."""

from __future__ import annotations

import random

import numpy as np
import pytest

from accel.kv_blocks import (
    EVICTED,
    BlockManager,
    ContiguousReservation,
    ContinuousBatcher,
    PoolExhausted,
    Request,
    ReservationExceeded,
    plan_batch,
)
from arch.isa import KV_SHARED


class _Pool:
    """What the device's KV pool would hold: the token id written at each (block, row)."""

    def __init__(self, m: BlockManager):
        self.rows = np.full((m.n_blocks, m.block_tokens), -1, np.int64)
        self.m = m

    def write(self, seq, tokens, first):
        for i, t in enumerate(tokens[first:], first):
            b = self.m.block_table(seq)[i // self.m.block_tokens]
            self.rows[b, i % self.m.block_tokens] = t

    def read(self, seq, n):
        table = self.m.block_table(seq)
        return [int(self.rows[table[i // self.m.block_tokens], i % self.m.block_tokens])
                for i in range(n)]


def test_blocks_are_allocated_on_demand_and_freed_on_completion():
    m = BlockManager(n_blocks=8, block_tokens=4)
    a = m.add("a", [1, 2, 3, 4, 5])
    assert len(a.table) == 2 and m.used_blocks == 2 and a.cached_tokens == 0
    for t in range(3):
        assert m.append("a", 10 + t) is None
    assert m.used_blocks == 2                     # 8 tokens: still two blocks
    m.append("a", 20)
    assert m.used_blocks == 3 and m.live_rows() == 9 and m.allocated_rows() == 12
    m.free("a")
    assert m.free_blocks == 8 and m.allocated_rows() == 0


def test_a_common_prompt_prefix_shares_its_full_blocks():
    m = BlockManager(n_blocks=16, block_tokens=4)
    system = list(range(100, 110))                # 2 full blocks and 2 tokens
    a = m.add("a", system + [1, 2, 3])
    b = m.add("b", system + [7])
    assert b.table[:2] == a.table[:2] and b.table[2] != a.table[2]
    assert b.shared_blocks == 2 and b.cached_tokens == 8
    assert [m.refs(x) for x in a.table] == [2, 2, 1, 1]
    assert m.used_blocks == 5 and m.logical_rows() == 24 and m.live_rows() == 16
    # a prompt that is all shared blocks still computes its last token
    c = m.add("c", system[:8])
    assert c.cached_tokens == 7 and c.table == a.table[:2]
    unshared = BlockManager(n_blocks=16, block_tokens=4, prefix_sharing=False)
    unshared.add("a", system + [1, 2, 3])
    assert unshared.add("b", system + [7]).cached_tokens == 0 and unshared.used_blocks == 7


def test_a_freed_prefix_block_is_taken_back_until_it_is_reused():
    m = BlockManager(n_blocks=4, block_tokens=2)
    first = m.add("a", [5, 6, 7, 8, 9]).table
    m.free("a")
    again = m.add("b", [5, 6, 7, 8, 1])
    assert again.table[:2] == first[:2] and again.cached_tokens == 4
    m.free("b")
    m.add("c", [1, 2, 3, 4, 5, 6, 7, 8])          # takes every block: the old keys go
    m.free("c")
    assert m.add("d", [5, 6, 7, 8, 1]).cached_tokens == 0


def test_fork_then_append_copies_the_shared_last_block():
    m = BlockManager(n_blocks=8, block_tokens=4)
    pool = _Pool(m)
    m.add("p", [1, 2, 3, 4, 5, 6])
    pool.write("p", [1, 2, 3, 4, 5, 6], 0)
    m.fork("p", "q")
    cow = m.append("q", 70)
    assert cow is not None and cow.src == m.block_table("p")[1] and cow.rows == 2
    pool.rows[cow.dst, :cow.rows] = pool.rows[cow.src, :cow.rows]
    pool.write("q", [1, 2, 3, 4, 5, 6, 70], 6)
    assert m.append("p", 80) is None              # p's block is its own again
    pool.write("p", [1, 2, 3, 4, 5, 6, 80], 6)
    assert pool.read("p", 7) == [1, 2, 3, 4, 5, 6, 80]
    assert pool.read("q", 7) == [1, 2, 3, 4, 5, 6, 70]
    assert m.block_table("p")[0] == m.block_table("q")[0]


def test_refusals_name_the_blocks_needed_and_free():
    m = BlockManager(n_blocks=3, block_tokens=4)
    m.add("a", list(range(8)))
    assert not m.can_add(list(range(20, 29)))
    with pytest.raises(PoolExhausted, match=r"needs 3 KV blocks .* 1 of 3 are free"):
        m.add("b", list(range(20, 29)))
    m.add("b", [1])
    for t in range(3):
        m.append("b", t)
    with pytest.raises(PoolExhausted, match="0 of 3 are free"):
        m.append("a", 99)
    assert m.block_table("a") == m.block_table("a")[:2] and m.live_rows() == 12
    with pytest.raises(KeyError, match="already"):
        m.add("a", [1])
    with pytest.raises(ValueError, match="empty prompt"):
        m.add("z", [])
    with pytest.raises(ValueError, match="n_blocks"):
        BlockManager(n_blocks=0, block_tokens=4)


@pytest.mark.parametrize("seed", range(6))
def test_every_sequence_reads_back_its_own_tokens_through_its_table(seed):
    """Random adds (prompts drawn from a few shared prefixes), appends, evictions,
    restores, forks and frees: after every operation, each live sequence's tokens in the
    pool, read through its block table from a pool written only where the manager said
    (copies and restored blocks included), are its own, the reference counts equal the
    tables' uses and no free block is in a table."""
    rng = random.Random(seed)
    m = BlockManager(n_blocks=40, block_tokens=rng.choice([1, 2, 4, 16]))
    pool = _Pool(m)
    prefixes = [[rng.randrange(50) for _ in range(rng.randrange(1, 40))] for _ in range(3)]
    tokens: dict[int, list[int]] = {}
    next_id = 0
    for _ in range(400):
        op = rng.random()
        if op < 0.25:
            prompt = rng.choice(prefixes)[:rng.randrange(1, 40)] + \
                [rng.randrange(50) for _ in range(rng.randrange(0, 6))]
            if m.can_add(prompt):
                admission = m.add(next_id, prompt)
                pool.write(next_id, prompt, admission.cached_tokens)
                tokens[next_id] = list(prompt)
            else:
                with pytest.raises(PoolExhausted):
                    m.add(next_id, prompt)
            next_id += 1
        elif op < 0.75 and tokens:
            seq = rng.choice(sorted(tokens))
            t = rng.randrange(50)
            try:
                cow = m.append(seq, t)
            except PoolExhausted:
                continue
            if cow is not None:
                pool.rows[cow.dst, :cow.rows] = pool.rows[cow.src, :cow.rows]
            tokens[seq].append(t)
            pool.write(seq, tokens[seq], len(tokens[seq]) - 1)
        elif op < 0.8 and tokens:
            seq = rng.choice(sorted(tokens))
            if rng.random() < 0.5:
                m.evict(seq, rng.randrange(len(m.block_table(seq))))
            else:
                try:
                    back = m.restore(seq)
                except PoolExhausted:
                    continue
                for j, b in back:                     # the runtime reloads the rows
                    pool.rows[b] = tokens[seq][j * m.block_tokens:(j + 1) * m.block_tokens]
        elif op < 0.85 and tokens:
            parent = rng.choice(sorted(tokens))
            m.fork(parent, next_id)
            tokens[next_id] = list(tokens[parent])
            next_id += 1
        elif tokens:
            seq = rng.choice(sorted(tokens))
            m.free(seq)
            del tokens[seq]
        uses: dict[int, int] = {}
        filled: dict[int, int] = {}
        for seq, toks in tokens.items():
            table = m.block_table(seq)
            assert len(table) == -(-len(toks) // m.block_tokens)
            assert table[-1] != EVICTED
            held = [i for i in range(len(toks)) if table[i // m.block_tokens] != EVICTED]
            assert [pool.read(seq, len(toks))[i] for i in held] == [toks[i] for i in held]
            for j, b in enumerate(table):
                if b == EVICTED:
                    continue
                uses[b] = uses.get(b, 0) + 1
                filled[b] = max(filled.get(b, 0), min(m.block_tokens,
                                                      len(toks) - j * m.block_tokens))
        assert all(m.refs(b) == uses.get(b, 0) for b in range(m.n_blocks))
        assert m.used_blocks == len(uses)
        assert m.live_rows() == sum(filled.values())
        assert m.logical_rows() == sum(map(len, tokens.values()))


def test_evicted_blocks_leave_the_pool_and_come_back_to_be_filled():
    m = BlockManager(n_blocks=6, block_tokens=4)
    pool = _Pool(m)
    tokens = list(range(100, 114))                    # 4 blocks, the last partial
    m.add("a", tokens)
    pool.write("a", tokens, 0)
    assert m.evict("a", 2) == [0, 1] and m.evict("a", 2) == []
    assert m.block_table("a")[:2] == [EVICTED, EVICTED] and m.evicted_blocks("a") == [0, 1]
    assert m.used_blocks == 2 and m.live_rows() == 6
    m.append("a", 7)                                  # decoding goes on meanwhile
    tokens.append(7)
    pool.write("a", tokens, 14)
    m.add("b", list(range(16)))                       # takes the 4 free blocks
    with pytest.raises(PoolExhausted, match="needs 2 KV blocks to come back, 0 of 6"):
        m.restore("a")
    m.free("b")
    back = m.restore("a")
    assert [j for j, _ in back] == [0, 1] and EVICTED not in m.block_table("a")
    for j, b in back:                                 # the runtime reloads or recomputes
        pool.rows[b] = tokens[j * 4:(j + 1) * 4]
    assert pool.read("a", 15) == tokens and m.live_rows() == 15
    with pytest.raises(ValueError, match="cannot evict 4 .at most all but the last"):
        m.evict("a", 4)
    m.evict("a", 3)
    m.fork("a", "c")
    m.free("a")
    m.free("c")
    assert m.free_blocks == 6


def test_blocks_still_in_the_pool_come_back_without_a_fill():
    """A block another sequence shares, or one freed and not yet reused, still holds its
    rows: ``restore`` takes it back and asks to fill only the others."""
    m = BlockManager(n_blocks=10, block_tokens=2)
    m.add("a", [1, 2, 3, 4, 5, 6, 7])
    m.add("b", [1, 2, 3, 4, 9])                       # shares a's first two blocks
    table = m.block_table("a")
    assert m.evict("a", 3) == [0, 1, 2] and m.free_blocks == 10 - 5 + 1    # a's third
    assert m.restore("a") == [] and m.block_table("a") == table
    m.evict("a", 3)
    m.free("b")
    m.add("c", [8] * 12)                  # six blocks: the free queue reaches a's third
    back = m.restore("a")
    assert len(back) == 1 and m.block_table("a")[:3].count(back[0][1]) == 1
    m.free("c")
    assert m.add("d", [1, 2, 3, 4, 5, 6, 0]).cached_tokens == 6    # keys kept and renewed


def test_a_bad_token_changes_nothing():
    m = BlockManager(n_blocks=4, block_tokens=2)
    m.add("a", [1, 2])
    m.fork("a", "b")
    with pytest.raises(ValueError):
        m.append("a", "x")
    with pytest.raises(ValueError):
        m.append("b", "x")
    assert m.block_table("a") == m.block_table("b") and m.free_blocks == 3
    with pytest.raises(ValueError, match="cannot evict"):
        m.evict("a", 1.0)


def test_contiguous_reservation_reserves_first_fit():
    c = ContiguousReservation(n_blocks=4, block_tokens=4, reserve_tokens=6)
    c.add("a", [1, 2])
    c.add("b", [1, 2, 3])
    assert c.allocated_rows() == 12 and c.live_rows() == 5
    assert not c.can_add([1])                     # 4 slots left, 6 needed
    c.free("a")
    c.add("c", [9])                               # the hole at slot 0
    with pytest.raises(PoolExhausted, match="6 contiguous token slots"):
        c.add("d", [1])
    for _ in range(5):
        c.append("c", 0)
    with pytest.raises(PoolExhausted, match="used its 6"):
        c.append("c", 0)


def _trace(rng, n, max_len):
    shared = [rng.randrange(1000) for _ in range(48)]
    out = []
    for i in range(n):
        prompt = [rng.randrange(1000) for _ in range(rng.randrange(4, 120))]
        if rng.random() < 0.5:
            prompt = shared + prompt[:40]
        limit = max_len - len(prompt)
        out.append(Request(tuple(prompt), rng.randrange(1, limit + 1), limit, i // 2))
    return out


def test_continuous_batching_serves_every_request_and_wastes_less_than_reserving():
    rng = random.Random(3)
    requests = _trace(rng, 60, 256)
    paged = ContinuousBatcher(BlockManager(n_blocks=64, block_tokens=16), requests).run()
    reserved = ContinuousBatcher(ContiguousReservation(n_blocks=64, block_tokens=16,
                                                       reserve_tokens=256), requests).run()
    for stats in (paged, reserved):
        assert sorted(stats.finished) == list(range(60))
        assert stats.generated_tokens >= sum(r.output_tokens for r in requests)
    assert reserved.generated_tokens == sum(r.output_tokens for r in requests)
    assert paged.mean_waste < 0.1 < 0.4 < reserved.mean_waste
    assert paged.mean_batch > 1.5 * reserved.mean_batch and paged.steps < reserved.steps
    # with room for everyone nothing is preempted and the shared prefixes are computed once
    roomy = ContinuousBatcher(BlockManager(n_blocks=1024, block_tokens=16), requests).run()
    assert roomy.preemptions == 0 and roomy.generated_tokens == reserved.generated_tokens
    assert roomy.prefill_tokens < reserved.prefill_tokens


def test_a_tight_pool_preempts_and_still_finishes_every_request():
    rng = random.Random(5)
    requests = _trace(rng, 30, 200)
    stats = ContinuousBatcher(BlockManager(n_blocks=16, block_tokens=16), requests).run()
    assert sorted(stats.finished) == list(range(30)) and stats.preemptions > 0
    with pytest.raises(PoolExhausted, match="empty KV pool"):
        ContinuousBatcher(BlockManager(n_blocks=2, block_tokens=4),
                          [Request(tuple(range(9)), 1, 1)]).run()
    with pytest.raises(PoolExhausted, match="request 0 needs more than the whole KV pool "
                                            r"\(9 tokens\)"):
        ContinuousBatcher(BlockManager(n_blocks=2, block_tokens=4),
                          [Request((1, 2, 3), 20, 20)]).run()
    with pytest.raises(ReservationExceeded, match="used its 4 reserved"):
        ContinuousBatcher(ContiguousReservation(n_blocks=4, block_tokens=4, reserve_tokens=4),
                          [Request((1, 2), 5, 5), Request((3,), 1, 1)]).run()


def test_idle_steps_are_counted_not_simulated_and_carry_no_waste():
    requests = [Request((1, 2, 3), 4, 4), Request((4, 5), 2, 2, arrival_step=10**12)]
    stats = ContinuousBatcher(BlockManager(n_blocks=4, block_tokens=2), requests).run()
    # request 0: 4 rows of 4, 5 of 6, 6 of 6, then done; request 1: 3 rows of 4, then done
    assert stats.steps == 10**12 + 2 and stats.busy_steps == 4
    assert stats.mean_waste == pytest.approx((0 + 1 / 6 + 0 + 1 / 4) / 4)
    with pytest.raises(RuntimeError, match="not served in 100 steps .0 waiting, 1 running"):
        ContinuousBatcher(BlockManager(n_blocks=400, block_tokens=2),
                          [Request((1,), 300, 300)]).run(100)
    for bad, message in ((dict(output_tokens=0), "output_tokens must be in"),
                         (dict(prompt=()), "prompt of at least one"),
                         (dict(arrival_step=-1), "arrival_step")):
        with pytest.raises(ValueError, match=message):
            Request(**{"prompt": (1,), "output_tokens": 1, "max_new_tokens": 1, **bad})


def test_plan_batch_makes_plans_the_compiler_accepts():
    """Random prompts (some sharing prefixes), output lengths, batch limits and pool
    sizes: every plan passes ``driver.check_batch`` (which replays it row by row: no
    sequence reads a row another overwrote, shared prefixes written before they are
    read), no decode step runs more than ``max_batch`` sequences, and sequences join as
    others leave. The block-owner map the compiler derives from the tables and the
    schedule (``driver.block_owners``, what ``KV_LIVE`` hands the device) is, in every
    program, exactly the blocks the block manager's tables hold then, each with its one
    sequence or shared; some programs have free blocks, some shared ones."""
    from compiler.driver import block_owners, check_batch

    rng = np.random.default_rng(7)
    joined_late = with_free = shared = 0
    for _ in range(40):
        bt = int(rng.choice([4, 8, 16]))
        base = [int(t) for t in rng.integers(0, 50, 3 * bt)]
        prompts = []
        for _ in range(int(rng.integers(1, 7))):
            n = int(rng.integers(1, 3 * bt))
            prompts.append(base[:n] + [int(t) for t in rng.integers(0, 50, rng.integers(0, 5))]
                           if rng.random() < 0.5 else
                           [int(t) for t in rng.integers(0, 50, rng.integers(1, 2 * bt))])
        new = [int(rng.integers(1, 2 * bt)) for _ in prompts]
        need = max(-(-(len(p) + n - 1) // bt) for p, n in zip(prompts, new, strict=True))
        pool = need + int(rng.integers(0, 8))
        max_batch = int(rng.integers(1, 5))
        plan = plan_batch(prompts, new, max_batch=max_batch, pool_blocks=pool,
                          block_tokens=bt, seed=int(rng.integers(1000)))
        check_batch(plan.sequences, plan.schedule, pool, bt, 50, 10_000)
        maps = block_owners(plan.sequences, plan.schedule, pool, bt)
        assert [{int(b): int(m[b]) for b in np.flatnonzero(m)} for m in maps] == \
            list(plan.live)
        with_free += sum(not m.all() for m in maps)
        shared += sum((m == KV_SHARED).any() for m in maps)
        decodes = [s.seqs for s in plan.schedule if s.kind == "decode"]
        assert all(len(s) <= max_batch for s in decodes)
        assert plan.peak_blocks <= pool
        first_decode = next((i for i, s in enumerate(plan.schedule) if s.kind == "decode"),
                            len(plan.schedule))
        joined_late += any(s.kind == "prefill" for s in plan.schedule[first_decode:])
    assert joined_late >= 10 and with_free >= 40 and shared >= 10


def test_plan_batch_shares_prefix_blocks_and_refuses_what_cannot_fit():
    prefix = list(range(16))
    plan = plan_batch([prefix + [20, 21], prefix + [30]], [3, 2], max_batch=2, pool_blocks=3,
                      block_tokens=16)
    a, b = plan.sequences
    assert a.table[0] == b.table[0] and a.table[1] != b.table[1]
    assert (a.cached, b.cached) == (0, 16) and plan.shared_blocks == 1
    assert [s.kind for s in plan.schedule] == ["prefill", "prefill", "decode", "decode"]
    with pytest.raises(PoolExhausted, match="needs 3 KV blocks"):
        plan_batch([list(range(40))], [2], max_batch=1, pool_blocks=2, block_tokens=16)
    with pytest.raises(ValueError, match="one output length per prompt"):
        plan_batch([[1]], [1, 2], max_batch=1, pool_blocks=2, block_tokens=16)
    with pytest.raises(ValueError, match="max_batch must be an integer"):
        plan_batch([[1]], [1], max_batch=0, pool_blocks=2, block_tokens=16)
