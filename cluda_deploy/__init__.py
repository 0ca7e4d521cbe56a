"""cluda-deploy: unsupervised domain adaptation (CLUDA, DAFormer, HRDA, CONFETI) for semantic
segmentation, with export to ONNX / TensorRT and an HTTP server."""

__version__ = "0.1.0"
