"""adcore: industrial visual anomaly detection (PatchCore, CFA, FRAD, PRN, N-Net)."""

__version__ = "0.1.0"

#: Version of the on-disk model format; bump when a saved model can no longer be read.
MODEL_FORMAT_VERSION = 2
