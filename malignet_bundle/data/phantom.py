"""Whole-body bone-scan phantom: anatomy drawn as projected tracer uptake for anterior and posterior views.

Every structure is a cylinder (capsule) or an ellipsoid whose projected uptake is proportional to the chord
length through it, attenuated by the tissue in front of it (anterior view) or behind it (posterior view).
Everything is rendered in the *anterior frame*: patient's right on the image's left. The posterior image
as acquired is the mirror of its anterior-frame rendering; :mod:`malignet_bundle.data.synthesize` does
that mirroring when it writes DICOM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Canvas",
    "HotSpotLevels",
    "HOT_SPOTS_V1",
    "HOT_SPOTS_V2",
    "Patient",
    "Site",
    "Skeleton",
    "sample_patient",
    "build_skeleton",
]

# Effective linear attenuation of 140 keV photons in soft tissue, lowered from the narrow-beam 0.15/cm
# to account for scatter build-up in a wide-energy-window planar acquisition.
MU_PER_CM = 0.08


class Canvas:
    """Two accumulators (anterior and posterior, both in the anterior frame) of expected tracer counts.

    With ``layer_mm`` set, every view also keeps its uptake split by depth below the skin facing its
    detector, in layers of that thickness (``anterior_layers[k]`` holds sources ``k * layer_mm`` below the
    anterior skin, to the nearest layer), so that a camera model can blur each depth with its own resolution
    (:class:`malignet_bundle.data.camera.GammaCamera`). ``anterior``/``posterior`` stay the sums of the layers.

    Args:
        shape: (rows, cols) of the whole-body matrix.
        mu_per_cm: effective attenuation coefficient used for depth weighting.
        layer_mm: thickness of the depth layers; ``None`` keeps no layers (generator version 1).
    """

    def __init__(self, shape: tuple[int, int], mu_per_cm: float = MU_PER_CM, layer_mm: float | None = None) -> None:
        self.shape = shape
        self.mu = mu_per_cm
        self.layer_mm = layer_mm
        self.anterior = np.zeros(shape, dtype=np.float32)
        self.posterior = np.zeros(shape, dtype=np.float32)
        self.anterior_layers: dict[int, np.ndarray] = {}
        self.posterior_layers: dict[int, np.ndarray] = {}

    def layer_index(self, depth: float, thickness_cm: float) -> tuple[int, int]:
        """Return the (anterior, posterior) depth-layer indices of a source at ``depth`` (0 front, 1 back).

        Raises:
            ValueError: when the canvas keeps no layers.
        """
        if self.layer_mm is None:
            raise ValueError("this canvas keeps no depth layers (layer_mm is None)")
        depth_mm = depth * thickness_cm * 10.0
        return (
            int(round(depth_mm / self.layer_mm)),
            int(round((thickness_cm * 10.0 - depth_mm) / self.layer_mm)),
        )

    def _layer(self, layers: dict[int, np.ndarray], index: int) -> np.ndarray:
        if index not in layers:
            layers[index] = np.zeros(self.shape, dtype=np.float32)
        return layers[index]

    def attenuation(self, depth: float, thickness_cm: float) -> tuple[float, float]:
        """Return the (anterior, posterior) transmission for a source at ``depth`` (0 front, 1 back)."""
        return (
            float(np.exp(-self.mu * depth * thickness_cm)),
            float(np.exp(-self.mu * (1.0 - depth) * thickness_cm)),
        )

    def _window(self, rmin: float, rmax: float, cmin: float, cmax: float) -> tuple[slice, slice] | None:
        r0, r1 = max(int(np.floor(rmin)), 0), min(int(np.ceil(rmax)) + 1, self.shape[0])
        c0, c1 = max(int(np.floor(cmin)), 0), min(int(np.ceil(cmax)) + 1, self.shape[1])
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def add(self, window: tuple[slice, slice], values: np.ndarray, depth: float, thickness_cm: float) -> None:
        """Add a patch of uptake (already in counts-per-pixel units) at ``window`` with depth weighting."""
        a_ant, a_post = self.attenuation(depth, thickness_cm)
        self.anterior[window] += values * a_ant
        self.posterior[window] += values * a_post
        if self.layer_mm is not None:
            k_ant, k_post = self.layer_index(depth, thickness_cm)
            self._layer(self.anterior_layers, k_ant)[window] += values * a_ant
            self._layer(self.posterior_layers, k_post)[window] += values * a_post

    def capsule(
        self,
        p0: tuple[float, float],
        p1: tuple[float, float],
        radius: float,
        uptake: float,
        depth: float,
        thickness_cm: float,
    ) -> None:
        """Project a cylinder with rounded ends from ``p0`` to ``p1`` (row, col pixels), radius in pixels."""
        self.polyline(np.array([p0, p1], dtype=np.float64), radius, uptake, depth, thickness_cm)

    def polyline(
        self,
        points: np.ndarray,
        radius: float,
        uptake: float,
        depth: float,
        thickness_cm: float,
    ) -> None:
        """Project a tube along ``points`` (K×2, row/col) without double-counting at the joints."""
        pad = radius + 1.5
        win = self._window(
            points[:, 0].min() - pad, points[:, 0].max() + pad, points[:, 1].min() - pad, points[:, 1].max() + pad
        )
        if win is None:
            return
        rr, cc = np.mgrid[win[0], win[1]].astype(np.float32)
        d = np.full(rr.shape, np.inf, dtype=np.float32)
        for a, b in zip(points[:-1], points[1:], strict=False):
            d = np.minimum(d, _segment_distance(rr, cc, tuple(a), tuple(b)))
        self.add(win, uptake * _chord(d, radius), depth, thickness_cm)

    def ellipse(
        self,
        center: tuple[float, float],
        radii: tuple[float, float],
        uptake: float,
        depth: float,
        thickness_cm: float,
        angle: float = 0.0,
        shell: float = 0.0,
    ) -> None:
        """Project an ellipsoid (radii in pixels along row/col before rotation by ``angle`` radians).

        ``shell`` > 0 adds a bright rim of that relative thickness, as a cortex or the skull's vault.
        """
        pad = max(radii) + 1.5
        win = self._window(center[0] - pad, center[0] + pad, center[1] - pad, center[1] + pad)
        if win is None:
            return
        rr, cc = np.mgrid[win[0], win[1]].astype(np.float32)
        dr, dc = rr - center[0], cc - center[1]
        cos, sin = np.cos(angle), np.sin(angle)
        u = (cos * dr + sin * dc) / radii[0]
        v = (-sin * dr + cos * dc) / radii[1]
        rho = np.sqrt(u * u + v * v)
        values = np.sqrt(np.clip(1.0 - rho * rho, 0.0, None))
        if shell > 0:
            inner = np.sqrt(np.clip(1.0 - (rho / (1.0 - shell)) ** 2, 0.0, None)) * (1.0 - shell)
            values = 0.35 * values + (values - inner)
        self.add(win, uptake * values * min(radii), depth, thickness_cm)


def _segment_distance(rr: np.ndarray, cc: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    dr, dc = p1[0] - p0[0], p1[1] - p0[1]
    length2 = dr * dr + dc * dc
    if length2 == 0:
        t = np.zeros_like(rr)
    else:
        t = np.clip(((rr - p0[0]) * dr + (cc - p0[1]) * dc) / length2, 0.0, 1.0)
    return np.hypot(rr - (p0[0] + t * dr), cc - (p0[1] + t * dc))


def _chord(distance: np.ndarray, radius: float) -> np.ndarray:
    """Path length through a cylinder of ``radius`` at ``distance`` from its axis (pixels)."""
    return 2.0 * np.sqrt(np.clip(radius * radius - distance * distance, 0.0, None))


@dataclass
class Patient:
    """Randomised body parameters of one synthetic patient (lengths in mm)."""

    patient_id: str
    age: int
    sex: str
    height_mm: float
    build: float  # soft-tissue girth factor, 0.8 (thin) … 1.4 (obese)
    shoulder_scale: float
    arm_abduction: tuple[float, float]  # radians, right and left arm
    tilt: float  # whole-body rotation in radians
    top_mm: float  # gap above the vertex
    x_shift_mm: float
    bone_uptake: float  # relative skeletal uptake (renal function, age)
    soft_tissue: float  # soft-tissue to bone ratio
    kidney_uptake: float
    bladder_uptake: float
    total_counts: float  # counts in the anterior view
    scoliosis: float  # lateral spine deviation amplitude, mm
    # forearm angle from the vertical, radians, right and left; None: 1.3 × the arm's abduction (version 1)
    forearm_angle: tuple[float, float] | None = None

    @property
    def is_child(self) -> bool:
        """Whether growth plates are still open."""
        return self.age < 17


@dataclass(frozen=True)
class HotSpotLevels:
    """Activity of the hot spots that are not bone, relative to bone uptake (bone ≈ 1 per unit of chord).

    Uptake is per unit of path length through the structure, so a structure's projected peak also grows with
    its size (a full bladder outshines a small lesion of the same uptake). Each range is drawn per patient.

    Args:
        bladder: (median, log-sd) of the lognormal bladder uptake.
        kidney: (median, log-sd) of the lognormal kidney uptake.
        injection_probability: chance that the injection arm shows its injection site (residual or
            extravasated tracer at the elbow or the back of the hand).
        injection_ratio: (low, high) uptake of a visible injection site.
        urine_contamination: (low, high) uptake of a urine spot on skin or clothing (absolute, bone ≈ 1).
        lesion_contrast_scale: factor on every lesion's drawn contrast (:mod:`malignet_bundle.data.lesions`).
    """

    bladder: tuple[float, float]
    kidney: tuple[float, float]
    injection_probability: float
    injection_ratio: tuple[float, float]
    urine_contamination: tuple[float, float]
    lesion_contrast_scale: float = 1.0


# Version 1: the levels the first generator drew (kept so that version 1 stays reproducible). Its hot spots
# are up to ten times brighter, relative to bone, than on real scans.
HOT_SPOTS_V1 = HotSpotLevels(
    bladder=(5.0, 0.6),
    kidney=(0.7, 0.5),
    injection_probability=0.65,
    injection_ratio=(6.0, 40.0),
    urine_contamination=(5.0, 30.0),
)

# Version 2, set against real GE whole-body scans three hours after 500–800 MBq of Tc-99m MDP, where the
# brightest pixel (bladder or a hot lesion) is 245–278 counts for a body median of 26 and a 95th percentile
# (bright bone) of ≈70, i.e. ≈3.5–4× the brightest bone.
# - Bladder: patients void just before imaging, so the bladder holds a few hundred ml of urine and its
#   projected peak is typically 2–6× the pelvic bone (EANM bone-scintigraphy guideline, Van den Wyngaert et
#   al. 2016: "void immediately before imaging"); the lognormal's spread covers a nearly empty to a full
#   bladder.
# - Kidneys: faint on a normal 3 h scan, at or below the lumbar spine (the guideline's normal pattern).
# - Injection site: visible on a minority of scans, a small spot a few times bone uptake (residual activity
#   in the vein or a small extravasation); large extravasations are rare.
# - Urine contamination: a few times bone uptake, small.
# - Lesions: a lesion's mean counts over the bone around it of 1.3–3.5 on the view (the range readers meet
#   on planar scans; quantitative bone-scan work such as Erdi et al. 1997 and Sadik et al. 2008 reports
#   hot-spot to normal-bone ratios of that order): version 1's drawn contrasts (lesions.py) at half
#   strength, since a lesion is drawn above the bone's line peak and the camera blurs the bone more than
#   the lesion; measured this way the median annotated lesion stays ≈2.2× its surroundings, as in version 1.
# - Soft tissue (Patient.soft_tissue, drawn in version 2 at 0.02–0.08 of bone per unit path) sets the
#   95th percentile over the median inside the body, 2.6–2.8 on the real scans.
HOT_SPOTS_V2 = HotSpotLevels(
    bladder=(2.0, 0.5),
    kidney=(0.7, 0.4),
    injection_probability=0.3,
    injection_ratio=(2.0, 10.0),
    urine_contamination=(1.5, 8.0),
    lesion_contrast_scale=0.5,
)


def sample_patient(
    rng: np.random.Generator, patient_id: str, version: int = 1, hot_spots: HotSpotLevels | None = None
) -> Patient:
    """Draw the body of one patient: adults mostly elderly (a bone-scan population), a few children.

    Args:
        rng: the study's random stream.
        patient_id: the patient's id.
        version: generator version; 1 draws exactly what the first generator drew, 2 draws adult body
            widths and arm positions measured against real scans and the count level of a real scan.
        hot_spots: bladder and kidney levels (version 2 only; default :data:`HOT_SPOTS_V2`).

    Returns:
        The patient.

    Raises:
        ValueError: for an unknown version.
    """
    if version == 2:
        return _sample_patient_v2(rng, patient_id, hot_spots or HOT_SPOTS_V2)
    if version != 1:
        raise ValueError(f"unknown generator version {version}; known: 1, 2")
    age, sex, height = _sample_age_sex_height(rng, child_fraction=0.08)
    return Patient(
        patient_id=patient_id,
        age=age,
        sex=sex,
        height_mm=height,
        build=float(np.clip(rng.normal(1.05, 0.15), 0.8, 1.45)),
        shoulder_scale=float(rng.normal(1.0, 0.05)),
        arm_abduction=(float(rng.uniform(0.06, 0.3)), float(rng.uniform(0.06, 0.3))),
        tilt=float(rng.normal(0, 0.015)),
        top_mm=float(rng.uniform(15, 110)),
        x_shift_mm=float(rng.normal(0, 12)),
        bone_uptake=float(rng.uniform(0.8, 1.25)),
        soft_tissue=float(rng.uniform(0.05, 0.16)),
        kidney_uptake=float(rng.lognormal(np.log(0.7), 0.5)),
        bladder_uptake=float(rng.lognormal(np.log(5.0), 0.6)),
        total_counts=float(rng.uniform(1.5e6, 4.5e6)),
        scoliosis=float(abs(rng.normal(0, 4))),
    )


def _sample_age_sex_height(rng: np.random.Generator, child_fraction: float) -> tuple[int, str, float]:
    """Age, sex and standing height (mm, 950–1950) of one patient, both generator versions.

    Children (5–16 years, 1000 mm at 5 plus 55 mm a year, sd 60 mm) are ``child_fraction`` of patients;
    adults are 62 ± 13 years (20–92), 1640 ± 85 mm tall, men 80 mm taller.
    """
    child = rng.random() < child_fraction
    if child:
        age = int(rng.integers(5, 17))
        height = 1000.0 + (age - 5) * 55.0 + rng.normal(0, 60)
    else:
        age = int(np.clip(rng.normal(62, 13), 20, 92))
        height = rng.normal(1640, 85)
    sex = "F" if rng.random() < 0.5 else "M"
    if sex == "M" and not child:
        height += 80
    return age, sex, float(np.clip(height, 950, 1950))


def _sample_patient_v2(rng: np.random.Generator, patient_id: str, hot_spots: HotSpotLevels) -> Patient:
    """Version 2's patient: adult anthropometry, arms at the sides, a real scan's count level.

    Heights: adult stature 1640 ± 85 mm (+80 mm for men), as version 1. Body width at the pelvis on a real
    GE whole-body view, arms at the sides, is 201–210 pixels of 2.26 mm (454–475 mm: hips plus both
    forearms); the arms are therefore drawn hanging by the body (abduction 0.01–0.09 rad, forearms turned a
    little in or out) instead of version 1's 0.06–0.3 rad, which put hands outside a 578 mm field.
    Count level: 3.6 million counts on a real anterior view; whole-body scans of a clinic span roughly
    2.5–5 million (scan speed set for that), drawn lognormal around 3.6 million.
    """
    age, sex, height = _sample_age_sex_height(rng, child_fraction=0.06)
    abduction = (float(rng.uniform(0.01, 0.09)), float(rng.uniform(0.01, 0.09)))
    return Patient(
        patient_id=patient_id,
        age=age,
        sex=sex,
        height_mm=height,
        build=float(np.clip(rng.normal(1.05, 0.13), 0.85, 1.4)),
        shoulder_scale=float(rng.normal(1.0, 0.04)),
        arm_abduction=abduction,
        tilt=float(rng.normal(0, 0.01)),
        top_mm=float(rng.uniform(15, 110)),
        x_shift_mm=float(rng.normal(0, 8)),
        bone_uptake=float(rng.uniform(0.8, 1.25)),
        soft_tissue=float(rng.uniform(0.02, 0.08)),
        kidney_uptake=float(rng.lognormal(np.log(hot_spots.kidney[0]), hot_spots.kidney[1])),
        bladder_uptake=float(rng.lognormal(np.log(hot_spots.bladder[0]), hot_spots.bladder[1])),
        total_counts=float(np.clip(rng.lognormal(np.log(3.6e6), 0.15), 2.3e6, 5.2e6)),
        scoliosis=float(abs(rng.normal(0, 4))),
        forearm_angle=(float(rng.uniform(-0.08, 0.04)), float(rng.uniform(-0.08, 0.04))),
    )


@dataclass
class Site:
    """A skeletal location where a lesion may sit (row, col in pixels; anterior frame)."""

    name: str
    region: str  # spine | rib | pelvis | skull | sternum | long_bone | scapula | joint
    side: str  # R | L | M
    point: tuple[float, float]
    depth: float
    thickness_cm: float
    index: int = 0  # vertebra or rib number, for patterns that run along consecutive bones


@dataclass
class Skeleton:
    """The rendered anatomy's lesion sites and chest box (x0, y0, x1, y1, anterior frame, pixels)."""

    sites: list[Site] = field(default_factory=list)
    chest_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    injection_arm: str = "R"

    def where(self, region: str | None = None, side: str | None = None, prefix: str | None = None) -> list[Site]:
        """Sites filtered by region, side and name prefix."""
        return [
            s
            for s in self.sites
            if (region is None or s.region == region)
            and (side is None or s.side == side)
            and (prefix is None or s.name.startswith(prefix))
        ]


