"""Images/s and latency of the exported model per backend and precision, sizes and batch sizes.

Every backend runs the same end-to-end graph (``export.graph.DeployModule``: uint8 NHWC in,
normalise + resize + network + resize back + argmax inside, uint8 labels out), so the numbers
compare like with like:

* ``torch``: PyTorch eager fp32 (``torch-fp16``: the fp16 module, CUDA only);
* ``onnx`` / ``onnx-int8``: onnxruntime on ``model.onnx`` / the Q/DQ ``model_int8.onnx``
  (CPU provider; CUDA / TensorRT providers on a GPU with onnxruntime-gpu);
* ``aoti``: the AOTInductor ``model.pt2`` (compiled for the device; minutes on a CPU);
* ``trt-fp32`` / ``trt-fp16`` / ``trt-int8``: TensorRT engines (needs TensorRT and a GPU).

Models: ``demo`` (the demo preset's tiny MiT + DAFormer head) and ``mit_b0`` (MiT-B0 + DAFormer
head, embed 256), random weights, 19 classes, run at the input size (``--scale native``) or with
the graph's keep-ratio resize (``--scale 1024x512``). Per configuration: ``--warmup`` untimed
runs, then up to ``--repeats`` timed ones; a configuration whose first run already exceeds
``--budget-s`` is timed once, and larger batches predicted to exceed it are skipped (listed as
such). On the CPU the peak resident memory of each configuration is sampled, and a larger batch
whose predicted peak exceeds ``--max-memory-gb`` (default: 80 % of the memory available at the
start) is skipped too: 4x1024x2048 through MiT once paged a 24 GiB machine for 15 minutes. Prints
a Markdown table and writes JSON with the machine details.

    PYTHONPATH=. python bench/inference.py --models demo,mit_b0 --sizes 512x1024,1024x2048 \\
        --batches 1,2,4 --backends torch,onnx,onnx-int8,aoti --json inference.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench.forward import load_average, machine_info
from cluda_deploy.checkpoint import save_checkpoint
from cluda_deploy.config import EvalConfig, ModelConfig, get_preset
from cluda_deploy.labels import cityscapes_label_space
from cluda_deploy.models import create_segmenter

BACKENDS = ("torch", "torch-fp16", "onnx", "onnx-int8", "aoti", "trt-fp32", "trt-fp16", "trt-int8")
MODELS = {
    "demo": lambda: get_preset("demo").model,
    "mit_b0": lambda: ModelConfig(backbone="mit_b0", head="daformer", drop_path_rate=0.0),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="demo,mit_b0", help=f"comma-separated, from: {', '.join(MODELS)}")
    parser.add_argument("--checkpoint", type=Path, default=None, help="benchmark this checkpoint instead")
    parser.add_argument("--sizes", default="512x1024,1024x2048", help="input HxW list")
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--backends", default="torch,onnx,onnx-int8,aoti", help=f"from: {', '.join(BACKENDS)}")
    parser.add_argument("--scale", default="native", help="'native' or LONGxSHORT keep-ratio inside the graph")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime CPU threads")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=60.0, help="time budget per configuration")
    parser.add_argument("--max-memory-gb", type=float, default=None,
                        help="skip batches predicted to peak above this resident memory (CPU; default 80%% of available)")
    parser.add_argument("--calib-images", type=int, default=4, help="generated images for INT8 calibration")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the exported files here")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def make_checkpoint(name: str, scale: tuple[int, int] | None, path: Path) -> Path:
    cfg = get_preset("demo")
    cfg.model = MODELS[name]()
    cfg.eval = EvalConfig(mode="whole", scale=scale)
    torch.manual_seed(0)
    return save_checkpoint(path, config=cfg, label_space=cityscapes_label_space(),
                           state_dict=create_segmenter(cfg.model).state_dict())  # fmt: skip


class Prepared:
    """The artefacts of one model, built on first use."""

    def __init__(self, checkpoint: Path, work: Path, device: str, threads: int | None, calib_images: int):
        from export.pipeline import prepare

        self.prepared = prepare(checkpoint)
        self.work, self.device, self.threads, self.calib_images = work, device, threads, calib_images
        self._program = None
        self.build_seconds: dict[str, float] = {}

    def _timed(self, key: str, fn, *args):
        start = time.perf_counter()
        value = fn(*args)
        self.build_seconds[key] = round(time.perf_counter() - start, 1)
        print(f"  built {key} in {self.build_seconds[key]} s", file=sys.stderr, flush=True)
        return value

    def program(self):
        from export.onnx_export import trace

        if self._program is None:
            p = self.prepared
            self._program = self._timed("torch.export", trace, p.module(["labels"]), p.shape, p.typical_size())
        return self._program

    def onnx(self) -> Path:
        from export.onnx_export import write_onnx

        path = self.work / "model.onnx"
        if not path.is_file():
            self._timed("onnx", write_onnx, self.program(), path, ["labels"])
        return path

    def onnx_int8(self) -> Path:
        """INT8 calibrated on generated demo-target scenes (no dataset needed to benchmark)."""
        from PIL import Image

        from export.images import calibration_images, generated_samples
        from export.quantize import FolderCalibrationReader, quantize_int8

        path = self.work / "model_int8.onnx"
        if not path.is_file():
            calib = self.work / "calib"
            calib.mkdir(exist_ok=True)
            for sample in generated_samples(self.calib_images, sizes=((512, 1024),)):
                Image.fromarray(sample.image).save(calib / f"{sample.name}.png")
            reader = FolderCalibrationReader(calibration_images(calib, self.calib_images))
            self._timed("onnx-int8", quantize_int8, self.onnx(), path, reader)
        return path

    def runner(self, backend: str):
        from export.runners import AotiRunner, ort_providers

        if backend in ("torch", "torch-fp16"):
            precision = "fp16" if backend == "torch-fp16" else "fp32"
            module = self.prepared.module(["labels"], precision).eval().to(self.device)

            def run(images: np.ndarray):
                with torch.no_grad():
                    out = module(torch.from_numpy(images).to(self.device))[0]
                    return out.cpu()

            return run
        if backend in ("onnx", "onnx-int8"):
            import onnxruntime as ort

            path = self.onnx() if backend == "onnx" else self.onnx_int8()
            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
            session = ort.InferenceSession(str(path), options, providers=ort_providers(self.device))
            return lambda images: session.run(None, {"images": images})[0]
        if backend == "aoti":
            from export.aoti import write_aoti

            path = self.work / "model.pt2"
            if not path.is_file():
                self._timed("aoti", write_aoti, self.program(), path)
            runner = AotiRunner(path, ["labels"], self.device)
            return lambda images: runner(images)["labels"]
        if backend.startswith("trt-"):
            return self._tensorrt(backend.split("-", 1)[1])
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")

    def _tensorrt(self, precision: str):
        from export.tensorrt import TensorRTRunner, build_precision, profile_for

        # Only the files this precision needs are exported (fp16 on TensorRT 11: the fp16 ONNX).
        needed = {"fp32": self.onnx, "int8": self.onnx_int8, "fp16": self._onnx_fp16}
        files = {p: (fn() if p in (precision, "fp32") else self.work / "missing") for p, fn in needed.items()}
        profile = profile_for((None, None, None), self.prepared.shape.min_side, (1, 512, 1024), (1, 1024, 2048),
                              (4, 1024, 2048))  # fmt: skip
        engine = self.work / f"model_{precision}.engine"
        self._timed(f"trt-{precision}", build_precision, precision, files, engine, profile, True)
        runner = TensorRTRunner(engine)
        return lambda images: runner(images)["labels"]

    def _onnx_fp16(self) -> Path:
        from export.onnx_export import trace, write_onnx

        path = self.work / "model_fp16.onnx"
        if not path.is_file():
            p = self.prepared
            program = trace(p.module(["labels"], "fp16"), p.shape, p.typical_size())
            self._timed("onnx-fp16", write_onnx, program, path, ["labels"])
        return path


def available_memory_gb() -> float | None:
    """MemAvailable from /proc/meminfo in GiB (None where there is no /proc)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


