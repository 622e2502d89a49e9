"""xwin: the Xwin-LM alignment recipe as a batch system."""

__version__ = "0.1.0"
