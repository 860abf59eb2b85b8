"""mha: look inside multi-head attention, on a pure NumPy implementation checked against Hugging Face."""

__version__ = "0.1.0"
