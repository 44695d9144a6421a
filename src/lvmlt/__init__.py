"""lvmlt: long-tailed recognition with frozen large-vision-model features."""

__version__ = "0.1.0"
