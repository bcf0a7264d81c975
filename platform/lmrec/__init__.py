"""lmrec: real-time personalized recommendation with pretrained language models, on Ray."""

__version__ = "0.1.0"
