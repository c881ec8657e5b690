"""Views of files for people: `inspect`'s description and the preview picture.

Views read through io and geometry; they never import torch, the engine, run or the CLI.
"""
