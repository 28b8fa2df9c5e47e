"""Tokenizers: text (SentencePiece, LWM conventions), the vision token layout, the VQGAN.

Importable as ``lwmkit.tokenizers`` only: this folder is never a top-level ``tokenizers``
package (that name is Hugging Face's).
"""
