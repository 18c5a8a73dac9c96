"""The engine shell: an engine's queue, its dependency-token handshake and its faults.

Contract
--------
``EngineShell(deferred=n)`` is what the compute engine (``rtl/compute.py``) and the DMA
engines (``rtl/dma.py``) share. It takes an instruction from the engine's ``queue``
(``IDLE``), asks the controller to ``begin`` it with its wait and signal masks
(``BEGIN``; ``stall`` while not allowed), hands it to the engine's *body* for execution,
and ends it (``END``: ``end`` with the instruction's signal mask). Towards the body:

* ``word``, ``index``: the instruction executing, held from the cycle it is taken;
* ``start``: the first cycle of execution (the cycle after ``begin`` was allowed);
  ``running``: every cycle of execution, ``start`` included;
* ``done`` (ignored in the ``start`` cycle): the body has finished; the shell ends the
  instruction in the next cycle;
* ``error`` with ``error_code``: the body refuses the instruction; the shell reports
  it on ``fault`` (with ``index``) in that cycle and stops (``HALTED``) for good.

With ``deferred = n > 0`` (the DMA engines) the body may instead finish with ``defer``
(taken when ``defer_ready``): the instruction ends later, when the body pulses
``marked``, and up to ``n`` such instructions await their end, oldest first (their
signal masks are queued here). The shell goes straight back to ``IDLE``; ``inflight``
says that some are waiting. ``busy``: executing, ending, or (``IDLE``/``BEGIN``) with
instructions in flight; ``idle``: in ``IDLE`` with none in flight and none arriving;
``stall``: waiting for tokens with none in flight.

Tested by tests/rtl/test_accelerator.py (the token handshake and the faults of every
engine) and tests/rtl/test_tiny_rtl.py.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from arch import isa
from rtl.controller import ErrorPort, TokenPort
from rtl.decode import INDEX_BITS, queued_layout, signal_mask, wait_mask


class EngineShell(wiring.Component):
    def __init__(self, *, deferred: int = 0):
        if not isinstance(deferred, int) or deferred < 0:
            raise ValueError(f"deferred must be a non-negative int, not {deferred!r}")
        self.deferred = deferred
        members = {
            "queue": In(stream.Signature(queued_layout())),
            "tokens": Out(TokenPort()),
            "fault": Out(ErrorPort()),
            "idle": Out(1), "busy": Out(1), "stall": Out(1),
            "word": Out(isa.INSTR_BITS), "index": Out(INDEX_BITS),
            "start": Out(1), "running": Out(1),
            "done": In(1), "error": In(1), "error_code": In(isa.ErrorCode),
        }
        if deferred:
            members.update({"defer": In(1), "defer_ready": Out(1), "marked": In(1),
                            "inflight": Out(1)})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        word = self.word
        ending = Signal()                  # the END state: this instruction ends now
        m.d.comb += [self.tokens.wait.eq(wait_mask(word)),
                     self.tokens.signal.eq(signal_mask(word)),
                     self.fault.valid.eq(self.error & self.running),
                     self.fault.code.eq(self.error_code), self.fault.index.eq(self.index)]
        if self.deferred:
            # Signal masks of the instructions awaiting their end, oldest first: the
            # body's ``marked`` pulse ends the oldest.
            m.submodules.deferred = q = fifo.SyncFIFO(width=isa.MASK_BITS, depth=self.deferred)
            inflight = q.r_rdy
            m.d.comb += [q.w_data.eq(signal_mask(word)), q.r_en.eq(self.marked),
                         self.inflight.eq(inflight), self.defer_ready.eq(q.w_rdy),
                         self.tokens.end.eq(ending | self.marked),
                         self.tokens.end_signal.eq(Mux(ending, signal_mask(word), q.r_data))]
        else:
            inflight = Const(0)
            m.d.comb += [self.tokens.end.eq(ending), self.tokens.end_signal.eq(signal_mask(word))]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.idle.eq(~inflight), self.busy.eq(inflight),
                             self.queue.ready.eq(1)]
                with m.If(self.queue.valid):
                    m.d.sync += [word.eq(self.queue.payload.word),
                                 self.index.eq(self.queue.payload.index)]
                    m.d.comb += self.idle.eq(0)
                    m.next = "BEGIN"
            with m.State("BEGIN"):
                m.d.comb += [self.tokens.begin.eq(1), self.busy.eq(inflight),
                             self.stall.eq(~self.tokens.allowed & ~inflight)]
                with m.If(self.tokens.allowed):
                    m.next = "START"
            with m.State("START"):
                m.d.comb += [self.busy.eq(1), self.start.eq(1), self.running.eq(1)]
                with m.If(self.error):
                    m.next = "HALTED"
                with m.Else():
                    m.next = "EXEC"
            with m.State("EXEC"):
                m.d.comb += [self.busy.eq(1), self.running.eq(1)]
                with m.If(self.error):
                    m.next = "HALTED"
                with m.Elif(self.done):
                    m.next = "END"
                if self.deferred:
                    with m.Elif(self.defer & q.w_rdy):
                        m.d.comb += q.w_en.eq(1)
                        m.next = "IDLE"
            with m.State("END"):
                m.d.comb += [self.busy.eq(1), ending.eq(1)]
                m.next = "IDLE"
            with m.State("HALTED"):
                pass
        return m
