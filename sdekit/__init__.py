"""sdekit: diffusion models as SDEs and ODEs, solved well."""

__version__ = "0.1.0"
