"""Performance model, cost model, design-space sweeps and reports
(see ../shared/DESIGN.md)."""
