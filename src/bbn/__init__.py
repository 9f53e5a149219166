"""bbn: Bilateral-Branch Network with Cumulative Learning for long-tailed recognition."""

__version__ = "0.1.0"
