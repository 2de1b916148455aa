"""SPPD workbench: step-level self-training of LLM math reasoners (see README.md)."""

__version__ = "0.1.0"
