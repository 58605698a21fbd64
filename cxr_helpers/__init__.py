"""cxr: chest X-ray classification analysis, from a folder of images to a reviewed, explained model."""

__version__ = "0.1.0"
