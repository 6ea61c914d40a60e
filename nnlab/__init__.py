"""nnlab: how initialisation, activation and depth change the training of a from-scratch NumPy network."""
__version__ = "0.1.0"
