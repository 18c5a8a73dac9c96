"""The fixed sizes of the accelerator's microarchitecture, beside the hardware description.

These are not design-space parameters (``arch.hardware.HardwareConfig`` holds those):
they are the depths of the queues that decouple the RTL's units. The RTL is built with
them and the performance model (``sweeps.perf``, ``arch.occupancy``) times programs
with them, so they live here, in a module that imports nothing.

Tested by tests/rtl/test_controller.py and tests/sweeps/test_perf_model.py (the RTL is
built with these depths and the performance model times programs with them).
"""

FETCH_AHEAD = 16   # instruction fetch reads in flight (rtl/controller.py)
QUEUE_DEPTH = 8    # instructions queued per engine (rtl/controller.py)
DEFERRED = 4       # a DMA engine's instructions in flight after their last row command
CMD_DEPTH = 64     # row commands queued in a copier: covers the DRAM latency for short rows
# A copier's landing buffer of source lines (rtl/copier.py). An L2 read is issued only with
# room for its data, and one line per cycle needs three lines between the grant and the
# buffered FIFO's output: with 4 entries (3 usable) L2 row readers ran at two lines per
# three cycles.
COPIER_FIFO_DEPTH = 5
SEGMENT_DEPTH = 8  # vector segment descriptors queued between issuer and datapath

# The matmul unit's tiles (rtl/matmul_unit.py, HardwareConfig.matmul_tile): a GEMV tile is
# ``array_rows`` x rows by ``TILE_LINES`` lines of the reduction; a GEMM tile has
# ``GEMM_ROW_FACTOR`` times the rows and as many times fewer lines, so both fill the same x
# buffer, and streams enough rows through each stationary weight block (``4 R`` >= ``R``)
# to hide the next block's preload.
TILE_LINES = 8
GEMM_ROW_FACTOR = 4

# An engine (rtl/engine.py's shell) pops an instruction in IDLE and takes its tokens in
# BEGIN: its unit starts two cycles after the engine's previous END.
ENGINE_START_CYCLES = 2

# The controller's pipeline (rtl/controller.py), as the performance model times it: the
# first fetch request FETCH_START cycles after start (start and pc are registered), an
# instruction decoded and dispatched DISPATCH_LATENCY cycles after its DRAM response, and
# done DONE_LATENCY cycles after the last engine's end (a DMA_LOAD, then a DMA_STORE waiting
# on it, traced on the RTL: the store's last busy cycle 224, done in 225; it was 2 while a
# load's end, Calibration.load_end, was timed a cycle early).
FETCH_START = 2
DISPATCH_LATENCY = 2
DONE_LATENCY = 1
# KV_LIVE: from the cycle after the last engine's end to its first map read's request,
# and from the last map word's request to the instruction's acceptance, less the DRAM's
# latency (rtl/controller.py's map reader).
MAP_READ_START = 2

# Power-on reset: the top holds every flip-flop in reset for this many cycles after the
# simulator starts (rtl/top.py), and the cocotb bench waits them out (rtl/bench.py).
RESET_CYCLES = 3

# The widest compressed KV chunk (one head's channels) the KV prefetch engine expands: its
# transpose buffer holds kv_block_tokens rows of this many bytes (rtl/kv_chunks.py). A
# CHUNKED KV_PREFETCH of more columns stops with BAD_OPERAND.
KV_CHUNK_MAX_COLS = 128

# The block-owner map the controller holds (KV_LIVE, rtl/controller.py): a byte a KV pool
# block, 4,096 blocks (4 KiB; 65,536 token rows at 16 tokens a block). A KV_LIVE of more
# blocks stops with BAD_OPERAND; a batched build whose pool is larger is refused.
KV_MAP_BLOCKS = 4096


def dram_queue_lines(latency_cycles: int) -> int:
    """Lines the DRAM model holds between accepting a read and its data being taken
    (``rtl/dram.py``'s response queue: every read in flight and every answer not yet
    taken): room for its latency and a few cycles more, as a power of two. Data leaves
    in request order, so a read accepted behind a full queue waits for all of it
    (``sweeps.perf._queued``)."""
    return max(4, 1 << (latency_cycles + 4).bit_length())
