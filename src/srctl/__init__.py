"""srctl: train, track and serve ESPCN super-resolution models."""

import logging

__version__ = "0.1.0"

# torch.compile's C++ builder warns "No CUDA runtime is found" on every CPU-only machine that has a
# CUDA toolkit folder; srctl builds no CUDA extensions, so the line is noise.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
