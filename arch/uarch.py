"""The fixed sizes of the accelerator's microarchitecture, beside the hardware description.

These are not design-space parameters (``arch.hardware.HardwareConfig`` holds those):
they are the depths of the queues that decouple the RTL's units. The RTL is built with
them and the performance model (``sweeps.perf``, ``arch.occupancy``) times programs
with them, so they live here, in a module that imports nothing.
"""

FETCH_AHEAD = 16   # instruction fetch reads in flight (rtl/controller.py)
QUEUE_DEPTH = 8    # instructions queued per engine (rtl/controller.py)
DEFERRED = 4       # a DMA engine's instructions in flight after their last row command
CMD_DEPTH = 64     # row commands queued in a copier: covers the DRAM latency for short rows
