"""The engine: the attention kernel, the building blocks, the forward pass and the architecture families (arch/).

Pure NumPy: arrays in, arrays out, no files, no printing. Imports only config/ and errors below it.
"""
