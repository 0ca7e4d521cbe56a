"""export stage of cluda-deploy: checkpoint -> verified deployable artefacts.

* ``graph``: the exported module (uint8 RGB in; normalise, resize, network, resize back, argmax
  inside; train ids out);
* ``onnx_export``: one ``torch.export`` trace, written as ONNX opset 18;
* ``quantize``: INT8 Q/DQ with onnxruntime, calibrated on target-domain images;
* ``aoti``: AOTInductor ``.pt2`` packages;
* ``tensorrt``: TensorRT engines (typing plan, profile, timing and engine caches);
* ``sidecar``: the JSON contract beside every artefact (``read_sidecar`` for consumers);
* ``verify``, ``runners``, ``images``: the parity check against PyTorch;
* ``pipeline``: ``cluda export`` / ``cluda verify``.

Nothing here is imported by ``cluda --help``; the CLI imports it inside its subcommands.
"""