def build_skeleton(
    canvas: Canvas,
    patient: Patient,
    spacing_mm: float,
    rng: np.random.Generator,
    hot_spots: HotSpotLevels = HOT_SPOTS_V1,
) -> Skeleton:
    """Draw soft tissue, organs and skeleton of ``patient`` onto ``canvas`` and return its lesion sites.

    Proportions follow standard anthropometry as fractions of standing height; children get a larger
    head and open growth plates.

    Args:
        canvas: where to draw.
        patient: the body.
        spacing_mm: pixel size.
        rng: the study's random stream.
        hot_spots: injection-site levels (bladder and kidneys come with ``patient``).

    Returns:
        The lesion sites, chest box and injection arm.
    """
    rows, cols = canvas.shape
    h = patient.height_mm / spacing_mm  # body height in pixels
    top = patient.top_mm / spacing_mm
    cx = cols / 2.0 + patient.x_shift_mm / spacing_mm
    cos_t, sin_t = np.cos(patient.tilt), np.sin(patient.tilt)
    pivot_y = top + 0.5 * h

    def pt(x_frac: float, y_frac: float) -> tuple[float, float]:
        """Body fractions (x from midline, + = patient's left; y from vertex) to (row, col) pixels."""
        x, y = x_frac * h, top + y_frac * h - pivot_y
        return (pivot_y + cos_t * y - sin_t * x, cx + sin_t * y + cos_t * x)

    mm = 1.0 / spacing_mm  # pixels per mm
    bone = 1.0 * patient.bone_uptake
    soft = patient.soft_tissue * bone * 0.3
    head_frac = 0.075 if patient.is_child else 0.064
    build = patient.build
    sk = Skeleton()

    # Soft tissue: chord-profile cylinders, so edges fall off as a real body outline does.
    canvas.ellipse(pt(0, head_frac), (head_frac * h, 0.78 * head_frac * h), soft, 0.5, 18)
    canvas.capsule(pt(0, 0.13), pt(0, 0.17), 55 * mm * build, soft, 0.5, 12)
    torso_w = 0.095 * build * patient.shoulder_scale
    for y0, y1, w in ((0.19, 0.3, torso_w), (0.3, 0.42, torso_w * 0.92), (0.42, 0.5, torso_w * 1.02)):
        canvas.capsule(pt(-w * 0.45, y0), pt(-w * 0.45, y1), w * 0.6 * h, soft, 0.5, 22 * build)
        canvas.capsule(pt(w * 0.45, y0), pt(w * 0.45, y1), w * 0.6 * h, soft, 0.5, 22 * build)
    for s in (-1, 1):
        canvas.capsule(pt(s * 0.05, 0.5), pt(s * 0.045, 0.72), 0.045 * h * build, soft, 0.5, 14 * build)
        canvas.capsule(pt(s * 0.045, 0.72), pt(s * 0.042, 0.95), 0.03 * h * build, soft, 0.5, 10)

    # Organs: kidneys (posterior), bladder (anterior, hottest), free-pertechnetate stomach/thyroid now and then.
    for s in (-1, 1):
        canvas.ellipse(
            pt(s * 0.042, 0.395),
            (0.032 * h, 0.016 * h),
            bone * patient.kidney_uptake * 0.07,
            0.78,
            22 * build,
            angle=-s * 0.25,
        )
    canvas.ellipse(
        pt(rng.normal(0, 0.004), 0.505),
        (0.022 * h, 0.028 * h) if rng.random() < 0.5 else (0.017 * h, 0.022 * h),
        bone * patient.bladder_uptake * 0.35,
        0.3,
        20 * build,
    )
    if rng.random() < 0.1:
        canvas.ellipse(pt(0, 0.155), (8 * mm, 14 * mm), bone * 0.6, 0.2, 12)

    # Skull: vault with a bright rim, facial bones and mandible.
    canvas.ellipse(
        pt(0, head_frac * 0.95), (head_frac * 0.95 * h, 0.72 * head_frac * h), bone * 0.13, 0.5, 18, shell=0.16
    )
    canvas.polyline(
        np.array([pt(-0.032, 0.1), pt(-0.02, 0.122), pt(0, 0.128), pt(0.02, 0.122), pt(0.032, 0.1)]),
        5 * mm,
        bone * 0.45,
        0.3,
        16,
    )
    canvas.ellipse(pt(0, 0.095), (10 * mm, 18 * mm), bone * 0.3, 0.3, 16)
    for yf in (0.04, 0.07):
        sk.sites.append(Site(f"skull_{yf}", "skull", "M", pt(rng.uniform(-0.03, 0.03), yf), 0.5, 18))

    # Spine: 7 cervical, 12 thoracic, 5 lumbar vertebrae, with a patient-specific lateral curve.
    levels = [("C", i, 0.115 + i * 0.009) for i in range(1, 8)]
    levels += [("T", i, 0.18 + (i - 1) * 0.0148) for i in range(1, 13)]
    levels += [("L", i, 0.358 + (i - 1) * 0.019) for i in range(1, 6)]
    phase = rng.uniform(0, np.pi)
    for n, (part, i, yf) in enumerate(levels):
        xs = patient.scoliosis * mm / h * np.sin(phase + n / 6.0)
        half = {"C": 7, "T": 10, "L": 14}[part] * mm / h
        radius = {"C": 5, "T": 6.5, "L": 8}[part] * mm
        canvas.capsule(pt(xs - half, yf), pt(xs + half, yf), radius, bone * 0.8, 0.72, 22 * build)
        sk.sites.append(Site(f"spine_{part}{i}", "spine", "M", pt(xs, yf), 0.72, 22 * build, index=n))
        if part in ("C", "L"):
            for s in (-1, 1):
                sk.sites.append(
                    Site(
                        f"facet_{part}{i}_{'RL'[s > 0]}",
                        "spine_joint",
                        "RL"[s > 0],
                        pt(xs + s * half * 1.3, yf),
                        0.75,
                        22 * build,
                        index=n,
                    )
                )
    # Sacrum and sacroiliac joints.
    canvas.polyline(np.array([pt(0, 0.455), pt(0, 0.505)]), 14 * mm, bone * 0.9, 0.8, 20 * build)
    for s in (-1, 1):
        canvas.capsule(pt(s * 0.022, 0.448), pt(s * 0.018, 0.478), 6 * mm, bone * 1.3, 0.8, 20 * build)
        sk.sites.append(Site(f"si_joint_{'RL'[s > 0]}", "joint", "RL"[s > 0], pt(s * 0.02, 0.462), 0.8, 20))

    # Pelvis: iliac wings (thin plate + thick rim), acetabulum, pubic rami.
    for s in (-1, 1):
        side = "RL"[s > 0]
        canvas.ellipse(pt(s * 0.055, 0.44), (0.03 * h, 0.036 * h), bone * 0.12, 0.6, 20 * build, angle=s * 0.3)
        canvas.polyline(
            np.array(
                [
                    pt(s * 0.025, 0.43),
                    pt(s * 0.06, 0.41),
                    pt(s * 0.088, 0.425),
                    pt(s * 0.082, 0.455),
                    pt(s * 0.06, 0.485),
                ]
            ),
            5 * mm,
            bone,
            0.6,
            20 * build,
        )
        canvas.polyline(
            np.array([pt(s * 0.06, 0.485), pt(s * 0.035, 0.5), pt(s * 0.006, 0.505)]), 5 * mm, bone, 0.35, 20 * build
        )
        canvas.polyline(
            np.array([pt(s * 0.055, 0.495), pt(s * 0.04, 0.515), pt(s * 0.01, 0.512)]),
            5 * mm,
            bone * 0.9,
            0.45,
            20 * build,
        )
        for k, (xf, yf) in enumerate(((0.06, 0.42), (0.075, 0.44), (0.045, 0.47), (0.03, 0.505))):
            sk.sites.append(Site(f"pelvis_{side}{k}", "pelvis", side, pt(s * xf, yf), 0.6, 20 * build))

    # Ribs: posterior arc from the spine, lateral turn, anterior arc towards the sternum.
    y_t1 = 0.18
    for k in range(1, 13):
        y0 = y_t1 + (k - 1) * 0.0148
        width = 0.045 + 0.045 * np.sin(np.pi * min(k, 9) / 18.0) * patient.shoulder_scale * 1.15
        for s in (-1, 1):
            side = "RL"[s > 0]
            post = np.array(
                [
                    pt(s * 0.012, y0),
                    pt(s * width * 0.6, y0 - 0.004),
                    pt(s * width, y0 + 0.012),
                    pt(s * width * 1.02, y0 + 0.03),
                ]
            )
            canvas.polyline(post, 3.6 * mm, bone * 0.8, 0.85, 22 * build)
            if k <= 10:
                end_x = 0.018 if k <= 7 else 0.045
                ant = np.array(
                    [
                        pt(s * width * 1.02, y0 + 0.03),
                        pt(s * width * 0.8, y0 + 0.05),
                        pt(s * end_x, y0 + 0.06 + 0.002 * k),
                    ]
                )
                canvas.polyline(ant, 3.4 * mm, bone * 0.6, 0.12, 22 * build)
                sk.sites.append(
                    Site(f"rib{k}_ant_{side}", "rib", side, pt(s * width * 0.75, y0 + 0.052), 0.12, 22 * build, index=k)
                )
            for j, frac in enumerate((0.55, 1.0)):
                sk.sites.append(
                    Site(
                        f"rib{k}_post{j}_{side}",
                        "rib",
                        side,
                        pt(s * width * frac, y0 + (0.0 if j == 0 else 0.015)),
                        0.85,
                        22 * build,
                        index=k,
                    )
                )
            sk.sites.append(
                Site(f"rib{k}_lat_{side}", "rib", side, pt(s * width * 1.02, y0 + 0.025), 0.5, 22 * build, index=k)
            )

    # Sternum and sternoclavicular joints, clavicles, scapulae.
    canvas.polyline(np.array([pt(0, 0.19), pt(0, 0.21), pt(0, 0.285)]), 9 * mm, bone * 0.8, 0.05, 22 * build)
    sk.sites.append(Site("sternum_body", "sternum", "M", pt(0, 0.24), 0.05, 22 * build))
    shoulder_x = 0.115 * patient.shoulder_scale
    for s in (-1, 1):
        side = "RL"[s > 0]
        canvas.polyline(
            np.array([pt(s * 0.014, 0.186), pt(s * 0.06, 0.181), pt(s * shoulder_x * 0.95, 0.172)]),
            4.5 * mm,
            bone * 0.9,
            0.1,
            16,
        )
        sk.sites.append(Site(f"sc_joint_{side}", "joint", side, pt(s * 0.015, 0.187), 0.1, 18))
        sk.sites.append(Site(f"ac_joint_{side}", "joint", side, pt(s * shoulder_x * 0.93, 0.172), 0.4, 14))
        canvas.ellipse(pt(s * 0.078, 0.225), (0.05 * h, 0.028 * h), bone * 0.18, 0.85, 22 * build, angle=s * 0.15)
        canvas.polyline(np.array([pt(s * 0.055, 0.19), pt(s * 0.07, 0.27)]), 4 * mm, bone * 0.9, 0.85, 22)
        sk.sites.append(Site(f"scapula_{side}", "scapula", side, pt(s * 0.08, 0.23), 0.85, 22 * build))

    # Arms: humeral head, humerus, forearm, hand; the injection arm is picked here.
    sk.injection_arm = "RL"[int(rng.random() < 0.4)]
    for arm, (s, abduction) in enumerate(((-1, patient.arm_abduction[0]), (1, patient.arm_abduction[1]))):
        side = "RL"[s > 0]
        head = pt(s * shoulder_x, 0.195)
        canvas.ellipse(head, (14 * mm, 13 * mm), bone * 1.1, 0.5, 14)
        sk.sites.append(Site(f"shoulder_{side}", "joint", side, head, 0.5, 14))
        forearm = abduction * 1.3 if patient.forearm_angle is None else patient.forearm_angle[arm]
        elbow_f = (s * (shoulder_x + 0.186 * np.sin(abduction)), 0.195 + 0.186 * np.cos(abduction))
        wrist_f = (elbow_f[0] + s * 0.146 * np.sin(forearm), elbow_f[1] + 0.146 * np.cos(forearm))
        hand_f = (wrist_f[0] + s * 0.07 * np.sin(forearm), wrist_f[1] + 0.07 * np.cos(forearm))
        canvas.ellipse(pt(*elbow_f), (0.018 * h, 0.034 * h), soft, 0.5, 9)  # soft tissue of arm
        canvas.capsule(head, pt(*elbow_f), 0.028 * h * build, soft, 0.5, 9)
        canvas.capsule(pt(*elbow_f), pt(*wrist_f), 0.022 * h * build, soft, 0.5, 7)
        canvas.capsule(pt(s * shoulder_x, 0.205), pt(*elbow_f), 7 * mm, bone * 0.75, 0.5, 9)
        canvas.ellipse(pt(*elbow_f), (11 * mm, 14 * mm), bone * 0.55, 0.5, 9)
        sk.sites.append(Site(f"humerus_{side}", "long_bone", side, pt(s * (shoulder_x + 0.02), 0.23), 0.5, 9))
        sk.sites.append(Site(f"elbow_{side}", "joint", side, pt(*elbow_f), 0.5, 9))
        for dx in (-0.005, 0.005):
            canvas.capsule(
                pt(elbow_f[0] + dx, elbow_f[1]), pt(wrist_f[0] + dx, wrist_f[1]), 4.5 * mm, bone * 0.6, 0.5, 7
            )
        canvas.capsule(pt(*wrist_f), pt(*hand_f), 12 * mm, bone * 0.5, 0.5, 4)
        sk.sites.append(Site(f"wrist_{side}", "joint", side, pt(*wrist_f), 0.5, 5))
        if patient.is_child:
            canvas.capsule(
                pt(s * shoulder_x - 12 * mm / h, 0.212),
                pt(s * shoulder_x + 12 * mm / h, 0.212),
                2.5 * mm,
                bone * 3.0,
                0.5,
                9,
            )
            canvas.capsule(
                pt(wrist_f[0] - 0.008, wrist_f[1] - 0.006),
                pt(wrist_f[0] + 0.008, wrist_f[1] - 0.006),
                2.5 * mm,
                bone * 3.0,
                0.5,
                6,
            )
        if side == sk.injection_arm and rng.random() < hot_spots.injection_probability:
            where = elbow_f if rng.random() < 0.6 else hand_f
            canvas.ellipse(
                pt(where[0] + rng.normal(0, 0.004), where[1] + rng.normal(0, 0.006)),
                (rng.uniform(4, 9) * mm,) * 2,
                bone * rng.uniform(*hot_spots.injection_ratio),
                0.2,
                8,
            )

    # Legs: femoral head, neck and trochanter, femur, knee, patella, tibia and fibula, feet.
    for s in (-1, 1):
        side = "RL"[s > 0]
        hip, troch = pt(s * 0.052, 0.487), pt(s * 0.085, 0.505)
        knee_f, ankle_f = (s * 0.047, 0.72), (s * 0.043, 0.955)
        canvas.ellipse(hip, (13 * mm, 13 * mm), bone * 1.1, 0.5, 20 * build)
        canvas.capsule(hip, troch, 9 * mm, bone * 0.9, 0.5, 20 * build)
        canvas.capsule(troch, pt(*knee_f), 10 * mm, bone * 0.75, 0.5, 14 * build)
        canvas.ellipse(pt(*knee_f), (18 * mm, 25 * mm), bone * 0.55, 0.5, 12)
        canvas.ellipse(pt(knee_f[0], knee_f[1] - 0.004), (11 * mm, 10 * mm), bone * 0.6, 0.05, 12)
        canvas.capsule(pt(knee_f[0], knee_f[1] + 0.012), pt(*ankle_f), 9 * mm, bone * 0.7, 0.45, 10)
        canvas.capsule(
            pt(knee_f[0] + s * 0.016, knee_f[1] + 0.018),
            pt(ankle_f[0] + s * 0.014, ankle_f[1]),
            3.5 * mm,
            bone * 0.5,
            0.6,
            10,
        )
        canvas.capsule(pt(*ankle_f), pt(ankle_f[0] + s * 0.008, 0.99), 11 * mm, bone * 0.35, 0.5, 8)
        sk.sites.append(Site(f"hip_{side}", "joint", side, hip, 0.5, 20 * build))
        sk.sites.append(Site(f"femur_{side}", "long_bone", side, pt(s * 0.075, 0.54), 0.5, 14 * build))
        sk.sites.append(Site(f"knee_{side}", "joint", side, pt(*knee_f), 0.5, 12))
        sk.sites.append(Site(f"ankle_{side}", "joint", side, pt(*ankle_f), 0.5, 8))
        if patient.is_child:
            for yf, w in ((knee_f[1] - 0.012, 18), (knee_f[1] + 0.016, 15), (ankle_f[1] - 0.01, 10)):
                canvas.capsule(
                    pt(knee_f[0] - w * mm / h, yf), pt(knee_f[0] + w * mm / h, yf), 2.5 * mm, bone * 3.0, 0.5, 12
                )

    # Chest crop as the thesis's readers framed it: shoulders to the lower ribs, both humeral heads in.
    r_top, _ = pt(0, 0.155)
    r_bottom, _ = pt(0, 0.385)
    _, c_left = pt(-shoulder_x - 0.022, 0.2)
    _, c_right = pt(shoulder_x + 0.022, 0.2)
    sk.chest_box = (max(c_left, 0.0), max(r_top, 0.0), min(c_right, cols - 1.0), min(r_bottom, rows - 1.0))
    return sk
