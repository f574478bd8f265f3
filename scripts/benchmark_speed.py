"""MaligNet vs plain Mask R-CNN: training-step time, inference latency and peak memory, as ratios in one run.

Both models start from identical weights for every part they share (backbone, FPN blocks, RPN, box MLP,
mask head), and each measurement reports the regions per image the heads processed, because random
detectors that propose different numbers of regions are not comparable (DESIGN.md §10). Each measurement
runs in its own process so peak memory (RSS on CPU, allocator peak on GPU) belongs to that model alone.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

MODELS = {"maskrcnn": {"ladder": False, "global_features": False}, "malignet": {}}


def load_crops(dataset_dir: Path, count: int, size: int) -> tuple[list, list, list]:
    """``count`` labeled chest crops with targets and ``count`` more images used as unlabeled."""
    from monai.transforms import Compose, LoadImaged, ScaleIntensityRangePercentilesd

    from malignet_bundle.data.check import load_datalist
    from malignet_bundle.data.class_map import ClassMap
    from malignet_bundle.data.reader import NMWholeBodyReader
    from malignet_bundle.transforms.geometry import BoxesFromMasksd, CropToChestd
    from malignet_bundle.transforms.io import LoadAnnotationd, SelectViewd

    root = Path(__file__).resolve().parents[1]
    class_map = ClassMap.from_metadata(root / "configs" / "metadata.json")
    pipeline = Compose(
        [
            LoadImaged("image", reader=NMWholeBodyReader(), image_only=True),
            LoadAnnotationd("label", class_map=class_map, dataset_dir=str(dataset_dir)),
            SelectViewd("image"),
            CropToChestd("image", size),
            BoxesFromMasksd(),
            ScaleIntensityRangePercentilesd("image", 0, 99.5, 0.0, 1.0),
        ]
    )
    datalist = load_datalist(dataset_dir / "datalist.json")
    items = [it for it in datalist["labeled"] + datalist["validation"] + datalist["test"]][: 2 * count]
    if len(items) < 2 * count:
        sys.exit(f"{dataset_dir} has {len(items)} annotated views; need {2 * count}")
    samples = [pipeline({**it, "image": str(dataset_dir / it["image"])}) for it in items]
    images = [s["image"].as_tensor() for s in samples]
    targets = [{"boxes": s["boxes"], "labels": s["labels"], "masks": s["masks"]} for s in samples[:count]]
    return images[:count], targets, images[count:]


def shared_state(size: int) -> dict[str, dict]:
    """Initial weights of both models, identical for every part they share."""
    from malignet_bundle.networks.malignet import MaligNet

    torch.manual_seed(0)
    malignet = MaligNet(image_size=size)
    state = malignet.state_dict()
    baseline = MaligNet(image_size=size, **MODELS["maskrcnn"]).state_dict()
    for key, value in baseline.items():
        source = key.replace("roi_heads.box_head.", "roi_heads.box_head.mlp.")
        candidate = state.get(source, state.get(key))
        if candidate is None:
            continue
        if candidate.shape == value.shape:
            baseline[key] = candidate.clone()
        elif key == "roi_heads.box_predictor.cls_score.weight" or key == "roi_heads.box_predictor.bbox_pred.weight":
            baseline[key] = candidate[:, : value.shape[1]].clone()  # drop the global-feature columns
    return {"malignet": state, "maskrcnn": baseline}


def _measure(args: tuple) -> dict:
    """Child process: time one model in one mode; returns median seconds, ROIs per image, peak memory."""
    name, mode, state_path, data_path, size, repeats, threads, device = args
    torch.set_num_threads(threads)
    from malignet_bundle.networks.malignet import MaligNet

    # At inference the mask head runs on every detection: no score floor, so both models keep 100 per image.
    extra = {"box_score_thresh": 0.0} if mode == "inference" else {}
    model = MaligNet(image_size=size, **MODELS[name], **extra)
    model.load_state_dict(torch.load(state_path, weights_only=True)[name])
    model.to(device)
    data = torch.load(data_path, weights_only=True)
    images = [im.to(device) for im in data["images"]]
    targets = [{k: v.to(device) for k, v in t.items()} for t in data["targets"]]
    unlabeled = [im.to(device) for im in data["unlabeled"]] if mode == "train_labeled_unlabeled" else None
    counts = {"rois": 0, "positive": 0}
    model.roi_heads.box_roi_pool.register_forward_hook(
        lambda m, inputs, out: counts.__setitem__("rois", counts["rois"] + sum(len(b) for b in inputs[1]))
    )
    model.roi_heads.mask_roi_pool.register_forward_hook(
        lambda m, inputs, out: counts.__setitem__("positive", counts["positive"] + sum(len(b) for b in inputs[1]))
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    torch.manual_seed(1)

    def step() -> None:
        if mode == "inference":
            with torch.no_grad():
                model(images)
        else:
            optimizer.zero_grad()
            losses = model(images, targets, unlabeled=unlabeled) if unlabeled else model(images, targets)
            sum(losses.values()).backward()
            optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    model.train(mode != "inference")
    step()  # warm-up
    counts.update(rois=0, positive=0)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    memory = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.startswith("cuda")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    per_image = repeats * len(images)
    return {
        "model": name,
        "mode": mode,
        "seconds": statistics.median(times),
        "seconds_all": times,
        "rois_per_image": counts["rois"] / per_image,
        "positive_rois_per_image": counts["positive"] / per_image,
        "peak_memory_mib": memory,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset_dir", default="data/synthetic")
    parser.add_argument("--images", type=int, default=4, help="labeled images per step (and unlabeled)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image_size", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    images, targets, unlabeled = load_crops(Path(args.dataset_dir), args.images, args.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        state_path, data_path = Path(tmp) / "state.pt", Path(tmp) / "data.pt"
        torch.save(shared_state(args.image_size), state_path)
        torch.save({"images": images, "targets": targets, "unlabeled": unlabeled}, data_path)
        jobs = [
            (model, mode, str(state_path), str(data_path), args.image_size, args.repeats, args.threads, args.device)
            for mode in ("train_labeled", "train_labeled_unlabeled", "inference")
            for model in MODELS
            if not (model == "maskrcnn" and mode == "train_labeled_unlabeled")
        ]
        results = []
        with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
            for job in jobs:
                result = pool.apply(_measure, (job,))
                print(
                    f"{result['model']:9s} {result['mode']:24s} {result['seconds']:.3f} s/step "
                    f"{result['rois_per_image']:.0f} ROIs/img {result['peak_memory_mib']:.0f} MiB",
                    flush=True,
                )
                results.append(result)
    by = {(r["model"], r["mode"]): r for r in results}
    base_train, base_infer = by[("maskrcnn", "train_labeled")], by[("maskrcnn", "inference")]
    rows = [
        ("training step, N labeled (equal image count)", by[("malignet", "train_labeled")], base_train),
        (
            "training step, N labeled + N unlabeled vs N labeled",
            by[("malignet", "train_labeled_unlabeled")],
            base_train,
        ),
        ("inference, N images", by[("malignet", "inference")], base_infer),
    ]
    device = args.device if args.device == "cpu" else torch.cuda.get_device_name(0)
    print(
        f"\n{platform.processor() or platform.machine()}, {device}, {args.threads} threads, torch "
        f"{torch.__version__}, N={args.images}, {args.image_size}x{args.image_size}, median of {args.repeats}\n"
    )
    print(
        "| measurement | MaligNet s | Mask R-CNN s | ratio | ROIs/img (M / B) | positive ROIs/img (M / B) "
        "| peak MiB (M / B) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, m, b in rows:
        print(
            f"| {label} | {m['seconds']:.3f} | {b['seconds']:.3f} | {m['seconds'] / b['seconds']:.2f} | "
            f"{m['rois_per_image']:.0f} / {b['rois_per_image']:.0f} | {m['positive_rois_per_image']:.1f} / "
            f"{b['positive_rois_per_image']:.1f} | {m['peak_memory_mib']:.0f} / {b['peak_memory_mib']:.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
