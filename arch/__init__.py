"""The accelerator's architecture, below everything else: the hardware description
(``hardware``), the ISA declaration and instructions as values (``isa``), the fixed sizes
of the microarchitecture (``uarch``) and the cycles each instruction keeps its engine
busy (``occupancy``). The compiler, the ISA simulator, the RTL, the performance model and
the cost model import it; it imports nothing of theirs (see ../shared/DESIGN.md)."""
