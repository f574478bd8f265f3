"""MaligNet bundle: semi-supervised bone-lesion instance segmentation on bone scintigraphy."""

__version__ = "0.1.0"
