"""The offline simulator: replay VM traces through the placement core.

Rule: nothing here places a VM by itself. The engine (`events`) only orders
and walks events; `replay` hands every decision to `pinfold.placement`, the
same allocator and scoring that the agent and the controller run, so that a
simulated result predicts the live system. Readers turn trace files into
`Trace` columns; `report` and `plots` turn results into files.
"""