class PeakRSS:
    """Samples this process's resident set size (/proc/self/statm) every ``interval`` seconds."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_gb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def current_gb() -> float:
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return 0.0
        return pages * 4096 / 2**30

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_gb = max(self.peak_gb, self.current_gb())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak_gb = self.current_gb()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_gb = max(self.peak_gb, self.current_gb())


def time_runs(run, images: np.ndarray, warmup: int, repeats: int, budget: float, sync) -> list[float]:
    """Seconds per call: ``warmup`` untimed calls, then timed ones until ``repeats`` or the budget."""
    times: list[float] = []
    spent, warmed = 0.0, 0
    while len(times) < repeats:
        sync()
        start = time.perf_counter()
        run(images)
        sync()
        elapsed = time.perf_counter() - start
        spent += elapsed
        if warmed < warmup:
            warmed += 1
            continue
        times.append(elapsed)
        if spent > budget:
            break
    return times


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    load_before = load_average()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    scale = None if args.scale == "native" else tuple(int(v) for v in args.scale.lower().split("x"))
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s]
    batches = [int(b) for b in args.batches.split(",") if b]
    backends = [b for b in args.backends.split(",") if b]
    memory_cap = args.max_memory_gb
    if memory_cap is None and device == "cpu":
        available = available_memory_gb()
        memory_cap = None if available is None else 0.8 * available
    work_root = args.work_dir or Path(tempfile.mkdtemp(prefix="cluda-bench-"))
    names = ["checkpoint"] if args.checkpoint else [m for m in args.models.split(",") if m]
    results, builds = [], {}
    rng = np.random.default_rng(0)
    for name in names:
        work = work_root / name
        work.mkdir(parents=True, exist_ok=True)
        ckpt = args.checkpoint or make_checkpoint(name, scale, work / "model.pt")
        prepared = Prepared(ckpt, work, device, args.threads, args.calib_images)
        for backend in backends:
            try:
                run = prepared.runner(backend)
            except Exception as exc:  # a backend missing here (TensorRT, GPU providers) is reported
                results.append({"model": name, "backend": backend, "skipped": f"{type(exc).__name__}: {exc}"})
                print_row(results[-1], header=len(results) == 1)
                continue
            for height, width in sizes:
                per_image = gb_per_image = None
                for batch in batches:
                    row = {"model": name, "backend": backend, "size": f"{height}x{width}", "batch": batch}
                    base_gb = PeakRSS.current_gb()
                    predicted_gb = None if gb_per_image is None else base_gb + gb_per_image * batch
                    if per_image is not None and per_image * batch > args.budget_s:
                        row["skipped"] = f"predicted {per_image * batch:.0f} s per run > budget {args.budget_s:.0f} s"
                    elif device == "cpu" and memory_cap and predicted_gb and predicted_gb > memory_cap:
                        row["skipped"] = f"predicted peak {predicted_gb:.2f} GiB > --max-memory-gb {memory_cap:.2f}"
                    else:
                        images = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
                        with PeakRSS() as memory:
                            times = time_runs(run, images, args.warmup, args.repeats, args.budget_s, sync)
                        median = statistics.median(times)
                        per_image = median / batch
                        gb_per_image = max(memory.peak_gb - base_gb, 0.0) / batch
                        row.update(median_ms=round(1e3 * median, 1), min_ms=round(1e3 * min(times), 1),
                                   images_per_s=round(batch / median, 2), runs=len(times),
                                   peak_rss_gb=round(memory.peak_gb, 2))  # fmt: skip
                    results.append(row)
                    print_row(row, header=len(results) == 1)
            del run
        builds[name] = prepared.build_seconds
    info = machine_info(torch.device(device))
    print(f"\n{info['device_name']} ({device}, {info['threads']} threads), torch {info['torch']}, "
          f"commit {info['git_commit']}, load {load_before} -> {info['load_avg_1_5_15m']}; "
          f"build seconds {builds}")  # fmt: skip
    if args.json:
        import onnxruntime

        payload = {"machine": {**info, "onnxruntime": onnxruntime.__version__}, "load_avg_before": load_before,
                   "scale": args.scale, "warmup": args.warmup, "repeats": args.repeats,
                   "budget_s": args.budget_s, "build_seconds": builds, "results": results}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return results


def print_row(row: dict, header: bool) -> None:
    if header:
        print("| model | backend | input | batch | median (ms) | images/s | runs | peak RSS (GiB) |")
        print("|---|---|---|---:|---:|---:|---:|---:|")
    if "median_ms" in row:
        print(f"| {row['model']} | {row['backend']} | {row['size']} | {row['batch']} | {row['median_ms']} | "
              f"{row['images_per_s']} | {row['runs']} | {row.get('peak_rss_gb', '')} |", flush=True)  # fmt: skip
    else:
        where = f"{row.get('size', '-')} | {row.get('batch', '-')}"
        print(f"| {row['model']} | {row['backend']} | {where} | skipped: {row['skipped']} | | | |", flush=True)


if __name__ == "__main__":
    main()
