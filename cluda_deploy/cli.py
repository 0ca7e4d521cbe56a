"""The ``cluda`` command line. Stages are imported inside their subcommands so ``--help`` is instant."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

# Errors a user can fix; shown as one line instead of a traceback.
_USER_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError, RuntimeError, KeyError)


def friendly_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except _USER_ERRORS as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise click.ClickException(f"{type(exc).__name__}: {message}") from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="cluda-deploy")
def main() -> None:
    """cluda-deploy: adapt a segmenter from synthetic to real driving images, export it, serve it.

    \b
    Typical flow:
      cluda data prepare gta --root data/gta        # convert labels, class statistics
      cluda data check --source gta --target cityscapes --data-root data
      cluda adapt --source gta --target cityscapes --data-root data
      cluda evaluate --checkpoint runs/adapt/checkpoints/best.pt --dataset cityscapes
      cluda predict --checkpoint runs/adapt/checkpoints/best.pt frames/ --out preds/
      cluda export --checkpoint runs/adapt/checkpoints/best.pt --out export/   # ONNX, verified
    Try it without any dataset:  cluda demo
    """


# --------------------------------------------------------------------------- adapt


def _default_preset(source: str | None, target: str | None) -> str:
    if source in ("demo-source",) or target in ("demo-target",):
        return "demo"
    # The papers' headline setup: CLUDA on HRDA (74.4 mIoU GTA -> Cityscapes).
    return "cluda-hrda-mitb5-synthia" if source == "synthia" else "cluda-hrda-mitb5"


@main.command()
@click.option("--preset", default=None, help="Named config (see 'cluda presets'). Default: "
              "cluda-hrda-mitb5, or cluda-hrda-mitb5-synthia for --source synthia.")
@click.option("--method", type=click.Choice(["source-only", "dacs", "cluda", "confeti"]), default=None,
              help="UDA method (default: the preset's; cluda for the paper presets): source-only "
              "(supervised on the source), dacs (DAFormer self-training: EMA teacher, ClassMix, "
              "rare-class sampling, feature distance), cluda (dacs + the CLUDA contrastive loss), "
              "confeti (dacs on CUT-stylised source + prototype contrast; runs its whole "
              "schedule, see the confeti-dlv2-r101* and demo-confeti presets).")
@click.option("--source", default=None, help="Source dataset: gta | synthia (| demo-source).")
@click.option("--target", default=None, help="Target dataset: cityscapes | folder (| demo-target).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Folder holding gta/, synthia/, cityscapes/ (default: the preset's, 'data').")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Where checkpoints, TensorBoard logs and eval JSON go (default runs/<preset>-<method>).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set train.iters=500 --set data.crop_size=512x512.")
@click.option("--iters", type=int, default=None, help="Shortcut for --set train.iters=N.")
@click.option("--seed", type=int, default=None, help="Shortcut for --set train.seed=N.")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N (default auto).")
@click.option("--resume", "resume", is_flag=False, flag_value="latest", default=None,
              help="Continue a run: bare --resume uses <run-dir>/checkpoints/latest.pt, or give a path.")
@click.option("--mic", is_flag=True, default=None,
              help="Add MIC's masked target loss (masked image consistency): sets uda.mic=true.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def adapt(preset, method, source, target, data_root, run_dir, overrides, iters, seed, device, resume,
          mic, dry_run, quiet):
    """Train a segmenter on labelled SOURCE images and adapt it to unlabelled TARGET images.

    Writes RUN_DIR/config.json, RUN_DIR/checkpoints/{latest,best}.pt, RUN_DIR/eval/*.json and
    TensorBoard logs (tensorboard --logdir RUN_DIR). Ctrl-C saves latest.pt; --resume continues
    exactly where it stopped.
    """
    from cluda_deploy.config import resolve_config

    sets = list(overrides)
    for key, value in (("train.method", method), ("data.source", source), ("data.target", target),
                       ("data.root", data_root), ("train.iters", iters), ("train.seed", seed),
                       ("train.device", device), ("uda.mic", mic or None)):
        if value is not None:
            sets.insert(0, f"{key}={value}")
    cfg = resolve_config(preset or _default_preset(source, target), sets)
    if cfg.uda.mic and cfg.train.method not in ("dacs", "cluda"):
        raise click.UsageError(f"--mic (uda.mic) needs a self-training method, not "
                               f"{cfg.train.method!r}: use --method cluda or --method dacs")
    click.echo(cfg.to_json())
    if dry_run:
        return
    from training.loop import adapt as run_adapt

    run_dir = Path(run_dir or f"runs/{cfg.preset}-{cfg.train.method}")
    resume_arg = True if resume == "latest" else (resume or False)
    result = run_adapt(cfg, run_dir, resume=resume_arg, progress=not quiet)
    miou = "n/a" if result.best_miou is None else f"{100 * result.best_miou:.2f}"
    click.echo(f"done: {result.iterations} iterations, best target mIoU {miou}; "
               f"checkpoints in {run_dir / 'checkpoints'}")
    if result.interrupted:
        sys.exit(130)


# --------------------------------------------------------------------------- evaluate / predict


@main.command()
@click.option("--checkpoint", "-c", required=True, type=click.Path(dir_okay=False),
              help="A checkpoint written by 'cluda adapt' (or 'cluda import').")
@click.option("--dataset", default="cityscapes", show_default=True,
              help="cityscapes | gta | synthia | demo-target | demo-source.")
@click.option("--split", default=None,
              help="Split: val for Cityscapes-style datasets, train for GTA5/Synthia (the default).")
@click.option("--data-root", type=click.Path(file_okay=False), default="data", show_default=True,
              help="Folder holding the dataset folder (gta/, synthia/, cityscapes/).")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="The dataset folder itself (overrides --data-root).")
@click.option("--mode", type=click.Choice(["whole", "slide"]), default=None,
              help="Whole-image or sliding-window inference (default: the checkpoint's).")
@click.option("--scale", default=None, metavar="LONGxSHORT|native",
              help="Keep-ratio test resize, e.g. 1024x512 (default: the checkpoint's).")
@click.option("--max-images", type=int, default=None, help="Evaluate only the first N images.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the scores here (default: next to the checkpoint, eval_<dataset>_<split>.json).")
@click.option("--device", default="auto", show_default=True)
@click.option("-q", "--quiet", is_flag=True)
@friendly_errors
def evaluate(checkpoint, dataset, split, data_root, root, mode, scale, max_images, json_out, device, quiet):
    """Per-class IoU and mIoU of a checkpoint on a labelled split (mIoU16/13 for Synthia models)."""
    from cluda_deploy.checkpoint import load_segmenter
    from cluda_deploy.data import create_dataset, default_root
    from cluda_deploy.evaluate import evaluate_pairs
    from cluda_deploy.inference import pick_device

    dev = pick_device(device)
    model, info = load_segmenter(checkpoint, dev)
    eval_cfg = _eval_config(info.config.eval, mode, scale)
    split = split or ("val" if dataset in ("cityscapes", "demo-target") else "train")
    ds = create_dataset(dataset, root or default_root(dataset, data_root), split=split)
    pairs = ds.labelled_pairs()[:max_images] if max_images else ds.labelled_pairs()
    scores = evaluate_pairs(model, pairs, eval_cfg, info.label_space, info.mean, info.std, dev,
                            progress=not quiet)
    click.echo(scores.table())
    out = Path(json_out) if json_out else Path(checkpoint).with_name(f"eval_{dataset}_{split}.json")
    record = {"checkpoint": str(checkpoint), "dataset": dataset, "split": split,
              "mode": eval_cfg.mode, "scale": eval_cfg.scale, **scores.to_dict()}
    out.write_text(json.dumps(record, indent=2))
    click.echo(f"scores written to {out}")


def _eval_config(base, mode, scale):
    import dataclasses

    from cluda_deploy.config import ConfigError, _coerce

    cfg = dataclasses.replace(base)
    if mode:
        cfg.mode = mode
    if scale:
        if scale == "native":
            cfg.scale = None
        else:
            try:
                cfg.scale = _coerce(scale, tuple[int, ...], "--scale")
            except ConfigError as exc:
                raise click.BadParameter(str(exc)) from None
            if len(cfg.scale) != 2:
                raise click.BadParameter("--scale takes LONGxSHORT, e.g. 1024x512, or 'native'")
    return cfg


@main.command()
@click.option("--checkpoint", "-c", required=True, type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Output folder for <name>_labelTrainIds.png and <name>_overlay.png.")
@click.option("--mode", type=click.Choice(["whole", "slide"]), default=None)
@click.option("--scale", default=None, metavar="LONGxSHORT|native")
@click.option("--device", default="auto", show_default=True)
@click.option("-q", "--quiet", is_flag=True)
@friendly_errors
def predict(checkpoint, inputs, out, mode, scale, device, quiet):
    """Segment images (files or folders, any size): train-id PNGs plus Cityscapes-coloured overlays."""
    from cluda_deploy.checkpoint import load_segmenter
    from cluda_deploy.inference import pick_device
    from cluda_deploy.predict import collect_images, predict_images

    images = collect_images(inputs)
    dev = pick_device(device)
    model, info = load_segmenter(checkpoint, dev)
    eval_cfg = _eval_config(info.config.eval, mode, scale)
    written = predict_images(model, images, Path(out), eval_cfg, info.label_space, info.mean,
                             info.std, dev, progress=not quiet)
    (Path(out) / "predictions.json").write_text(json.dumps(written, indent=2))
    click.echo(f"wrote {len(written)} label maps and overlays to {out}")


# --------------------------------------------------------------------------- stylize (CONFETI)


@main.command()
@click.option("--checkpoint", "-c", required=True, type=click.Path(dir_okay=False),
              help="A checkpoint of 'cluda adapt --method confeti' (either stage; it holds the translator).")
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Output folder for <name>_stylized.png.")
@click.option("--scale", default="checkpoint", show_default=True, metavar="LONGxSHORT|native|checkpoint",
              help="Keep-ratio resize before translating: the run's data.source_scale, a size, or none.")
@click.option("--device", default="auto", show_default=True)
@click.option("-q", "--quiet", is_flag=True)
@friendly_errors
def stylize(checkpoint, images, out, scale, device, quiet):
    """Translate source IMAGES (files or folders) to the target style with a CONFETI run's generator:
    what its pixel-level alignment feeds the segmenter."""
    from cluda_deploy.config import EvalConfig
    from cluda_deploy.inference import pick_device
    from cluda_deploy.predict import collect_images
    from training.confeti.stylize import stylize_images

    if not images:
        raise click.UsageError("no IMAGES given; pass image files or folders, e.g. data/gta/images")
    size = scale if scale == "checkpoint" else _eval_config(EvalConfig(), None, scale).scale
    written = stylize_images(checkpoint, collect_images(images), Path(out), scale=size,
                             device=pick_device(device), progress=not quiet)  # fmt: skip
    click.echo(f"wrote {len(written)} stylised images to {out}")


# --------------------------------------------------------------------------- data


@main.group()
def data() -> None:
    """Prepare and check datasets (GTA5, Synthia, Cityscapes, the demo domains)."""


@data.command("prepare")
@click.argument("dataset", type=click.Choice(["gta", "synthia", "cityscapes"]))
@click.option("--root", required=True, type=click.Path(file_okay=False),
              help="The dataset folder, e.g. data/gta.")
@click.option("--workers", type=int, default=4, show_default=True, help="Worker processes.")
@friendly_errors
def data_prepare(dataset, root, workers):
    """Convert labels to *_labelTrainIds.png and write rare-class-sampling statistics."""
    from cluda_deploy.data import prepare_dataset

    report = prepare_dataset(dataset, root, workers=workers, progress=True)
    click.echo(json.dumps(report, indent=2, default=str))


@data.command("check")
@click.option("--source", default="gta", show_default=True)
@click.option("--target", default="cityscapes", show_default=True)
@click.option("--data-root", type=click.Path(file_okay=False), default="data", show_default=True)
@friendly_errors
def data_check(source, target, data_root):
    """Report what is present and missing, and the command that fixes each gap."""
    from cluda_deploy.data import check_datasets, format_check_report

    items = check_datasets(source, target, data_root)
    click.echo(format_check_report(items))
    if not all(item.ok for item in items):
        sys.exit(1)


@data.command("demo")
@click.option("--root", type=click.Path(file_okay=False), default="data/demo", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="Worker processes.")
@friendly_errors
def data_demo(root, seed, workers):
    """Generate the procedural demo domains (GTA-style source, Cityscapes-style target)."""
    from cluda_deploy.data import generate_demo_domains

    report = generate_demo_domains(root, seed=seed, workers=workers, progress=True)
    click.echo(json.dumps(report, indent=2, default=str))


# --------------------------------------------------------------------------- misc


@main.command()
def presets() -> None:
    """List the named configs for --preset."""
    from cluda_deploy.config import PRESETS

    for name in sorted(PRESETS):
        doc = (PRESETS[name].__doc__ or "").strip().splitlines()
        click.echo(f"{name:<28} {doc[0] if doc else ''}")


@main.command()
@click.option("--data-root", type=click.Path(file_okay=False), default="data/demo", show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@click.option("--method", default=None, help="UDA method: source-only, dacs (the demo preset's default), cluda, confeti.")
@click.option("--iters", type=int, default=None, help="Training iterations (default: the preset's).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("-q", "--quiet", is_flag=True)
@friendly_errors
def demo(data_root, out, method, iters, overrides, quiet):
    """The whole flow on the built-in demo domains: generate, adapt, evaluate, predict, export."""
    from cluda_deploy.demo_flow import run_demo

    run_demo(Path(data_root), Path(out), method=method, iters=iters, overrides=list(overrides),
             progress=not quiet, echo=click.echo)


# --------------------------------------------------------------------------- serve


@main.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--host", default=None, help="Interface to listen on (default 127.0.0.1; 0.0.0.0 in Docker).")
@click.option("--port", type=int, default=None, help="TCP port (default 8000).")
@click.option("--workers", type=int, default=None, help="uvicorn worker processes, each with its own engines (default 1).")
@click.option("--device", "devices", default=None, metavar="DEV[,DEV...]",
              help="One inference worker per device: auto | cpu | cuda:0,cuda:1 (default auto).")
@click.option("--max-batch", type=int, default=None, help="Images per engine call (default 4).")
@click.option("--max-wait-ms", type=float, default=None, help="How long a batch waits to fill (default 10).")
@click.option("--max-queue", type=int, default=None, help="Queued images before 503 + Retry-After (default 64).")
@click.option("--api-key", default=None, envvar="CLUDA_SERVE_API_KEY", show_envvar=True,
              help="Require this key (X-API-Key or Bearer) on /v1; prefer the environment variable.")
@click.option("--max-body-bytes", type=int, default=None, help="Request body cap, 413 past it (default 32 MiB).")
@click.option("--max-pixels", type=int, default=None, help="Image pixel cap, checked before decoding (default 8388608).")
@click.option("--request-timeout-s", type=float, default=None, help="Upload and inference limit each (default 30).")
@click.option("--warmup-size", "warmup_sizes", default=None, metavar="HxW[,HxW...]",
              help="Sizes to warm up at before ready (default: the model's own, or 512x1024).")
@click.option("--engine-cache", type=click.Path(file_okay=False), default=None,
              help="Folder for TensorRT engine and timing caches (a Docker volume).")
@click.option("--log-level", default=None, type=click.Choice(["debug", "info", "warning", "error"]))
@friendly_errors
def serve(model, host, port, workers, devices, max_batch, max_wait_ms, max_queue, api_key, max_body_bytes,
          max_pixels, request_timeout_s, warmup_sizes, engine_cache, log_level):
    """Serve MODEL over HTTP: a checkpoint (.pt), ONNX (.onnx), TensorRT (.engine) or AOTInductor (.pt2).

    \b
    Every option can also be set as CLUDA_SERVE_<OPTION> (e.g. CLUDA_SERVE_MAX_BATCH=8).
    POST /v1/segment, /v1/segment/batch; GET /v1/model, /health/live, /health/ready, /metrics;
    a demo page at /. SIGTERM drains before stopping.
    """
    from server.runner import run_server
    from server.settings import load_settings

    settings = load_settings(
        model=model, host=host, port=port, workers=workers, devices=devices, max_batch=max_batch,
        max_wait_ms=max_wait_ms, max_queue=max_queue, api_key=api_key, max_body_bytes=max_body_bytes,
        max_pixels=max_pixels, request_timeout_s=request_timeout_s, warmup_sizes=warmup_sizes,
        engine_cache=engine_cache, log_level=log_level,
    )
    run_server(settings)


# --------------------------------------------------------------------------- import


@main.group("import")
def import_group() -> None:
    """Convert checkpoints released by other code bases into cluda-deploy checkpoints."""


def _arch_names() -> list[str]:
    from cluda_deploy.importers.archs import arch_names  # torch-free

    return arch_names()


@import_group.command("mmseg")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--arch", required=True, type=click.Choice(_arch_names()),
              help="The network the file holds (DAFormer, HRDA, MIC(HRDA) or CLUDA(HRDA) on MiT-B5).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="Where to write the cluda-deploy checkpoint (.pt).")
@click.option("--weights", type=click.Choice(["student", "teacher"]), default="student",
              show_default=True, help="model.* (what the papers evaluate) or the EMA teacher ema_model.*.")
@click.option("--allow-missing", is_flag=True,
              help="Accept absent optional keys (training-only heads, BatchNorm counters).")
@click.option("--source", type=click.Choice(["auto", "gta", "synthia"]), default="auto",
              show_default=True, help="Source domain it was trained on (auto: from the file's config text, else gta).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override the arch's config, e.g. --set model.backbone=mit_b3 for another MiT size.")
@friendly_errors
def import_mmseg_command(checkpoint, arch, out, weights, allow_missing, source, overrides):
    """Convert a released DAFormer / HRDA / MIC / CLUDA .pth (mmseg 0.x) into a checkpoint that
    evaluate, predict, export and serve use unchanged. Reads the file without running code."""
    from cluda_deploy.importers.mmseg import import_mmseg

    result = import_mmseg(checkpoint, arch, out, weights=weights, allow_missing=allow_missing,
                          source=source, overrides=list(overrides))
    block = result.prefix or "bare keys"
    click.echo(f"imported {result.tensors} tensors of {result.arch} ({weights}, {block}, "
               f"{result.form} file, source {result.source}) -> {result.out}")
    if result.dropped:
        heads = sorted({".".join(key.split(".")[:2]) for key in result.dropped})
        click.echo(f"dropped {len(result.dropped)} training-only tensors ({', '.join(heads)})")
    if result.filled:
        click.echo(f"absent optional keys accepted: {len(result.filled)}")
    click.echo(f"next: cluda evaluate --checkpoint {result.out} --dataset cityscapes --data-root data")


# --------------------------------------------------------------------------- export / verify


def _dims(text: str | None, option: str, allowed: tuple[int, ...]) -> tuple[int, ...] | None:
    """'512x1024' / '2x512x1024' -> ints; the number of parts must be in ``allowed``."""
    if text is None:
        return None
    try:
        dims = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) not in allowed or min(dims) < 1:
        shapes = " or ".join({2: "HxW", 3: "NxHxW"}[n] for n in allowed)
        raise click.BadParameter(f"{option} takes {shapes} with positive integers, got {text!r}")
    return dims


@main.command("export")
@click.option("--checkpoint", "-c", required=True, type=click.Path(dir_okay=False),
              help="A checkpoint written by 'cluda adapt' (or 'cluda import').")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder for model.onnx (+ model_int8.onnx, model.pt2, *.engine), each with a .json sidecar.")
@click.option("--static", default=None, metavar="HxW|NxHxW",
              help="Fix the input size (and batch) instead of dynamic N, H, W: one TensorRT engine per size.")
@click.option("--logits", is_flag=True, help="Add a 'logits' output (N, C, H, W) float32.")
@click.option("--confidence", is_flag=True, help="Add a 'confidence' output (N, H, W): the top softmax probability.")
@click.option("--mode", type=click.Choice(["whole", "slide"]), default=None,
              help="Inference mode (default: the checkpoint's; slide needs --static).")
@click.option("--scale", default=None, metavar="LONGxSHORT|native",
              help="Keep-ratio inference size inside the graph (default: the checkpoint's eval.scale).")
@click.option("--hrda", type=click.Choice(["full", "student"]), default=None,
              help="HRDA checkpoints only. full (default): context + detail fusion with scale attention, "
              "the accuracy 'cluda evaluate' reports, several passes per window, needs --static. student: "
              "the same backbone and DAFormer head once at one scale, fastest, dynamic shapes allowed.")
@click.option("--weights", type=click.Choice(["student", "teacher"]), default="student", show_default=True,
              help="Which weights of the checkpoint to export.")
@click.option("--fp16", is_flag=True, help="Also write model_fp16.onnx (network in half precision); "
              "with --trt build an FP16 engine.")
@click.option("--int8", is_flag=True, help="Also write model_int8.onnx (Q/DQ, calibrated on --calib); "
              "with --trt build an INT8 engine.")
@click.option("--calib", type=click.Path(), default=None,
              help="Folder of target-domain training images for INT8 calibration (not the eval split).")
@click.option("--calib-images", type=int, default=64, show_default=True, help="Calibration images used.")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True)
@click.option("--aoti", is_flag=True, help="Also compile model.pt2 with AOTInductor (minutes on a CPU).")
@click.option("--aoti-device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--trt", is_flag=True, help="Build TensorRT engines (needs TensorRT >= 10 and a GPU): "
              "fp32, or the precisions of --fp16/--int8.")
@click.option("--trt-min", default=None, metavar="NxHxW", help="Smallest input of the engine profile.")
@click.option("--trt-opt", default=None, metavar="NxHxW", help="Input the engine is tuned for.")
@click.option("--trt-max", default=None, metavar="NxHxW", help="Largest input of the engine profile.")
@click.option("--trt-workspace", type=float, default=4.0, show_default=True, help="Builder workspace, GiB.")
@click.option("--trt-cache", type=click.Path(file_okay=False), default=None,
              help="Engine + timing cache folder (default ~/.cache/cluda-deploy/tensorrt).")
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="Real images to verify on, e.g. data/cityscapes/leftImg8bit/val (labels found in the "
              "gtFine mirror or beside the images give mIoU).")
@click.option("--max-images", type=int, default=20, show_default=True, help="Verify on at most N of --data.")
@click.option("--generated", type=int, default=3, show_default=True,
              help="Procedural street scenes (labelled) of several sizes to verify on.")
@click.option("--gate", "gates", multiple=True, metavar="PRECISION.KEY=VALUE",
              help="Change a parity gate, e.g. --gate int8.min_pixel_agreement=0.9 (defaults: fp32 "
              "max_logit_error 1e-2 (relative), min_pixel_agreement 0.999, max_miou_drop 0.1 points; fp16 0.99 / 0.5; "
              "int8 0.95 / 1.0).")
@click.option("--no-verify", is_flag=True, help="Skip the parity checks (not recommended).")
@friendly_errors
def export_command(checkpoint, out, static, logits, confidence, mode, scale, hrda, weights, fp16, int8,
                   calib, calib_images, calib_method, aoti, aoti_device, trt, trt_min, trt_opt, trt_max,
                   trt_workspace, trt_cache, data, max_images, generated, gates, no_verify):
    """Export a checkpoint to ONNX (+ FP16, INT8, AOTInductor, TensorRT), each verified against PyTorch.

    The graph takes a uint8 RGB batch (N, H, W, 3) and returns uint8 train ids (N, H, W) at the
    input size; normalisation, the keep-ratio resize to the checkpoint's inference size, the model,
    the resize back and the argmax are inside it. Fails (exit 1) when an artefact misses its parity
    gates; the table and export_report.json say which.
    """
    from export.options import DEFAULT_THRESHOLDS, ExportOptions, apply_gate
    from export.pipeline import export_model

    thresholds = dict(DEFAULT_THRESHOLDS)
    for gate in gates:
        thresholds = apply_gate(thresholds, gate)
    static_dims = _dims(static, "--static", (2, 3))
    options = ExportOptions(
        static=None if static_dims is None else ((None, *static_dims) if len(static_dims) == 2 else static_dims),
        logits=logits, confidence=confidence, mode=mode,
        scale="checkpoint" if scale is None else (None if scale == "native" else _dims(scale, "--scale", (2,))),
        hrda=hrda, weights=weights, fp16=fp16, int8=int8, calib=Path(calib) if calib else None,
        calib_max_images=calib_images, calib_method=calib_method, aoti=aoti, aoti_device=aoti_device,
        trt=trt, trt_min=_dims(trt_min, "--trt-min", (3,)), trt_opt=_dims(trt_opt, "--trt-opt", (3,)),
        trt_max=_dims(trt_max, "--trt-max", (3,)), trt_workspace_gib=trt_workspace,
        trt_cache=Path(trt_cache) if trt_cache else None, data=Path(data) if data else None,
        max_images=max_images, generated=generated, thresholds=thresholds, verify=not no_verify,
    )  # fmt: skip
    result = export_model(checkpoint, out, options, echo=click.echo)
    for name, path in result.artefacts.items():
        click.echo(f"{name:<10} {path}  (+ {path.name}.json)")
    click.echo(f"export done; report in {Path(out) / 'export_report.json'}")


@main.command("verify")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--checkpoint", "-c", required=True, type=click.Path(dir_okay=False),
              help="The checkpoint the model was exported from.")
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="Images to verify on, e.g. data/cityscapes/leftImg8bit/val (labels found give mIoU).")
@click.option("--max-images", type=int, default=20, show_default=True)
@click.option("--generated", type=int, default=3, show_default=True, help="Procedural scenes to add.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the report here.")
@click.option("--gate", "gates", multiple=True, metavar="PRECISION.KEY=VALUE",
              help="Change a parity gate, as for 'cluda export'.")
@friendly_errors
def verify_command(model, checkpoint, data, max_images, generated, device, json_out, gates):
    """Check an exported MODEL (.onnx, .pt2, .engine with its sidecar) against its CHECKPOINT."""
    from export.options import DEFAULT_THRESHOLDS, apply_gate
    from export.pipeline import verify_model
    from export.verify import ParityError

    thresholds = dict(DEFAULT_THRESHOLDS)
    for gate in gates:
        thresholds = apply_gate(thresholds, gate)
    report = verify_model(model, checkpoint, Path(data) if data else None, max_images, generated, device,
                          thresholds=thresholds, echo=click.echo)  # fmt: skip
    if json_out:
        Path(json_out).write_text(json.dumps(report.to_dict(), indent=2))
    if not report.passed:
        raise ParityError("parity below the gates: " + "; ".join(report.failures()))


if __name__ == "__main__":
    main()
