"""autointerp: label and score sparse-autoencoder features with LLMs.

Stages (collect -> explain -> score -> report) talk only through the DuckDB store
(`autointerp.store.Store`); see ARCHITECTURE.md in the repository.
"""

__version__ = "0.1.0"
