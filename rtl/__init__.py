"""The accelerator in Amaranth HDL: hybrid systolic array, vector unit, DMA and KV
prefetch engines, L2 scratchpad and controller, with Verilog emission and synthesis
statistics (see ../shared/DESIGN.md)."""
