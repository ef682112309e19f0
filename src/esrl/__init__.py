"""esrl: Evolution Strategies vs parallel RL, measured side by side."""

__version__ = "0.1.0"
