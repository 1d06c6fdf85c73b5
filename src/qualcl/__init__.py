"""qualcl: quality-aware representation learning on medical images.

Layers (imports only point down): ``cli`` → ``recipes`` → ``data`` / ``metrics`` →
``losses`` / ``samplers`` / ``heads`` / ``optim`` → ``kernels`` → ``functional`` → ``distributed``.
"""

__version__ = "0.1.0"
