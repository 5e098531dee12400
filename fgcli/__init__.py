"""fgcli: fine-grained visual classification (HERBS, MGE-CNN) from the command line."""

__version__ = "0.1.0"
