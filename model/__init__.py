"""The AVT-CA network, its data readers, training, evaluation and export.

Importing this package imports nothing heavy; each submodule pulls in torch where it needs it.
"""
