"""srctl: train, track and serve ESPCN super-resolution models."""

__version__ = "0.1.0"
