"""Compiler: traces the integer reference with ``jax.make_jaxpr``, lowers it to an IR of
tensor operations, tiles and schedules it for the accelerator, and emits the program and
its DRAM image; also holds the bit-exact ISA simulator (see ../shared/DESIGN.md)."""
