"""Bilevel tasks: data + inner problem + outer loss + metrics + baseline, one per file."""
