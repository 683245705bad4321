"""rlflat: does a flat optimum make an RL policy robust to shifted dynamics?"""

__version__ = "0.1.0"
