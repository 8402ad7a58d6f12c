"""moat's code interpreter: the in-guest server on port 49999 and its kernels.

docs/code-interpreter.md describes the whole; shared/E2B-CODE-INTERPRETER.md is the wire
contract of the official @e2b/code-interpreter client it serves.
"""
