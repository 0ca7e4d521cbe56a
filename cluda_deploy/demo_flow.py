"""``cluda demo``: the main job end to end on the procedural demo domains.

generate source/target -> adapt -> evaluate on the target val split -> predict a few frames ->
export to ONNX and check it against PyTorch. Stages are imported here, inside the function, like
the CLI does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path


def run_demo(
    data_root: Path,
    out: Path,
    method: str | None = None,
    iters: int | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    from cluda_deploy.checkpoint import load_segmenter
    from cluda_deploy.config import resolve_config
    from cluda_deploy.data import create_dataset, default_root, generate_demo_domains
    from cluda_deploy.evaluate import evaluate_pairs
    from cluda_deploy.predict import predict_images
    from training.loop import adapt

    started = time.perf_counter()
    echo(f"[1/5] demo domains in {data_root}")
    generate_demo_domains(data_root)

    sets = [f"data.root={data_root}"]
    if method:
        sets.append(f"train.method={method}")
    if iters:
        sets.append(f"train.iters={iters}")
    cfg = resolve_config("demo", sets + list(overrides or []))
    echo(f"[2/5] adapt ({cfg.train.method}, {cfg.train.iters} iterations) into {out / 'adapt'}")
    result = adapt(cfg, out / "adapt", progress=progress)

    checkpoint = result.best or result.latest
    echo(f"[3/5] evaluate {checkpoint} on the demo target val split")
    model, info = load_segmenter(checkpoint)
    val = create_dataset(cfg.data.target, default_root(cfg.data.target, cfg.data.root), split="val")
    pairs = val.labelled_pairs()
    scores = evaluate_pairs(model, pairs, info.config.eval, info.label_space, info.mean, info.std,
                            progress=progress)
    echo(scores.table())
    (out / "eval.json").write_text(json.dumps(scores.to_dict(), indent=2))

    echo(f"[4/5] predict 4 target frames into {out / 'predictions'}")
    images = [image for image, _ in pairs[:4]]
    predict_images(model, images, out / "predictions", info.config.eval, info.label_space,
                   info.mean, info.std, progress=progress)

    from export.options import ExportOptions
    from export.pipeline import OnnxRuntimeMissing, export_model

    echo(f"[5/5] export {checkpoint} to ONNX in {out / 'export'}, checked against PyTorch")
    val_images = default_root(cfg.data.target, cfg.data.root) / "leftImg8bit" / "val"
    onnx_path = None
    try:  # export_model checks for onnxruntime before any work
        exported = export_model(checkpoint, out / "export", ExportOptions(
            data=val_images, max_images=10, generated=2), echo=echo)  # fmt: skip
        onnx_path = str(exported.artefacts["onnx_fp32"])
    except OnnxRuntimeMissing as exc:  # the trained model, scores and predictions are kept
        echo(f"  export skipped: {exc}")
    summary = {
        "checkpoint": str(checkpoint),
        "method": cfg.train.method,
        "iterations": result.iterations,
        "target_val_mIoU": scores.miou,
        "predictions": str(out / "predictions"),
        "onnx": onnx_path,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    echo(f"demo done in {summary['seconds']} s: target mIoU {100 * scores.miou:.2f}; "
         f"see {out}/summary.json and {out}/predictions/")
    return summary
