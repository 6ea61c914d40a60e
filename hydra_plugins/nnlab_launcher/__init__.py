"""nnlab's Hydra launcher plugin (Hydra only instantiates plugins that live under ``hydra_plugins``)."""
