"""``python -m benchmarks.loader``: training samples/s of our shard streams vs a folder-of-JPEGs loader.

Ours: ``UnpairedShardDataset`` + ``make_loader`` over WebDataset shards written by ``prepare_shards(...,
resize=286, format=raw|jpeg)`` (shorter side 286 at prepare time; raw = uncompressed PPM, the default, or JPEG),
then per sample: decode (raw: none), resize to 286x286 (a no-op for square images), random crop 256, uint8 tensor
and a flip flag (the flip and the scaling to [-1, 1] happen on the device, in the training step, by design).
Reference: ``ReferenceUnalignedDataset`` below, the junyanz ``UnalignedDataset`` (PIL open of the original JPEG
files in trainA/ and trainB/, ``Resize([286, 286], BICUBIC)``, ``RandomCrop(256)``, ``RandomHorizontalFlip``,
``ToTensor``, ``Normalize``; a random unaligned B index) in a plain ``DataLoader``.
Same batch size, same number of workers, the same crops (ours as uint8 + flip flag, the reference's as float32 in
[-1, 1]: the reference does the scaling and the flip on the CPU).

Data sets (built once under ``--data-dir`` from real photos shipped in pip packages, no download):

* ``kaggle``: 256x256 JPEGs, like the competition's (``--photos`` photos, ``--paintings`` "paintings");
* ``large``: 1024-2048 px JPEGs (upscaled crops of the same photos), like a user's own camera folders.

``--remote http,s3`` adds the remote arm (``data.root`` = ``http://`` or ``s3://``, ``cyclegan_dist/data/remote.py``):
the first ``--samples`` samples/s, setup included, from the local root, from a cold node cache (the shards are
fetched first) and from a warm one (the index is read, the cached shards are checked), against servers on
loopback that the benchmark starts (a ThreadingHTTPServer; moto's S3 *emulator*): it measures the client's and the
cache's overhead, not a network.

A "sample" is one photo plus one painting: what one step at batch 1 consumes, so samples/s compare directly
with ``benchmarks.step``'s img/s. Loaders are created once and timed interleaved: batch by batch with 0 workers
(in-process), in windows with workers; before each window the batches a loader prefetched while idle are drained,
so they do not count.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader, Dataset, RandomSampler

from benchmarks.common import (
    ROOT,
    Ratio,
    Report,
    add_common_args,
    apply_threads,
    command_string,
    csv,
    fmt,
    interleaved,
    median,
    parse_with_quick,
)
from cyclegan_dist.data.shards import SHARD_FORMATS

TARGET_FLOPS_PER_SAMPLE = 1.9e12  # one 256x256 ResNet-9 step with the identity loss (benchmarks.step measures it)
TARGET_MFU, H100_PEAK = 0.35, 989e12
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")

# ------------------------------------------------------------------------------------- the reference loader


class ReferenceUnalignedDataset(Dataset):
    """junyanz ``data/unaligned_dataset.py`` with ``--preprocess resize_and_crop`` (the CycleGAN default)."""

    def __init__(self, dir_A: Path, dir_B: Path, load_size: int = 286, crop_size: int = 256, flip: bool = True):
        import torchvision.transforms as transforms

        self.A_paths = sorted(str(p) for p in Path(dir_A).rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
        self.B_paths = sorted(str(p) for p in Path(dir_B).rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
        self.A_size, self.B_size = len(self.A_paths), len(self.B_paths)
        ops = [transforms.Resize([load_size, load_size], transforms.InterpolationMode.BICUBIC),
               transforms.RandomCrop(crop_size)]
        if flip:
            ops.append(transforms.RandomHorizontalFlip())
        ops += [transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
        self.transform = transforms.Compose(ops)

    def __len__(self) -> int:
        return max(self.A_size, self.B_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        A_path = self.A_paths[index % self.A_size]
        index_B = random.randint(0, self.B_size - 1)  # unaligned: a random B
        B_path = self.B_paths[index_B]
        A_img = Image.open(A_path).convert("RGB")
        B_img = Image.open(B_path).convert("RGB")
        return {"A": self.transform(A_img), "B": self.transform(B_img), "A_paths": A_path, "B_paths": B_path}


def reference_loader(ds: Dataset, batch_size: int, workers: int) -> DataLoader:
    """The reference's ``DataLoader(shuffle=True, num_workers=...)``, as one endless shuffled pass (a fresh
    permutation after each epoch, without the per-epoch worker restart of the reference's epoch loop: that
    favours the reference)."""
    sampler = RandomSampler(ds, replacement=False, num_samples=10**9)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0)


# ------------------------------------------------------------------------------------------- the data sets


def _crop(src: np.ndarray, rng: np.random.Generator, w: int, h: int, painting: bool) -> Image.Image:
    H, W = src.shape[:2]
    s = min(H, W) * rng.uniform(0.4, 1.0)
    ar = w / h
    cw, ch = int(min(W, round(s * np.sqrt(ar)))), int(min(H, round(s / np.sqrt(ar))))
    x, y = int(rng.integers(0, W - cw + 1)), int(rng.integers(0, H - ch + 1))
    img = Image.fromarray(src[y:y + ch, x:x + cw]).resize((w, h), Image.BICUBIC)
    if painting:  # a warm, soft "painting": colour matrix + blur (the content matters little for decoding speed)
        img = img.filter(ImageFilter.GaussianBlur(max(1.0, w / 256))).convert(
            "RGB", (0.45, 0.55, 0.10, 0.04, 0.15, 0.55, 0.25, 0.02, 0.05, 0.40, 0.10, -0.02))
    return img


def build_dataset(root: Path, kind: str, n_photos: int, n_paintings: int, sizes: tuple[int, int], quality: int,
                  load_size: int) -> dict[str, Any]:
    """``root/trainA``, ``root/trainB`` (JPEG folders) and ``root/shards-raw``, ``root/shards-jpeg`` (prepared with
    --resize load_size, one per ``SHARD_FORMATS``).
    Built once; reused while the parameters match."""
    from cyclegan_dist.data.demo import _source_images  # the real photos that ship inside pip packages
    from cyclegan_dist.data.prepare import prepare_shards

    params = {"version": 2, "kind": kind, "photos": n_photos, "paintings": n_paintings, "sizes": list(sizes),
              "quality": quality, "resize": load_size}
    marker = root / "params.json"
    if marker.is_file():
        stored = json.loads(marker.read_text())
        if {k: stored.get(k) for k in params} == params:
            return stored
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    sources = [a for _, a in _source_images()]
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([20240607, len(kind)])))
    t0 = time.perf_counter()
    total_bytes = 0
    for folder, n, painting in (("trainA", n_photos, False), ("trainB", n_paintings, True)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            w = int(rng.integers(sizes[0], sizes[1] + 1))
            h = w if sizes[0] == sizes[1] else int(round(w * float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))))
            img = _crop(sources[int(rng.integers(len(sources)))], rng, w, h, painting)
            path = root / folder / f"{i:05d}.jpg"
            img.save(path, format="JPEG", quality=quality)
            total_bytes += path.stat().st_size
    t1 = time.perf_counter()
    params.update({"folder_mb": round(total_bytes / 2**20, 1), "write_s": round(t1 - t0, 1)})
    for shard_format in SHARD_FORMATS:
        t1, out = time.perf_counter(), root / f"shards-{shard_format}"
        prepare_shards({"photo": root / "trainA", "monet": root / "trainB"}, out, shard_size=500,
                       resize=load_size, progress=False, overwrite=True, timestamp=False, format=shard_format)
        params[f"prepare_s_{shard_format}"] = round(time.perf_counter() - t1, 1)
        params[f"shard_mb_{shard_format}"] = round(sum(p.stat().st_size for p in out.glob("*.tar")) / 2**20, 1)
    marker.write_text(json.dumps(params, indent=1))
    return params


# ------------------------------------------------------------------------------------------------ timing


def window_timer(loader: DataLoader, batch: int, k: int, drain: int):
    it = iter(loader)

    def time_window() -> float:
        for _ in range(drain):  # batches prefetched while this loader sat idle: not its speed
            next(it)
        start = time.perf_counter()
        for _ in range(k):
            next(it)
        return (time.perf_counter() - start) / (k * batch)  # seconds per sample

    return time_window, it


def gpu_rate(args) -> tuple[float, str]:
    if args.gpu_img_s:
        return float(args.gpu_img_s), "given with --gpu-img-s"
    if args.step_json and Path(args.step_json).is_file():
        rows = [r for r in json.loads(Path(args.step_json).read_text())["rows"]
                if r.get("model") == "resnet9" and r.get("size") == 256]
        fast = [r for r in rows if r.get("batch") == 8 and r.get("precision") != "fp32"] or rows
        if fast:
            best = max(fast, key=lambda r: r["ours_img_s"])
            return float(best["ours_img_s"]), (f"measured: benchmarks.step resnet9 {best['variant']} batch "
                                              f"{best['batch']} on "
                                              f"{json.loads(Path(args.step_json).read_text())['machine'].get('gpu')}")
    target = TARGET_MFU * H100_PEAK / TARGET_FLOPS_PER_SAMPLE
    return target, (f"NOT measured: the GPU goal (35% MFU of 989 TFLOP/s at {TARGET_FLOPS_PER_SAMPLE / 1e12:.1f} "
                    "TFLOP per 256px sample)")


HEADERS = ["data", "images", "shards", "workers", "ours samples/s", "ref samples/s", "ratio", "range", "per core: ours",
           "per core: ref"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loader", description=__doc__.splitlines()[0])
    add_common_args(p, size=256, batch="1", reps=5)
    p.add_argument("--load-size", type=int, default=286, help="resize before the crop (default 286)")
    p.add_argument("--workers", type=csv(int), default=[0, min(4, os.cpu_count() or 1)],
                   help="DataLoader workers, comma-separated (default 0,min(4,cores)); 0 = one core, in-process")
    p.add_argument("--kinds", type=csv(str), default=["kaggle", "large"], help="kaggle,large")
    p.add_argument("--formats", type=csv(str), default=list(SHARD_FORMATS),
                   help="shard formats (prepare --format), comma-separated (default raw,jpeg)")
    p.add_argument("--photos", type=int, default=1000, help="kaggle-like photos (default 1000)")
    p.add_argument("--paintings", type=int, default=300, help="kaggle-like paintings (default 300)")
    p.add_argument("--image-size", type=int, default=256, help="side of the kaggle-like images (default 256)")
    p.add_argument("--large-photos", type=int, default=200, help="large photos (default 200)")
    p.add_argument("--large-paintings", type=int, default=60, help="large paintings (default 60)")
    p.add_argument("--large-size", type=csv(int), default=[1024, 2048],
                   help="min,max width of the large images in px (height: aspect 3:4..4:3)")
    p.add_argument("--quality", type=int, default=92, help="JPEG quality of the generated images (default 92)")
    p.add_argument("--samples", type=int, default=None, help="samples per timed window (default 100; large: 30)")
    p.add_argument("--data-dir", default=str(ROOT / ".cache" / "bench-loader"), help="where the data sets are built")
    p.add_argument("--gpu-img-s", type=float, default=None, help="one GPU's training img/s, for the feeding statement")
    p.add_argument("--step-json", default=None, help="benchmarks.step --json output to take the GPU img/s from")
    p.add_argument("--remote", type=csv(str), default=[],
                   help="remote arms, comma-separated: http,s3 (loopback servers; s3 needs moto[server])")
    p.add_argument("--node-cores", type=int, default=None, help="CPU cores of a GPU node (default: this machine's)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs of that node (default 8)")
    args = parse_with_quick(p, argv, {"size": 64, "load_size": 72, "photos": 24, "paintings": 8, "image_size": 64,
                                      "large_photos": 8, "large_paintings": 4, "large_size": [256, 384],
                                      "samples": 8, "reps": 2, "workers": [0, 1],
                                      "data_dir": str(ROOT / ".cache" / "bench-loader-quick")})
    for kind in args.kinds:
        if kind not in ("kaggle", "large"):
            raise SystemExit(f"error: --kinds {kind!r} is not one of kaggle, large")
    for shard_format in args.formats:
        if shard_format not in SHARD_FORMATS:
            raise SystemExit(f"error: --formats {shard_format!r} is not one of {', '.join(SHARD_FORMATS)}")
    if len(args.batch) != 1:
        raise SystemExit("error: give one --batch")
    for arm in args.remote:
        if arm not in ("http", "s3"):
            raise SystemExit(f"error: --remote {arm!r} is not one of http, s3")
    return args


def measure(ours_loader, ref_loader, batch: int, workers: int, k: int, reps: int) -> dict[str, list[float]]:
    """Seconds per sample of both arms, ``reps`` values each. In-process (0 workers) the arms alternate batch by
    batch (bursts of load from other processes hit both alike; each value sums k batches); with workers, whole
    windows of k batches alternate."""
    drain = 2 * workers  # DataLoader prefetch_factor 2 per worker
    fine = workers == 0
    ours_time, ours_it = window_timer(ours_loader, batch, 1 if fine else k, drain)
    ref_time, ref_it = window_timer(ref_loader, batch, 1 if fine else k, drain)
    ours_time()  # warm-up: workers start, files enter the page cache
    ref_time()
    times = interleaved({"reference": ref_time, "ours": ours_time}, reps * (k if fine else 1))
    if fine:
        times = {n: [sum(v[i * k:(i + 1) * k]) / k for i in range(reps)] for n, v in times.items()}
    del ours_it, ref_it
    return times


def main(argv=None) -> int:
    from cyclegan_dist.data.streams import UnpairedShardDataset, make_loader

    args = parse_args(argv)
    apply_threads(args.threads)
    batch = args.batch[0]
    report = Report("loader", f"Data loading: shard streams vs a folder-of-JPEGs loader ({args.load_size} -> "
                    f"{args.size} crop, batch {batch})", command_string("benchmarks.loader"), HEADERS)
    per_core: dict[str, tuple[float, float, int]] = {}  # "kind/format" -> (ours, ref per core, workers of the row)
    built = {}
    for kind in args.kinds:
        if kind == "kaggle":
            n_a, n_b, sizes = args.photos, args.paintings, (args.image_size, args.image_size)
        else:
            n_a, n_b, sizes = args.large_photos, args.large_paintings, tuple(args.large_size)
        root = Path(args.data_dir) / kind
        built[kind] = build_dataset(root, kind, n_a, n_b, sizes, args.quality, args.load_size)
        ref_ds = ReferenceUnalignedDataset(root / "trainA", root / "trainB", args.load_size, args.size)
        k = max(1, (args.samples or (100 if kind == "kaggle" else 30)) // batch)
        label = f"{sizes[0]}px" if sizes[0] == sizes[1] else f"{sizes[0]}-{sizes[1]}px"
        for shard_format in args.formats:
            ours_ds = UnpairedShardDataset(root / f"shards-{shard_format}", "photo", "monet",
                                           load_size=args.load_size, crop_size=args.size, flip=True, seed=0)
            for workers in args.workers:
                times = measure(make_loader(ours_ds, batch, 0, workers), reference_loader(ref_ds, batch, workers),
                                batch, workers, k, args.reps)
                r = Ratio.of(times["reference"], times["ours"])
                ours_rate, ref_rate = 1 / median(times["ours"]), 1 / median(times["reference"])
                cores, key = max(1, workers), f"{kind}/{shard_format}"
                if key not in per_core or workers > per_core[key][2]:
                    # feeding uses the most workers measured (IPC of the batches included), else the main process
                    per_core[key] = (ours_rate / cores, ref_rate / cores, workers)
                report.rows.append({
                    "data": kind, "images": f"{n_a}+{n_b} @ {label}", "shards": shard_format, "workers": workers,
                    "ours samples/s": fmt(ours_rate, 1), "ref samples/s": fmt(ref_rate, 1),
                    "ratio": r.text(), "range": r.spread(),
                    "per core: ours": fmt(ours_rate / cores, 1), "per core: ref": fmt(ref_rate / cores, 1),
                    "ours_samples_s": ours_rate, "ref_samples_s": ref_rate, "ratio_median": r.median,
                    "ratio_low": r.low, "ratio_high": r.high,
                })
                print(f"[{key} workers {workers}] ours {ours_rate:.1f}/s, reference {ref_rate:.1f}/s, ratio "
                      f"{r.text()} ({r.spread()})", flush=True)
    report.notes += notes_for(args, report.rows, built, per_core)
    if args.remote:
        fmt0 = args.formats[0]
        report.extra["remote"] = [remote_arm(Path(args.data_dir) / kind / f"shards-{fmt0}", arm, args, batch)
                                  for kind in args.kinds for arm in args.remote]
        report.notes += [remote_note(row) for row in report.extra["remote"]]
    report.extra["datasets"] = built
    if per_core:
        rate, source = gpu_rate(args)
        report.extra["feeding"] = {"gpu_img_s": rate, "gpu_source": source,
                                   "node_cores": args.node_cores or os.cpu_count() or 1,
                                   "per_core": {k: {"ours": v[0], "ref": v[1], "workers": v[2]}
                                                for k, v in per_core.items()}}
    report.emit(args.json_out, args.markdown)
    return 0


def notes_for(args, rows: list[dict], built: dict, per_core: dict) -> list[str]:
    notes = [
        f"ratio = median over {args.reps} repetitions of (reference time / our time) per sample; > 1 = ours faster. "
        "0 workers: the arms alternate batch by batch; with workers, whole windows alternate (after draining what "
        "the idle loader prefetched). A sample = one photo + one painting (two decodes and transforms).",
        "per core = samples/s divided by the workers (0 workers: the main process alone, one core, no IPC; with "
        "workers the batches also cross processes)",
        "shards: raw = prepare's default (uncompressed PPM: no decoding in the loader), jpeg = prepare --format jpeg "
        "(libjpeg-turbo through torchcodec, straight into a CHW tensor)",
    ]
    for kind, info in built.items():
        sizes = ", ".join(f"{f} {info.get(f'shard_mb_{f}')} MB (one-off {info.get(f'prepare_s_{f}')} s)"
                          for f in args.formats)
        notes.append(f"{kind}: folder {info.get('folder_mb')} MB of JPEG (quality {info['quality']}); shards after "
                     f"prepare --resize {info['resize']}: {sizes}, not counted in the table")
    for kind in built:
        for shard_format in args.formats:
            mine = [r for r in rows if r["data"] == kind and r["shards"] == shard_format]
            if mine:
                best = min(r["ratio_median"] for r in mine)
                notes.append(f"goal >= 3x ({kind}, {shard_format} shards): {'MET' if best >= 3 else 'NOT MET'} "
                             f"(lowest ratio {best:.2f})")
    if "large" in built and "kaggle" in built:
        notes.append("why: for large photos the reference decodes and bicubic-resizes megapixel JPEGs on every "
                     "sample; ours did that once, at prepare time (--resize). For 256px Kaggle JPEGs the reference "
                     "decodes a JPEG and resizes 256 -> 286 per image; raw shards hold the 286 px pixels already")
    if per_core:
        rate, source = gpu_rate(args)
        cores = args.node_cores or os.cpu_count() or 1
        gpus = args.gpus_per_node
        lines = []
        for key, (ours_core, ref_core, workers) in per_core.items():
            lines.append(
                f"{key} (per core from the {workers}-worker row): ours {ours_core:.1f} samples/s per core x {cores} "
                f"cores = {ours_core * cores:.0f}/s feeds {ours_core * cores / rate:.1f} GPUs "
                f"({ours_core * max(cores - gpus, 0) / rate:.1f} if one core per GPU runs its training process); "
                f"the reference loader {ref_core * cores / rate:.1f} GPUs")
        notes.append(f"feeding: at {rate:.0f} img/s per GPU ({source}), one node's CPUs: " + "; ".join(lines)
                     + ". Per-core rates measured on this machine (a shared, loaded one gives lower rates)")
    return notes


# ------------------------------------------------------------------------------------------ the remote arm


@contextlib.contextmanager
def loopback_server(arm: str, root: Path):
    """The URL of ``root`` served on 127.0.0.1: a ThreadingHTTPServer, or moto's S3 emulator (dummy credentials
    and its endpoint set in this process's environment while it runs)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    if arm == "http":
        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *a):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root.parent)))
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/{root.name}"
        finally:
            server.shutdown()
            server.server_close()
        return
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    from cyclegan_dist.data.remote import upload_root

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true",
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3").create_bucket(Bucket="bench")
        upload_root(root, "s3://bench/root", overwrite=False)
        yield "s3://bench/root"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def remote_arm(root: Path, arm: str, args, batch: int) -> dict[str, Any]:
    """Samples/s of the first ``--samples`` samples, setup included, from ``root`` itself and from its URL with a
    cold and a warm node cache (medians of ``--reps``)."""
    import shutil
    import tempfile

    from cyclegan_dist.data.remote import local_root
    from cyclegan_dist.data.streams import UnpairedShardDataset, make_loader

    k = max(1, (args.samples or 100) // batch)

    def first_samples(source, cache: Path) -> tuple[float, float]:
        start = time.perf_counter()
        local = local_root(source, cache) if isinstance(source, str) else source
        fetched = time.perf_counter() - start
        ds = UnpairedShardDataset(local, "photo", "monet", load_size=args.load_size, crop_size=args.size, seed=0)
        it = iter(make_loader(ds, batch, 0, 0))
        for _ in range(k):
            next(it)
        return k * batch / (time.perf_counter() - start), fetched

    rates: dict[str, list[float]] = {"local": [], "cold": [], "warm": []}
    fetch_s = []
    with loopback_server(arm, root) as url, tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        for rep in range(args.reps):
            cache = Path(tmp) / f"rep{rep}"
            shutil.rmtree(cache, ignore_errors=True)
            rates["local"].append(first_samples(root, cache)[0])
            cold, fetched = first_samples(url, cache)
            rates["cold"].append(cold)
            fetch_s.append(fetched)
            rates["warm"].append(first_samples(url, cache)[0])
    mb = sum(p.stat().st_size for p in root.glob("*.tar")) / 2**20
    return {"root": str(root), "arm": arm, "samples": k * batch, "shard_mb": round(mb, 1),
            **{f"{name}_samples_s": median(v) for name, v in rates.items()},
            "cold_fetch_s": median(fetch_s), "cold_fetch_mb_s": mb / max(median(fetch_s), 1e-9)}


def remote_note(row: dict[str, Any]) -> str:
    return (f"remote {row['arm']} ({Path(row['root']).parent.name}/{Path(row['root']).name}, {row['shard_mb']} MB of "
            f"shards, loopback): first {row['samples']} samples incl. setup: local root "
            f"{row['local_samples_s']:.1f}/s, cold cache {row['cold_samples_s']:.1f}/s (fetch {row['cold_fetch_s']:.2f}"
            f" s, {row['cold_fetch_mb_s']:.0f} MB/s), warm cache {row['warm_samples_s']:.1f}/s")


if __name__ == "__main__":
    sys.exit(main())
