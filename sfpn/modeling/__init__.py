"""Detector building blocks: backbones, the FPN/SFPN neck, the semantic head, RPN and RoI heads."""
from .semantic_head import SemanticHead

__all__ = ["SemanticHead"]
