"""Lesion patterns of the synthetic bone scans: the clinical context a reader uses to name a hot spot.

Local appearance deliberately overlaps between classes (every class is a blob of 1–4 lobes, a few mm to
a few cm, 1.2–5× the bone around it); what separates them is the pattern over the whole image:

- malignant: several irregular lesions scattered over spine, ribs, pelvis, skull and proximal long bones;
- degenerative change: at joints and the cervical/lumbar facets, often the same joint on both sides;
- post-trauma: small focal rib lesions in a line on consecutive ribs of one side;
- infection/inflammation: a single, wider lesion at one joint, with a soft-tissue halo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from malignet_bundle.data.phantom import Patient, Site, Skeleton

__all__ = ["LesionSpec", "LESION_CLASSES", "sample_lesions", "lesion_patch"]

LESION_CLASSES = ("malignant", "infection_inflammation", "degenerative_change", "post_trauma")

_MET_REGIONS = {
    "spine": 0.3,
    "rib": 0.3,
    "pelvis": 0.14,
    "long_bone": 0.1,
    "scapula": 0.06,
    "skull": 0.05,
    "sternum": 0.05,
}
_DEGENERATIVE_JOINTS = ("shoulder", "ac_joint", "sc_joint", "knee", "hip", "facet_L", "facet_C", "wrist")
_INFECTION_JOINTS = ("sc_joint", "shoulder", "knee", "ankle", "wrist", "elbow", "si_joint", "spine_T", "spine_L")


@dataclass
class LesionSpec:
    """One lesion: its class, where it sits, and its shape in mm and contrast to the bone around it."""

    label: str
    site: Site
    offset_mm: tuple[float, float]
    lobes: list[tuple[float, float, float, float, float]]  # (d_row mm, d_col mm, sigma_row mm, sigma_col mm, w)
    contrast: float
    halo: float = 0.0  # relative weight of a wide soft-tissue component (inflammation)


def _lobes(rng: np.random.Generator, n: int, size_mm: float, spread: float) -> list:
    lobes = [(0.0, 0.0, size_mm * rng.uniform(0.8, 1.25), size_mm * rng.uniform(0.8, 1.25), 1.0)]
    for _ in range(n - 1):
        lobes.append(
            (
                rng.normal(0, spread * size_mm),
                rng.normal(0, spread * size_mm),
                size_mm * rng.uniform(0.5, 0.9),
                size_mm * rng.uniform(0.5, 0.9),
                rng.uniform(0.4, 0.9),
            )
        )
    return lobes


def _jitter(rng: np.random.Generator, mm: float) -> tuple[float, float]:
    return float(rng.normal(0, mm)), float(rng.normal(0, mm))


def sample_lesions(rng: np.random.Generator, patient: Patient, skeleton: Skeleton) -> list[LesionSpec]:
    """Draw the lesions of one patient; the scenario probabilities follow a bone-scan referral population."""
    lesions: list[LesionSpec] = []
    adult = not patient.is_child

    if adult and rng.random() < 0.38:  # metastatic disease
        n = int(min(1 + rng.poisson(rng.choice([1.5, 5.0, 10.0])), 25))
        regions = list(_MET_REGIONS)
        probs = np.array(list(_MET_REGIONS.values()))
        for region in rng.choice(regions, size=n, p=probs / probs.sum()):
            candidates = skeleton.where(region=str(region))
            site = candidates[int(rng.integers(len(candidates)))]
            size = rng.uniform(3.0, 8.5)
            lesions.append(
                LesionSpec(
                    "malignant",
                    site,
                    _jitter(rng, 5),
                    _lobes(rng, int(rng.integers(1, 5)), size, 0.9),
                    rng.uniform(1.4, 5.0),
                )
            )

    degenerative_p = 0.0 if not adult else float(np.clip((patient.age - 35) / 60.0, 0.05, 0.7))
    if rng.random() < degenerative_p:
        for joint in rng.choice(_DEGENERATIVE_JOINTS, size=int(rng.integers(1, 4)), replace=False):
            candidates = [s for s in skeleton.sites if s.name.startswith(str(joint))]
            sides = ["R", "L"] if rng.random() < 0.65 else [str(rng.choice(["R", "L"]))]
            if joint.startswith("facet"):  # one or two vertebral levels
                levels = sorted({c.index for c in candidates})
                level = levels[int(rng.integers(len(levels)))]
                candidates = [c for c in candidates if c.index == level]
            size, contrast = rng.uniform(3.0, 6.5), rng.uniform(1.2, 3.5)
            for site in candidates:
                if site.side in sides:
                    lesions.append(
                        LesionSpec(
                            "degenerative_change",
                            site,
                            _jitter(rng, 2),
                            _lobes(rng, int(rng.integers(1, 3)), size * rng.uniform(0.85, 1.15), 0.6),
                            contrast * rng.uniform(0.85, 1.15),
                        )
                    )

    if adult and rng.random() < 0.14:  # fractures: consecutive ribs, one side, along a line
        side = str(rng.choice(["R", "L"]))
        part = str(rng.choice(["lat", "ant", "post1"]))
        count = 1 if rng.random() < 0.25 else int(rng.integers(2, 6))
        first = int(rng.integers(3, 11 - min(count, 4)))
        offset = _jitter(rng, 4)
        for k in range(first, first + count):
            for site in skeleton.where(region="rib", side=side, prefix=f"rib{k}_{part}"):
                lesions.append(
                    LesionSpec(
                        "post_trauma",
                        site,
                        (offset[0], offset[1] + rng.normal(0, 1.5)),
                        _lobes(rng, 1, rng.uniform(2.5, 5.0), 0.3),
                        rng.uniform(1.8, 4.5),
                    )
                )

    if rng.random() < 0.15:  # a single infected or inflamed joint
        joint = str(rng.choice(_INFECTION_JOINTS))
        candidates = [s for s in skeleton.sites if s.name.startswith(joint)]
        site = candidates[int(rng.integers(len(candidates)))]
        lesions.append(
            LesionSpec(
                "infection_inflammation",
                site,
                _jitter(rng, 3),
                _lobes(rng, int(rng.integers(1, 4)), rng.uniform(5.0, 10.0), 0.5),
                rng.uniform(1.5, 4.0),
                halo=rng.uniform(0.15, 0.4),
            )
        )
    return lesions


def lesion_patch(spec: LesionSpec, spacing_mm: float) -> tuple[np.ndarray, tuple[float, float]]:
    """Render the lesion's unit-peak uptake field; returns (patch, (row, col) of the patch's top-left)."""
    extent = max(max(abs(lo[0]), abs(lo[1])) + 3.5 * max(lo[2], lo[3]) for lo in spec.lobes)
    if spec.halo:
        extent = max(extent, 3.5 * 2.5 * spec.lobes[0][2])
    half = int(np.ceil(extent / spacing_mm))
    center = (spec.site.point[0] + spec.offset_mm[0] / spacing_mm, spec.site.point[1] + spec.offset_mm[1] / spacing_mm)
    r0, c0 = int(np.floor(center[0])) - half, int(np.floor(center[1])) - half
    rr, cc = np.mgrid[0 : 2 * half + 1, 0 : 2 * half + 1].astype(np.float32)
    rr = (rr + r0 - center[0]) * spacing_mm
    cc = (cc + c0 - center[1]) * spacing_mm
    field = np.zeros(rr.shape, dtype=np.float32)
    for d_row, d_col, s_row, s_col, weight in spec.lobes:
        field += weight * np.exp(-0.5 * (((rr - d_row) / s_row) ** 2 + ((cc - d_col) / s_col) ** 2))
    if spec.halo:
        s = 2.5 * spec.lobes[0][2]
        field += spec.halo * np.exp(-0.5 * ((rr / s) ** 2 + (cc / s) ** 2))
    return field / field.max(), (float(r0), float(c0))
