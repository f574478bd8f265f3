"""MaligNet vs plain Mask R-CNN: training-step time, inference latency and peak memory, as ratios in one run.

Both models start from identical weights for every part they share (backbone, FPN blocks, RPN, box MLP,
mask head), and each measurement reports the regions per image the heads processed, because random
detectors that propose different numbers of regions are not comparable: an unpaired comparison once
showed a meaningless 2.6× because ROI Align and the heads dominate the time. Times come from
one process per mode in which the two models' steps alternate, so drift of a shared machine hits both;
peak memory (RSS on CPU, allocator peak on GPU) comes from a fresh process per model.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from malignet_bundle.atomic_io import write_json_atomic

MODELS = {"maskrcnn": {"ladder": False, "global_features": False}, "malignet": {}}
MALIGNET_OPTIONS: dict = {}  # set from the command line, e.g. the ladder combinator


def load_crops(dataset_dir: Path, count: int, size: int) -> tuple[list, list, list]:
    """``count`` labeled chest crops with targets and ``count`` more images used as unlabeled."""
    from monai.transforms import Compose, ScaleIntensityRangePercentilesd

    from malignet_bundle.data.class_map import ClassMap
    from malignet_bundle.data.datalist import load_datalist
    from malignet_bundle.transforms.geometry import BoxesFromMasksd, CropToChestd
    from malignet_bundle.transforms.io import LoadAnnotationd, LoadNMViewd, SelectViewd

    root = Path(__file__).resolve().parents[1]
    class_map = ClassMap.from_metadata(root / "configs" / "metadata.json")
    pipeline = Compose(
        [
            LoadNMViewd("image"),
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
    malignet = MaligNet(image_size=size, **MALIGNET_OPTIONS)
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


def _build(name: str, mode: str, state: dict, size: int, device: str) -> torch.nn.Module:
    from malignet_bundle.networks.malignet import MaligNet

    # At inference the mask head runs on every detection: no score floor, so both models keep 100 per image.
    extra = {"box_score_thresh": 0.0} if mode == "inference" else {}
    model = MaligNet(image_size=size, **MODELS[name], **(MALIGNET_OPTIONS if name == "malignet" else {}), **extra)
    model.load_state_dict(state[name])
    return model.to(device).train(mode != "inference")


def _measure(args: tuple) -> list[dict]:
    """Child process: time the models ``names`` in one mode, alternating their steps so machine drift cancels.

    Returns per model the median step time, the regions per image its heads saw, and the process's peak
    memory (meaningful per model when ``names`` has one entry).
    """
    names, mode, state_path, data_path, size, repeats, threads, device, options = args
    torch.set_num_threads(threads)
    MALIGNET_OPTIONS.update(options)
    state = torch.load(state_path, weights_only=True)
    data = torch.load(data_path, weights_only=True)
    images = [im.to(device) for im in data["images"]]
    targets = [{k: v.to(device) for k, v in t.items()} for t in data["targets"]]
    unlabeled = [im.to(device) for im in data["unlabeled"]] if mode == "train_labeled_unlabeled" else None
    runs = {}
    for name in names:
        model = _build(name, mode, state, size, device)
        counts = {"rois": 0, "positive": 0}
        model.roi_heads.box_roi_pool.register_forward_hook(
            lambda m, i, o, c=counts: c.__setitem__("rois", c["rois"] + sum(len(b) for b in i[1]))
        )
        model.roi_heads.mask_roi_pool.register_forward_hook(
            lambda m, i, o, c=counts: c.__setitem__("positive", c["positive"] + sum(len(b) for b in i[1]))
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
        runs[name] = (model, optimizer, counts, [])

    def step(name: str) -> None:
        model, optimizer, _, _ = runs[name]
        if mode == "inference":
            with torch.no_grad():
                model(images)
        else:
            optimizer.zero_grad()
            # plain Mask R-CNN cannot use unlabeled images: it trains on the labeled ones only
            extra = {"unlabeled": unlabeled} if unlabeled and name == "malignet" else {}
            losses = model(images, targets, **extra)
            sum(losses.values()).backward()
            optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    torch.manual_seed(1)
    for name, (_, _, counts, _) in runs.items():  # warm-up
        step(name)
        counts.update(rois=0, positive=0)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        for name, (_, _, _, times) in runs.items():
            start = time.perf_counter()
            step(name)
            times.append(time.perf_counter() - start)
    memory = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.startswith("cuda")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    per_image = repeats * len(images)
    return [
        {
            "model": name,
            "mode": mode,
            "seconds": statistics.median(times),
            "seconds_all": times,
            "rois_per_image": counts["rois"] / per_image,
            "positive_rois_per_image": counts["positive"] / per_image,
            "peak_memory_mib": memory,
        }
        for name, (_, _, counts, times) in runs.items()
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset_dir", default="data/synthetic")
    parser.add_argument("--images", type=int, default=4, help="labeled images per step (and unlabeled)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image_size", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--combinator", default="ladder", choices=["concat", "ladder"], help="LFPN decoder merge")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    MALIGNET_OPTIONS["ladder_combinator"] = args.combinator
    images, targets, unlabeled = load_crops(Path(args.dataset_dir), args.images, args.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        state_path, data_path = Path(tmp) / "state.pt", Path(tmp) / "data.pt"
        torch.save(shared_state(args.image_size), state_path)
        torch.save({"images": images, "targets": targets, "unlabeled": unlabeled}, data_path)
        common = (str(state_path), str(data_path), args.image_size)
        results, memory = [], {}
        with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
            for mode in ("train_labeled", "train_labeled_unlabeled", "inference"):
                # timing: both models in one process, steps alternating
                job = (tuple(MODELS), mode, *common, args.repeats, args.threads, args.device, MALIGNET_OPTIONS)
                for result in pool.apply(_measure, (job,)):
                    results.append(result)
                    print(f"{result['model']:9s} {mode:24s} {result['seconds']:.3f} s/step", flush=True)
                # peak memory: each model alone in a fresh process
                for name in MODELS:
                    job = ((name,), mode, *common, 1, args.threads, args.device, MALIGNET_OPTIONS)
                    (alone,) = pool.apply(_measure, (job,))
                    memory[(name, mode)] = alone["peak_memory_mib"]
        for result in results:
            result["peak_memory_mib"] = memory[(result["model"], result["mode"])]
    by = {(r["model"], r["mode"]): r for r in results}
    base_infer = by[("maskrcnn", "inference")]
    rows = [
        (
            "training step, N labeled (equal image count)",
            by[("malignet", "train_labeled")],
            by[("maskrcnn", "train_labeled")],
        ),
        (
            "training step, N labeled + N unlabeled vs N labeled",
            by[("malignet", "train_labeled_unlabeled")],
            by[("maskrcnn", "train_labeled_unlabeled")],
        ),
        ("inference, N images", by[("malignet", "inference")], base_infer),
    ]
    device = args.device if args.device == "cpu" else torch.cuda.get_device_name(0)
    print(
        f"\nLFPN combinator {args.combinator}; {platform.processor() or platform.machine()}, {device}, "
        f"{args.threads} threads, torch "
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
        write_json_atomic({"args": vars(args), "results": results}, args.json)


if __name__ == "__main__":
    main()
