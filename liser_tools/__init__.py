"""LiSER's tools around the engine: the paper report of a grid (label-efficiency curves, tables,
Pareto view, a self-contained HTML page). They read what runs wrote; the core does not import
them."""
