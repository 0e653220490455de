"""The variants the pipeline can train, one module each (lenet_mixup/variant.py says what a module defines)."""
