"""Readers for the shared data layout (ner/, cls/, pairs/, raw/) and pseudo-label files, plus batch samplers."""
