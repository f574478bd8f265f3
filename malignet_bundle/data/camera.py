"""Gamma-camera model of the synthetic bone scans (generator version 2): what the camera does to the tracer.

The phantom (:mod:`malignet_bundle.data.phantom`) gives the attenuated tracer uptake of every structure
together with its depth below the anterior and the posterior skin. A planar whole-body acquisition with a
parallel-hole collimator turns that into counts in four steps, modelled here in this order:

1. **Collimator + intrinsic blur, growing with distance.** The system resolution (FWHM) of a source at
   distance ``d`` from the collimator face is ``sqrt(R_i**2 + R_g(d)**2)``: the intrinsic resolution of the
   crystal ``R_i`` (3.5–4 mm for a modern camera) and the collimator's geometric resolution
   ``R_g(d) = D (L + b + d) / L`` for holes of diameter ``D`` and length ``L``, ``b`` the distance from the
   back of the holes to the image plane in the crystal (Cherry, Sorenson & Phelps, *Physics in Nuclear
   Medicine*, 4th ed., ch. 14). The defaults (D 1.5 mm, L 35 mm, b 10 mm, R_i 3.8 mm) are those of a
   low-energy high-resolution (LEHR) collimator and give 7.3 mm at 10 cm, the 7–8 mm that vendors quote
   for LEHR at 10 cm. The distance is the source's depth in the body plus the air gap between the skin
   and the collimator; the anterior detector follows the body contour loosely, the posterior one sits under
   the table, so the two gaps differ and so do the two views: the spine is sharper on the posterior view,
   the sternum on the anterior one. Depths are grouped in layers (``layer_mm``) and each layer is blurred
   with the Gaussian of its distance. A further blur drawn per study (``extra_fwhm_mm``) is added in
   quadrature at every depth: the real reference view is far smoother than a LEHR collimator alone makes it
   (its power spectrum falls to 1 % at 0.0115 cycles/mm, the LEHR model's at ≈0.017).
2. **Scatter.** Compton-scattered photons that still fall in the energy window (15–20 % around 140 keV)
   are about 30 % of the counts of a Tc-99m planar image of the trunk (scatter fraction 0.25–0.35; Cherry et
   al. ch. 14; Buvat et al., Phys. Med. Biol. 1995). Their spatial response is far broader than the
   primary's, with a sharp core and long tails (Frey & Tsui's scatter response functions); here it is a
   mixture of two Gaussians (FWHM 30 and 100 mm). Scatter is what makes the soft-tissue glow around the
   skeleton and what spills beyond the body's outline.
3. **Room and electronic background.** A uniform low rate of counts per pixel everywhere in the field
   (natural background, other patients in the waiting area, electronic noise), tuned so that the mean
   counts and the share of zero pixels outside the body match real GE whole-body scans (0.13–0.34 counts,
   89 % zeros).
4. **Poisson sampling** of the expected counts, done by the caller
   (:func:`malignet_bundle.data.synthesize.synthesize_study`) after scaling to the study's count level.

Not modelled: septal penetration (negligible for 140 keV in LEHR), the collimator's hole pattern, energy
and linearity corrections, dead time, motion of a continuous whole-body scan (its blur along the body is
below the collimator's), depth dependence of the scatter kernel, and vendor image processing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["GammaCamera", "FWHM_PER_SIGMA"]

FWHM_PER_SIGMA = float(2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclass(frozen=True)
class GammaCamera:
    """A dual-head gamma camera with parallel-hole collimators, for planar whole-body imaging.

    Args:
        intrinsic_fwhm_mm: intrinsic resolution of the detector (crystal + photomultipliers).
        hole_diameter_mm: collimator hole diameter ``D``.
        hole_length_mm: collimator hole length ``L``.
        image_plane_mm: distance from the back of the holes to the image plane in the crystal ``b``.
        anterior_gap_mm: (low, high) range of the air gap between the anterior skin and its detector; each
            study draws one value. Body-contouring keeps it small over the trunk, larger over neck and legs.
        posterior_gap_mm: (low, high) range of the gap under the patient: table and mattress, 3–4.5 cm.
        layer_mm: thickness of the depth layers that share one blur.
        scatter_fraction: share of the detected counts that are scattered photons.
        scatter_fwhm_mm: FWHM of the Gaussians whose mixture is the scatter response.
        scatter_weights: weights of those Gaussians (normalised to 1).
        background_per_pixel: (low, high) range of the room/electronic background, counts per pixel per view;
            each study draws one value.
        extra_fwhm_mm: (low, high) range of a further Gaussian blur added in quadrature to the system
            resolution at every depth; each study draws one value. It stands for what the LEHR model leaves
            out and real whole-body images show: general-purpose collimators, detectors kept clear of head
            and feet, continuous-motion acquisition and the smoothing sites apply to the stored image. The
            default (25–45 mm) is set so that the power spectrum of the views falls off as that of a real
            GE anterior view does (:mod:`malignet_bundle.data.realism`); (0, 0) is the physics-only camera.
    """

    intrinsic_fwhm_mm: float = 3.8
    hole_diameter_mm: float = 1.5
    hole_length_mm: float = 35.0
    image_plane_mm: float = 10.0
    anterior_gap_mm: tuple[float, float] = (20.0, 60.0)
    posterior_gap_mm: tuple[float, float] = (30.0, 45.0)
    layer_mm: float = 15.0
    scatter_fraction: float = 0.3
    scatter_fwhm_mm: tuple[float, ...] = (30.0, 90.0)
    scatter_weights: tuple[float, ...] = (0.7, 0.3)
    background_per_pixel: tuple[float, float] = (0.005, 0.02)
    extra_fwhm_mm: tuple[float, float] = (25.0, 45.0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.scatter_fraction < 1.0:
            raise ValueError(f"scatter_fraction must be in [0, 1), got {self.scatter_fraction}")
        if len(self.scatter_fwhm_mm) != len(self.scatter_weights) or min(self.scatter_weights, default=0) < 0:
            raise ValueError("scatter_fwhm_mm and scatter_weights need the same length and weights >= 0")
        if self.layer_mm <= 0 or self.hole_length_mm <= 0:
            raise ValueError("layer_mm and hole_length_mm must be positive")
        if min(self.extra_fwhm_mm) < 0 or self.extra_fwhm_mm[0] > self.extra_fwhm_mm[1]:
            raise ValueError(f"extra_fwhm_mm must be a range (low, high) of values >= 0, got {self.extra_fwhm_mm}")

    def system_fwhm_mm(self, distance_mm: float | np.ndarray, extra_fwhm_mm: float = 0.0) -> float | np.ndarray:
        """System resolution (FWHM, mm) of a point source at ``distance_mm`` from the collimator face.

        Args:
            distance_mm: distance between the source and the collimator face.
            extra_fwhm_mm: the study's extra blur (drawn by :meth:`draw_geometry`).

        Returns:
            ``sqrt(intrinsic**2 + geometric**2 + extra**2)``, with the collimator's geometric resolution
            growing linearly with the distance.
        """
        geometric = (
            self.hole_diameter_mm
            * (self.hole_length_mm + self.image_plane_mm + np.asarray(distance_mm, dtype=float))
            / self.hole_length_mm
        )
        fwhm = np.sqrt(self.intrinsic_fwhm_mm**2 + geometric**2 + extra_fwhm_mm**2)
        return float(fwhm) if np.ndim(fwhm) == 0 else fwhm

    def psf_sigma_px(self, distance_mm: float, spacing_mm: float, extra_fwhm_mm: float = 0.0) -> float:
        """Standard deviation in pixels of the Gaussian point-spread function at ``distance_mm``.

        Args:
            distance_mm: distance between the source and the collimator face.
            spacing_mm: pixel size.
            extra_fwhm_mm: the study's extra blur.

        Returns:
            The PSF's sigma in pixels.
        """
        return float(self.system_fwhm_mm(distance_mm, extra_fwhm_mm)) / FWHM_PER_SIGMA / spacing_mm

    def layer_distance_mm(self, layer: int, gap_mm: float) -> float:
        """Distance from the collimator of depth layer ``layer`` (its centre) behind a skin gap of ``gap_mm``."""
        return layer * self.layer_mm + gap_mm

    def draw_geometry(self, rng: np.random.Generator) -> dict[str, float]:
        """Draw the per-study acquisition: skin gaps of both views, background rate, extra blur.

        Args:
            rng: the study's random stream.

        Returns:
            ``{"anterior_gap_mm", "posterior_gap_mm", "background_per_pixel", "extra_fwhm_mm"}``.
        """
        return {
            "anterior_gap_mm": float(rng.uniform(*self.anterior_gap_mm)),
            "posterior_gap_mm": float(rng.uniform(*self.posterior_gap_mm)),
            "background_per_pixel": float(rng.uniform(*self.background_per_pixel)),
            "extra_fwhm_mm": float(rng.uniform(*self.extra_fwhm_mm)),
        }

    def blur(self, image: np.ndarray, distance_mm: float, spacing_mm: float, extra_fwhm_mm: float = 0.0) -> np.ndarray:
        """Blur ``image`` with the PSF of a source plane at ``distance_mm``; counts leaving the field are lost.

        Args:
            image: uptake of one source plane (rows, cols).
            distance_mm: distance between that plane and the collimator face.
            spacing_mm: pixel size.
            extra_fwhm_mm: the study's extra blur.

        Returns:
            The blurred image (float32).
        """
        sigma = self.psf_sigma_px(distance_mm, spacing_mm, extra_fwhm_mm)
        return ndimage.gaussian_filter(image.astype(np.float32, copy=False), sigma, mode="constant", truncate=4.0)

    def project(
        self, layers: dict[int, np.ndarray], gap_mm: float, spacing_mm: float, extra_fwhm_mm: float = 0.0
    ) -> np.ndarray:
        """Primary (unscattered) image of a view: every depth layer blurred at its distance, summed.

        Args:
            layers: depth-layer index (depth below the skin facing this detector, in units of ``layer_mm``)
                → attenuated uptake of the sources in that layer.
            gap_mm: air gap between the skin and this detector.
            spacing_mm: pixel size.
            extra_fwhm_mm: the study's extra blur.

        Returns:
            The primary image (float32).

        Raises:
            ValueError: when ``layers`` is empty.
        """
        if not layers:
            raise ValueError("no depth layers to project: the phantom drew nothing")
        total = None
        for layer, image in sorted(layers.items()):
            blurred = self.blur(image, self.layer_distance_mm(layer, gap_mm), spacing_mm, extra_fwhm_mm)
            total = blurred if total is None else total + blurred
        return total

    def add_scatter(self, primary: np.ndarray, spacing_mm: float) -> np.ndarray:
        """Primary plus in-window scatter, so that scatter is ``scatter_fraction`` of the result's counts.

        Args:
            primary: primary image of one view.
            spacing_mm: pixel size.

        Returns:
            ``primary + SF / (1 - SF) * (scatter kernel * primary)`` (float32); counts scattered out of the
            field are lost.
        """
        if self.scatter_fraction == 0:
            return primary.astype(np.float32, copy=True)
        weights = np.asarray(self.scatter_weights, dtype=float)
        weights = weights / weights.sum()
        scatter = np.zeros_like(primary, dtype=np.float32)
        for fwhm, weight in zip(self.scatter_fwhm_mm, weights, strict=True):
            sigma = fwhm / FWHM_PER_SIGMA / spacing_mm
            scatter += weight * ndimage.gaussian_filter(primary.astype(np.float32), sigma, mode="constant")
        return primary + self.scatter_fraction / (1.0 - self.scatter_fraction) * scatter
