//! The simulator's truth sky: a galaxy and foreground stars as a list of analytic 2-D Gaussians in
//! the gnomonic tangent plane about the galaxy centre, and the renderer that draws the
//! PSF-convolved, pixel-integrated sky into any pixel grid given its exact pixel <-> tangent-plane
//! mapping. Because every component is a Gaussian, the total flux of the truth is exact and PSF
//! convolution and pixel integration are analytic (covariances add).
//!
//! Coordinates: tangent-plane (xi, eta) in arcsec, xi towards east, eta towards north; images are
//! `[y, x]` with 0-based pixel centres. Fluxes are integrated flux densities in Jy; images are
//! surface brightness in MJy/sr.
//!
//! What does not live here: WCS and distortion models (the caller passes closures), detector
//! effects (`kernels::detector`), file output and configuration.

use ndarray::{ArrayViewMut2, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

/// Solid angle of one square arcsec, in steradian.
pub const ARCSEC2_SR: f64 = (PI / 648_000.0) * (PI / 648_000.0);

/// Gaussian FWHM / sigma.
const FWHM_PER_SIGMA: f64 = 2.354_820_045_030_949_3;

/// Components whose PSF-convolved major-axis sigma exceeds this many pixels are evaluated at the
/// exact tangent-plane position of every pixel; smaller ones are splatted with a local Jacobian.
const BIG_SIGMA_PX: f64 = 8.0;

/// Components are drawn out to this many sigma (q = d^T C^-1 d <= N_SIGMA^2). The flux outside
/// a 6-sigma ellipse is exp(-18) = 1.5e-8 of the total.
const N_SIGMA: f64 = 6.0;

/// Below this minor-axis sigma (pixels) the pixel sampling of a Gaussian no longer sums to its
/// integral (aliasing error ~ 2 exp(-2 pi^2 sigma^2)), so splats are normalised by their discrete sum.
const DISCRETE_NORM_SIGMA_PX: f64 = 1.5;

/// Rows per rayon work item in `render`.
const ROW_BLOCK: usize = 16;

/// Mixture-of-Gaussians approximation of a 2-D exponential profile exp(-r/h), in the style of
/// Hogg & Lang (2013, PASP 125, 719): amplitudes (fractions of the total flux) and variances in
/// units of the scale length squared (h^2). Refit for tessera by least squares of the radial
/// profile over 0 < r < 8 h (area weighted): profile errors < 0.5% for r < 4 h, < 2% at 6 h; the
/// mixture holds 99.8% of the flux of the untruncated exponential and then falls off faster,
/// which keeps the edges of the field empty.
const EXP_MOG_AMP: [f64; 6] = [0.000_579_45, 0.007_480_18, 0.050_352_06, 0.208_706_36, 0.451_197_80, 0.281_684_15];
/// Variances of [`EXP_MOG_AMP`] in h^2.
const EXP_MOG_VAR_H2: [f64; 6] = [0.006_955_49, 0.051_150_37, 0.223_909_07, 0.765_377_27, 2.256_297_88, 6.159_287_71];

/// What a component represents (for bookkeeping, catalogues and tests; rendering treats all alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ComponentKind {
    /// One Gaussian of the exponential-disk mixture.
    Disk,
    /// Part of the central bulge.
    Bulge,
    /// One elongated piece of a spiral arm.
    Arm,
    /// A compact star-forming region (HII region) along an arm.
    Clump,
    /// A foreground star (point source).
    Star,
    /// The galaxy's nucleus (point source).
    Nucleus,
}

/// One analytic sky component: a 2-D Gaussian in the tangent plane.
///
/// Surface brightness at (xi, eta): `flux_jy * 1e-6 * N(xi, eta; mean, cov) / ARCSEC2_SR` MJy/sr,
/// where N is the normalised Gaussian density per arcsec^2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gaussian {
    /// Centre, tangent-plane arcsec towards east.
    pub xi_arcsec: f64,
    /// Centre, tangent-plane arcsec towards north.
    pub eta_arcsec: f64,
    /// Intrinsic covariance `[[xi xi, xi eta], [eta xi, eta eta]]` in arcsec^2 (zero for point sources).
    pub cov_arcsec2: [[f64; 2]; 2],
    /// Integrated flux density in Jy in the scene's band.
    pub flux_jy: f64,
    /// What this component represents.
    pub kind: ComponentKind,
}

impl Gaussian {
    /// True for point sources (stars and the nucleus), which have zero intrinsic covariance.
    pub fn is_point(&self) -> bool {
        matches!(self.kind, ComponentKind::Star | ComponentKind::Nucleus)
    }

    /// Peak surface brightness in MJy/sr after convolution with a Gaussian PSF of FWHM
    /// `psf_fwhm_arcsec` (no pixel integration). Infinite for a point source and a zero PSF.
    pub fn peak_sb_mjysr(&self, psf_fwhm_arcsec: f64) -> f64 {
        let c = add_iso(self.cov_arcsec2, psf_var_arcsec2(psf_fwhm_arcsec));
        self.flux_jy * 1e-6 / (2.0 * PI * det(c).sqrt() * ARCSEC2_SR)
    }
}

/// Parameters of the simulated scene. Fluxes are specified at reference wavelengths (2 µm for
/// starlight, 7.7 µm for dust/PAH emission) and scaled to `band_um` with [`stellar_sed`] and
/// [`dust_sed`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SceneParams {
    /// Seed of every random draw; the scene is a pure function of these parameters.
    pub seed: u64,
    /// Half size of the surveyed field in arcsec (square, centred on the galaxy); stars fill it.
    pub field_half_width_arcsec: f64,
    /// Wavelength of the band in µm (e.g. 2.0 for F200W, 7.7 for F770W).
    pub band_um: f64,
    /// Exponential scale length of the disk as a fraction of `field_half_width_arcsec`.
    pub disk_scale_frac: f64,
    /// Disk inclination in degrees (0 = face on).
    pub inclination_deg: f64,
    /// Position angle of the disk's major axis in degrees, east of north.
    pub pa_deg: f64,
    /// Intrinsic thickness of the disk (minor/major axis ratio seen edge-on).
    pub disk_thickness_ratio: f64,
    /// Observed central surface brightness of the stellar disk at 2 µm, MJy/sr.
    pub disk_star_sb_mjysr_2um: f64,
    /// Observed central surface brightness of the dust/PAH disk at 7.7 µm, MJy/sr.
    pub disk_dust_sb_mjysr_7p7um: f64,
    /// Bulge flux as a fraction of the stellar disk flux (no dust).
    pub bulge_flux_frac: f64,
    /// Bulge sigma as a fraction of the disk scale length.
    pub bulge_sigma_frac: f64,
    /// Number of spiral arms.
    pub n_arms: usize,
    /// Pitch angle of the logarithmic spirals, degrees.
    pub arm_pitch_deg: f64,
    /// Gaussians per arm.
    pub arm_blobs_per_arm: usize,
    /// Inner radius of the arms in disk scale lengths.
    pub arm_r_inner_frac: f64,
    /// Outer radius of the arms in disk scale lengths.
    pub arm_r_outer_frac: f64,
    /// Sigma across an arm in disk scale lengths.
    pub arm_width_frac: f64,
    /// Total stellar flux of all arms as a fraction of the stellar disk flux.
    pub arm_star_frac: f64,
    /// Total dust flux of all arms as a fraction of the dust disk flux.
    pub arm_dust_frac: f64,
    /// Number of clumps (HII regions) along the arms.
    pub n_clumps: usize,
    /// Median intrinsic sigma of a clump, arcsec.
    pub clump_sigma_arcsec: f64,
    /// Total stellar flux of the clumps as a fraction of the stellar disk flux.
    pub clump_star_frac: f64,
    /// Total dust flux of the clumps as a fraction of the dust disk flux.
    pub clump_dust_frac: f64,
    /// Stellar flux of the nucleus at 2 µm, Jy.
    pub nucleus_flux_jy_2um: f64,
    /// Hot-dust flux of the nucleus at 7.7 µm, Jy.
    pub nucleus_dust_flux_jy_7p7um: f64,
    /// Number of foreground stars spread uniformly over the field.
    pub n_stars: usize,
    /// Faintest star at 2 µm, Jy.
    pub star_flux_min_jy_2um: f64,
    /// Brightest star at 2 µm, Jy.
    pub star_flux_max_jy_2um: f64,
    /// Slope of the cumulative star counts, N(>F) ∝ F^-slope.
    pub star_count_slope: f64,
}

impl Default for SceneParams {
    fn default() -> Self {
        SceneParams {
            seed: 1,
            field_half_width_arcsec: 120.0,
            band_um: 7.7,
            disk_scale_frac: 0.12,
            inclination_deg: 40.0,
            pa_deg: 30.0,
            disk_thickness_ratio: 0.2,
            disk_star_sb_mjysr_2um: 2.0,
            disk_dust_sb_mjysr_7p7um: 12.0,
            bulge_flux_frac: 0.15,
            bulge_sigma_frac: 0.15,
            n_arms: 2,
            arm_pitch_deg: 18.0,
            arm_blobs_per_arm: 150,
            arm_r_inner_frac: 0.4,
            arm_r_outer_frac: 4.5,
            arm_width_frac: 0.06,
            arm_star_frac: 0.10,
            arm_dust_frac: 0.40,
            n_clumps: 300,
            clump_sigma_arcsec: 0.2,
            clump_star_frac: 0.03,
            clump_dust_frac: 0.30,
            nucleus_flux_jy_2um: 0.01,
            nucleus_dust_flux_jy_7p7um: 0.03,
            n_stars: 400,
            star_flux_min_jy_2um: 3e-6,
            star_flux_max_jy_2um: 1e-2,
            star_count_slope: 0.5,
        }
    }
}

/// Starlight spectrum, F_nu relative to its value at 2 µm: flat below 2 µm (the old-star peak
/// near 1.6 µm), a Rayleigh-Jeans-like fall F_nu ∝ λ^-1.8 beyond.
pub fn stellar_sed(band_um: f64) -> f64 {
    if band_um <= 2.0 {
        1.0
    } else {
        (band_um / 2.0).powf(-1.8)
    }
}

/// Dust emission spectrum, F_nu relative to the diffuse ISM at 7.7 µm: the PAH features at 3.3,
/// 7.7, 8.6, 11.3 and 12.7 µm as Gaussians in wavelength, on a warm-dust continuum ∝ λ^2 with a
/// Wien cut-off below ~4 µm. `warm` scales the continuum (1 for the diffuse disk, ~3 for HII regions
/// whose hot dust makes them bright at 21 µm).
pub fn dust_sed(band_um: f64, warm: f64) -> f64 {
    let l = band_um.max(0.1);
    let cont = 0.15 * warm * (l / 7.7).powi(2) * (-(4.0 / l).powi(4)).exp();
    const FEATURES: [(f64, f64, f64); 5] =
        [(3.3, 0.02, 0.05), (7.7, 0.85, 0.45), (8.6, 0.20, 0.20), (11.3, 0.55, 0.25), (12.7, 0.20, 0.20)];
    let feat: f64 = FEATURES.iter().map(|&(c, a, w)| a * (-0.5 * ((l - c) / w).powi(2)).exp()).sum();
    cont + feat
}

/// Hot dust of an active nucleus, F_nu relative to 7.7 µm: ∝ λ with a cut-off below ~1.5 µm.
fn hot_dust_sed(band_um: f64) -> f64 {
    let l = band_um.max(0.1);
    (l / 7.7) * (-(1.5 / l).powi(4)).exp() / (-(1.5f64 / 7.7).powi(4)).exp()
}

/// The truth sky: a flat list of Gaussian components.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Scene {
    /// All components, in no particular order.
    pub components: Vec<Gaussian>,
}

impl Scene {
    /// Sum of the integrated fluxes of all components, Jy.
    pub fn total_flux_jy(&self) -> f64 {
        self.components.iter().map(|g| g.flux_jy).sum()
    }

    /// The point sources: foreground stars and the nucleus.
    pub fn stars(&self) -> impl Iterator<Item = &Gaussian> {
        self.components.iter().filter(|g| g.is_point())
    }
}

/// A random stream for one part of the scene, so that e.g. changing `n_stars` leaves the arms alone.
fn part_rng(seed: u64, part: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(part);
    r
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}

/// Inverse-CDF draw from a power law truncated to [lo, hi] with cumulative N(>F) ∝ F^-slope.
fn truncated_pareto(rng: &mut ChaCha8Rng, lo: f64, hi: f64, slope: f64) -> f64 {
    let u: f64 = rng.random();
    let r = (lo / hi).powf(slope);
    lo * (1.0 - u * (1.0 - r)).powf(-1.0 / slope)
}

/// Build the scene. Deterministic in `p` (all randomness from `p.seed`).
///
/// The galaxy (centred at the tangent point) is an exponential disk approximated by a 6-Gaussian
/// mixture (Hogg & Lang 2013 style, see [`EXP_MOG_AMP`]), a two-Gaussian bulge, `n_arms`
/// logarithmic spiral arms made of chains of elongated Gaussians whose brightness falls with
/// radius, clumps (HII regions) scattered along the arms with a power-law luminosity function
/// (dN/dL ∝ L^-1.8), and a point-source nucleus. Stars are uniform over the field with a truncated
/// power-law flux distribution. Each component's flux is its stellar part times [`stellar_sed`] plus
/// its dust part times [`dust_sed`] at `band_um`.
pub fn make_scene(p: &SceneParams) -> Scene {
    let mut comps = Vec::new();
    let h = p.disk_scale_frac * p.field_half_width_arcsec;
    let inc = p.inclination_deg.to_radians();
    let pa = p.pa_deg.to_radians();
    let axis_ratio = (inc.cos().powi(2) + (p.disk_thickness_ratio * inc.sin()).powi(2)).sqrt();
    // Sky directions of the disk's major (u) and minor (w) axes, (xi, eta).
    let u = [pa.sin(), pa.cos()];
    let w = [pa.cos(), -pa.sin()];
    // Disk plane (x_d along the major axis, y_d along the minor axis) -> sky: columns u, q*w.
    let m = [[u[0], axis_ratio * w[0]], [u[1], axis_ratio * w[1]]];
    let to_sky = |xd: f64, yd: f64| (m[0][0] * xd + m[0][1] * yd, m[1][0] * xd + m[1][1] * yd);
    let cov_to_sky = |c: [[f64; 2]; 2]| mat_mul3(m, c, transpose(m));

    let star_sed = stellar_sed(p.band_um);
    let diffuse_sed = dust_sed(p.band_um, 1.0);
    let sb_to_flux = |sb_mjysr: f64| sb_mjysr * 1e6 * 2.0 * PI * h * h * axis_ratio * ARCSEC2_SR;
    let disk_star_jy = sb_to_flux(p.disk_star_sb_mjysr_2um);
    let disk_dust_jy = sb_to_flux(p.disk_dust_sb_mjysr_7p7um);

    // Exponential disk.
    for (a, v) in EXP_MOG_AMP.iter().zip(EXP_MOG_VAR_H2) {
        let var = v * h * h;
        comps.push(Gaussian {
            xi_arcsec: 0.0,
            eta_arcsec: 0.0,
            cov_arcsec2: cov_to_sky([[var, 0.0], [0.0, var]]),
            flux_jy: a * (disk_star_jy * star_sed + disk_dust_jy * diffuse_sed),
            kind: ComponentKind::Disk,
        });
    }

    // Bulge: rounder than the disk, two concentric Gaussians (a steeper-than-Gaussian profile).
    let bulge_q = 0.8;
    let bulge_m = [[u[0], bulge_q * w[0]], [u[1], bulge_q * w[1]]];
    for (frac, s) in [(0.4, 0.5), (0.6, 1.2)] {
        let var = (s * p.bulge_sigma_frac * h).powi(2);
        comps.push(Gaussian {
            xi_arcsec: 0.0,
            eta_arcsec: 0.0,
            cov_arcsec2: mat_mul3(bulge_m, [[var, 0.0], [0.0, var]], transpose(bulge_m)),
            flux_jy: frac * p.bulge_flux_frac * disk_star_jy * star_sed,
            kind: ComponentKind::Bulge,
        });
    }

    // Spiral arms: r(theta) = r_in exp((theta - theta_k) tan(pitch)); equal steps in r are equal
    // steps in arc length. Per-blob weight ∝ exp(-r / 1.5h) with 0.3 (ln) scatter.
    let pitch = p.arm_pitch_deg.to_radians();
    let r_in = p.arm_r_inner_frac * h;
    let r_out = p.arm_r_outer_frac * h;
    let arm_decay = 1.5 * h;
    let sig_across = p.arm_width_frac * h;
    let arm_point = |k: usize, r: f64| {
        let theta = (r / r_in).ln() / pitch.tan() + 2.0 * PI * k as f64 / p.n_arms.max(1) as f64;
        // Tangent: azimuthal direction rotated towards radial by the pitch angle.
        let er = [theta.cos(), theta.sin()];
        let et = [-theta.sin(), theta.cos()];
        let t = [pitch.cos() * et[0] + pitch.sin() * er[0], pitch.cos() * et[1] + pitch.sin() * er[1]];
        ([r * er[0], r * er[1]], t)
    };
    let nb = p.arm_blobs_per_arm;
    if p.n_arms > 0 && nb > 0 {
        let mut rng = part_rng(p.seed, 1);
        let dr = if nb > 1 { (r_out - r_in) / (nb - 1) as f64 } else { 0.0 };
        let spacing = dr / pitch.sin().max(1e-3);
        let sig_along = (1.5 * spacing).max(sig_across);
        let mut arm = Vec::with_capacity(p.n_arms * nb);
        let mut wsum = 0.0;
        for k in 0..p.n_arms {
            for i in 0..nb {
                let r = r_in + dr * i as f64;
                let (c, t) = arm_point(k, r);
                let n = [-t[1], t[0]];
                let off = 0.3 * sig_across * normal(&mut rng);
                let (xi, eta) = to_sky(c[0] + off * n[0], c[1] + off * n[1]);
                let cd = [
                    [
                        sig_along.powi(2) * t[0] * t[0] + sig_across.powi(2) * n[0] * n[0],
                        sig_along.powi(2) * t[0] * t[1] + sig_across.powi(2) * n[0] * n[1],
                    ],
                    [
                        sig_along.powi(2) * t[1] * t[0] + sig_across.powi(2) * n[1] * n[0],
                        sig_along.powi(2) * t[1] * t[1] + sig_across.powi(2) * n[1] * n[1],
                    ],
                ];
                let wgt = (-r / arm_decay).exp() * (0.3 * normal(&mut rng)).exp();
                wsum += wgt;
                arm.push((xi, eta, cov_to_sky(cd), wgt));
            }
        }
        let arm_jy = p.arm_star_frac * disk_star_jy * star_sed + p.arm_dust_frac * disk_dust_jy * diffuse_sed;
        for (xi, eta, c, wgt) in arm {
            comps.push(Gaussian {
                xi_arcsec: xi,
                eta_arcsec: eta,
                cov_arcsec2: c,
                flux_jy: arm_jy * wgt / wsum,
                kind: ComponentKind::Arm,
            });
        }
    }

    // Clumps along the arms: radius from the arm's exponential light distribution, offset across
    // the arm by ~1.5 arm widths, round-ish with lognormal sizes, warm dust.
    if p.n_arms > 0 && p.n_clumps > 0 {
        let mut rng = part_rng(p.seed, 2);
        let mut raw = Vec::with_capacity(p.n_clumps);
        let mut wsum = 0.0;
        let e_in = (-r_in / arm_decay).exp();
        let e_out = (-r_out / arm_decay).exp();
        for _ in 0..p.n_clumps {
            let k = rng.random_range(0..p.n_arms);
            let uu: f64 = rng.random();
            let r = -arm_decay * (e_in - uu * (e_in - e_out)).ln();
            let (c, t) = arm_point(k, r);
            let n = [-t[1], t[0]];
            let a = 1.5 * sig_across * normal(&mut rng);
            let b = 0.5 * sig_across * normal(&mut rng);
            let (xi, eta) = to_sky(c[0] + a * n[0] + b * t[0], c[1] + a * n[1] + b * t[1]);
            let s = p.clump_sigma_arcsec * (0.4 * normal(&mut rng)).exp();
            let q: f64 = rng.random_range(0.7..1.0);
            let ang: f64 = rng.random_range(0.0..PI);
            let (ca, sa) = (ang.cos(), ang.sin());
            let (s1, s2) = (s * s, (s * q).powi(2));
            let cov = [
                [s1 * ca * ca + s2 * sa * sa, (s1 - s2) * ca * sa],
                [(s1 - s2) * ca * sa, s1 * sa * sa + s2 * ca * ca],
            ];
            // HII-region luminosity function dN/dL ∝ L^-1.8 over two decades.
            let wgt = truncated_pareto(&mut rng, 1.0, 100.0, 0.8);
            wsum += wgt;
            raw.push((xi, eta, cov, wgt));
        }
        let clump_jy =
            p.clump_star_frac * disk_star_jy * star_sed + p.clump_dust_frac * disk_dust_jy * dust_sed(p.band_um, 3.0);
        for (xi, eta, cov, wgt) in raw {
            comps.push(Gaussian {
                xi_arcsec: xi,
                eta_arcsec: eta,
                cov_arcsec2: cov,
                flux_jy: clump_jy * wgt / wsum,
                kind: ComponentKind::Clump,
            });
        }
    }

    // Nucleus.
    let nuc = p.nucleus_flux_jy_2um * star_sed + p.nucleus_dust_flux_jy_7p7um * hot_dust_sed(p.band_um);
    if nuc > 0.0 {
        comps.push(Gaussian {
            xi_arcsec: 0.0,
            eta_arcsec: 0.0,
            cov_arcsec2: [[0.0; 2]; 2],
            flux_jy: nuc,
            kind: ComponentKind::Nucleus,
        });
    }

    // Foreground stars.
    let mut rng = part_rng(p.seed, 3);
    let wf = p.field_half_width_arcsec;
    for _ in 0..p.n_stars {
        let xi = rng.random_range(-wf..wf);
        let eta = rng.random_range(-wf..wf);
        let f = truncated_pareto(&mut rng, p.star_flux_min_jy_2um, p.star_flux_max_jy_2um, p.star_count_slope);
        comps.push(Gaussian {
            xi_arcsec: xi,
            eta_arcsec: eta,
            cov_arcsec2: [[0.0; 2]; 2],
            flux_jy: f * star_sed,
            kind: ComponentKind::Star,
        });
    }
    Scene { components: comps }
}

/// How the scene is observed by one image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RenderParams {
    /// FWHM of the (Gaussian) PSF, arcsec; 0 renders the intrinsic sky.
    pub psf_fwhm_arcsec: f64,
    /// Integrate over the pixel area (adds the box variance 1/12 px^2 along each pixel axis,
    /// mapped to the sky); false samples the surface brightness at pixel centres.
    pub pixel_integrate: bool,
}

impl Default for RenderParams {
    fn default() -> Self {
        RenderParams { psf_fwhm_arcsec: 0.0, pixel_integrate: true }
    }
}

// ---- 2x2 symmetric-matrix helpers ------------------------------------------------------------

type M2 = [[f64; 2]; 2];

fn det(a: M2) -> f64 {
    a[0][0] * a[1][1] - a[0][1] * a[1][0]
}

fn inv(a: M2) -> M2 {
    let d = det(a);
    [[a[1][1] / d, -a[0][1] / d], [-a[1][0] / d, a[0][0] / d]]
}

fn transpose(a: M2) -> M2 {
    [[a[0][0], a[1][0]], [a[0][1], a[1][1]]]
}

fn mat_mul(a: M2, b: M2) -> M2 {
    [
        [a[0][0] * b[0][0] + a[0][1] * b[1][0], a[0][0] * b[0][1] + a[0][1] * b[1][1]],
        [a[1][0] * b[0][0] + a[1][1] * b[1][0], a[1][0] * b[0][1] + a[1][1] * b[1][1]],
    ]
}

fn mat_mul3(a: M2, b: M2, c: M2) -> M2 {
    mat_mul(mat_mul(a, b), c)
}

fn add(a: M2, b: M2) -> M2 {
    [[a[0][0] + b[0][0], a[0][1] + b[0][1]], [a[1][0] + b[1][0], a[1][1] + b[1][1]]]
}

fn add_iso(a: M2, v: f64) -> M2 {
    add(a, [[v, 0.0], [0.0, v]])
}

fn max_eig(a: M2) -> f64 {
    let m = 0.5 * (a[0][0] + a[1][1]);
    let d = (0.25 * (a[0][0] - a[1][1]).powi(2) + a[0][1] * a[1][0]).max(0.0).sqrt();
    m + d
}

fn min_eig(a: M2) -> f64 {
    let m = 0.5 * (a[0][0] + a[1][1]);
    let d = (0.25 * (a[0][0] - a[1][1]).powi(2) + a[0][1] * a[1][0]).max(0.0).sqrt();
    m - d
}

fn psf_var_arcsec2(psf_fwhm_arcsec: f64) -> f64 {
    (psf_fwhm_arcsec / FWHM_PER_SIGMA).powi(2)
}

/// Jacobian d(xi, eta)/d(x, y) in arcsec per pixel at pixel (x, y), by central differences.
fn jacobian(p2t: &(dyn Fn(f64, f64) -> (f64, f64) + Sync), x: f64, y: f64) -> M2 {
    let h = 0.5;
    let (xa, ya) = p2t(x + h, y);
    let (xb, yb) = p2t(x - h, y);
    let (xc, yc) = p2t(x, y + h);
    let (xd, yd) = p2t(x, y - h);
    [[(xa - xb) / (2.0 * h), (xc - xd) / (2.0 * h)], [(ya - yb) / (2.0 * h), (yc - yd) / (2.0 * h)]]
}

// ---- rendering -------------------------------------------------------------------------------

/// One component prepared for drawing: a Gaussian exp(-q/2) * `norm_mjysr` with
/// q = ia du^2 + 2 ib du dv + ic dv^2, evaluated either in pixel space (splat: u, v = x, y) or at
/// the exact tangent-plane position of each pixel (u, v = xi, eta), within a clipped pixel box.
#[derive(Debug, Clone)]
struct Prepared {
    sky: bool,
    u0: f64,
    v0: f64,
    ia: f64,
    ib: f64,
    ic: f64,
    norm_mjysr: f64,
    x_lo: usize,
    x_hi: usize,
    y_lo: usize,
    y_hi: usize,
}

/// Render the PSF-convolved scene into `out` (`[y, x]`, MJy/sr, added to what is there).
///
/// `pix_to_tan(x, y) -> (xi, eta)` maps 0-based pixel centres to tangent-plane arcsec (exact,
/// including distortion); `tan_to_pix(xi, eta) -> Option<(x, y)>` is its inverse.
///
/// Components whose PSF-convolved major-axis sigma exceeds 8 pixels are evaluated at the exact
/// tangent-plane position of every pixel of their ±6-sigma box (distortion exact); the others are
/// splatted: the centre is mapped with `tan_to_pix`, the local Jacobian of `pix_to_tan` (central
/// differences) carries the sky covariance + PSF variance to pixel space, the pixel-box variance
/// 1/12 px^2 is added per axis when `pixel_integrate`, and the Gaussian is drawn within ±6 sigma
/// clipped to the image, in MJy/sr using the local pixel solid angle |det J|. A splat's image sum
/// times its pixel solid angle equals its flux (the sampled sum is used as normaliser when the
/// minor sigma is under 1.5 px, where sampling would otherwise alias), apart from what is clipped
/// away. Components whose ±6-sigma sky box misses the image, or whose (small) centre has no pixel
/// position, are skipped. Accumulation is in f64 per row; rayon runs over blocks of rows, so the
/// result does not depend on the thread count.
///
/// Splats see the distortion only to first order: with a quadratic distortion term k (1/px) a
/// splat of sigma s px departs from the exact evaluation by ~ k s of its peak (1e-4 for k = 1e-5
/// at the 8-px threshold), symmetrically, so its flux is unaffected. Assumes the distortion
/// changes the local scale by less than ~10% across a big component's box.
pub fn render(
    scene: &Scene,
    rp: &RenderParams,
    out: ArrayViewMut2<f32>,
    pix_to_tan: &(dyn Fn(f64, f64) -> (f64, f64) + Sync),
    tan_to_pix: &(dyn Fn(f64, f64) -> Option<(f64, f64)> + Sync),
) {
    render_impl(scene, rp, out, pix_to_tan, tan_to_pix, BIG_SIGMA_PX)
}

fn render_impl(
    scene: &Scene,
    rp: &RenderParams,
    mut out: ArrayViewMut2<f32>,
    pix_to_tan: &(dyn Fn(f64, f64) -> (f64, f64) + Sync),
    tan_to_pix: &(dyn Fn(f64, f64) -> Option<(f64, f64)> + Sync),
    big_sigma_px: f64,
) {
    let (ny, nx) = out.dim();
    if ny == 0 || nx == 0 {
        return;
    }
    // Sky bounding box of the image (its border, incl. half a pixel).
    let (mut bxl, mut bxh, mut byl, mut byh) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    {
        let mut take = |x: f64, y: f64| {
            let (a, b) = pix_to_tan(x, y);
            bxl = bxl.min(a);
            bxh = bxh.max(a);
            byl = byl.min(b);
            byh = byh.max(b);
        };
        for x in 0..=nx {
            take(x as f64 - 0.5, -0.5);
            take(x as f64 - 0.5, ny as f64 - 0.5);
        }
        for y in 0..=ny {
            take(-0.5, y as f64 - 0.5);
            take(nx as f64 - 0.5, y as f64 - 0.5);
        }
    }
    let j_mid = jacobian(pix_to_tan, 0.5 * (nx as f64 - 1.0), 0.5 * (ny as f64 - 1.0));
    let psf_var = psf_var_arcsec2(rp.psf_fwhm_arcsec);
    let box_var = if rp.pixel_integrate { 1.0 / 12.0 } else { 0.0 };
    let q_max = N_SIGMA * N_SIGMA;

    let clip = |lo: f64, hi: f64, n: usize| -> Option<(usize, usize)> {
        let lo = lo.ceil().max(0.0);
        let hi = hi.floor().min(n as f64 - 1.0);
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return None;
        }
        Some((lo as usize, hi as usize))
    };

    let prepared: Vec<Prepared> = scene
        .components
        .par_iter()
        .filter_map(|g| {
            if g.flux_jy == 0.0 || !g.flux_jy.is_finite() {
                return None;
            }
            let c_sky = add_iso(g.cov_arcsec2, psf_var);
            // Cull on the sky box (pixel-box variance included with the mid-image Jacobian).
            let c_cull = add(c_sky, mat_mul3(j_mid, [[box_var, 0.0], [0.0, box_var]], transpose(j_mid)));
            let (hxi, heta) = (N_SIGMA * c_cull[0][0].sqrt(), N_SIGMA * c_cull[1][1].sqrt());
            if g.xi_arcsec + hxi < bxl
                || g.xi_arcsec - hxi > bxh
                || g.eta_arcsec + heta < byl
                || g.eta_arcsec - heta > byh
            {
                return None;
            }
            let pc = tan_to_pix(g.xi_arcsec, g.eta_arcsec).filter(|(x, y)| {
                x.is_finite()
                    && y.is_finite()
                    && *x > -(nx as f64)
                    && *x < 2.0 * nx as f64
                    && *y > -(ny as f64)
                    && *y < 2.0 * ny as f64
            });
            let j = match pc {
                Some((x, y)) => jacobian(pix_to_tan, x, y),
                None => j_mid,
            };
            let ji = inv(j);
            let mut c_pix = mat_mul3(ji, c_sky, transpose(ji));
            c_pix[0][0] += box_var;
            c_pix[1][1] += box_var;
            let big = c_pix[0][0].max(c_pix[1][1]).max(max_eig(c_pix)).sqrt() > big_sigma_px;
            match (big, pc) {
                (false, Some((x0, y0))) => {
                    let (hx, hy) = (N_SIGMA * c_pix[0][0].sqrt(), N_SIGMA * c_pix[1][1].sqrt());
                    let ic = inv(c_pix);
                    let omega_sr = det(j).abs() * ARCSEC2_SR;
                    let gauss_int = if min_eig(c_pix).sqrt() < DISCRETE_NORM_SIGMA_PX {
                        // Sampled sum over the whole unclipped ellipse.
                        let mut s = 0.0;
                        let (ylo, yhi) = ((y0 - hy).ceil() as i64, (y0 + hy).floor() as i64);
                        let (xlo, xhi) = ((x0 - hx).ceil() as i64, (x0 + hx).floor() as i64);
                        for yy in ylo..=yhi {
                            let dy = yy as f64 - y0;
                            for xx in xlo..=xhi {
                                let dx = xx as f64 - x0;
                                let q = ic[0][0] * dx * dx + 2.0 * ic[0][1] * dx * dy + ic[1][1] * dy * dy;
                                if q <= q_max {
                                    s += (-0.5 * q).exp();
                                }
                            }
                        }
                        s
                    } else {
                        2.0 * PI * det(c_pix).sqrt()
                    };
                    let (x_lo, x_hi) = clip(x0 - hx, x0 + hx, nx)?;
                    let (y_lo, y_hi) = clip(y0 - hy, y0 + hy, ny)?;
                    Some(Prepared {
                        sky: false,
                        u0: x0,
                        v0: y0,
                        ia: ic[0][0],
                        ib: ic[0][1],
                        ic: ic[1][1],
                        norm_mjysr: g.flux_jy * 1e-6 / (omega_sr * gauss_int),
                        x_lo,
                        x_hi,
                        y_lo,
                        y_hi,
                    })
                }
                (false, None) => None,
                (true, _) => {
                    // Exact per-pixel evaluation; add the pixel box variance on the sky.
                    let c = add(c_sky, mat_mul3(j, [[box_var, 0.0], [0.0, box_var]], transpose(j)));
                    let ic = inv(c);
                    let ((x_lo, x_hi), (y_lo, y_hi)) = match pc {
                        Some((x0, y0)) => {
                            let hx = 1.1 * N_SIGMA * c_pix[0][0].sqrt() + 3.0;
                            let hy = 1.1 * N_SIGMA * c_pix[1][1].sqrt() + 3.0;
                            (clip(x0 - hx, x0 + hx, nx)?, clip(y0 - hy, y0 + hy, ny)?)
                        }
                        None => ((0, nx - 1), (0, ny - 1)),
                    };
                    Some(Prepared {
                        sky: true,
                        u0: g.xi_arcsec,
                        v0: g.eta_arcsec,
                        ia: ic[0][0],
                        ib: ic[0][1],
                        ic: ic[1][1],
                        norm_mjysr: g.flux_jy * 1e-6 / (2.0 * PI * det(c).sqrt() * ARCSEC2_SR),
                        x_lo,
                        x_hi,
                        y_lo,
                        y_hi,
                    })
                }
            }
        })
        .collect();

    // Bucket components by row block.
    let n_blocks = ny.div_ceil(ROW_BLOCK);
    let mut buckets: Vec<Vec<u32>> = vec![Vec::new(); n_blocks];
    for (i, c) in prepared.iter().enumerate() {
        for b in buckets.iter_mut().take(c.y_hi / ROW_BLOCK + 1).skip(c.y_lo / ROW_BLOCK) {
            b.push(i as u32);
        }
    }

    out.axis_chunks_iter_mut(Axis(0), ROW_BLOCK).into_par_iter().zip(buckets.par_iter()).enumerate().for_each(
        |(bi, (mut block, bucket))| {
            let mut acc = vec![0.0f64; nx];
            let mut xi = vec![0.0f64; nx];
            let mut eta = vec![0.0f64; nx];
            let any_sky = bucket.iter().any(|&i| prepared[i as usize].sky);
            for (r, mut row) in block.axis_iter_mut(Axis(0)).enumerate() {
                let y = bi * ROW_BLOCK + r;
                acc.iter_mut().for_each(|a| *a = 0.0);
                if any_sky {
                    for x in 0..nx {
                        let (a, b) = pix_to_tan(x as f64, y as f64);
                        xi[x] = a;
                        eta[x] = b;
                    }
                }
                for &i in bucket {
                    let c = &prepared[i as usize];
                    if y < c.y_lo || y > c.y_hi {
                        continue;
                    }
                    render_row_component(c, y, &xi, &eta, &mut acc, q_max);
                }
                for (o, a) in row.iter_mut().zip(&acc) {
                    *o += *a as f32;
                }
            }
        },
    );
}

/// Add one prepared component to row `y` of the f64 accumulator.
fn render_row_component(c: &Prepared, y: usize, xi: &[f64], eta: &[f64], acc: &mut [f64], q_max: f64) {
    if c.sky {
        let r = c.x_lo..=c.x_hi;
        for ((a, xi), eta) in acc[r.clone()].iter_mut().zip(&xi[r.clone()]).zip(&eta[r]) {
            let du = xi - c.u0;
            let dv = eta - c.v0;
            let q = c.ia * du * du + 2.0 * c.ib * du * dv + c.ic * dv * dv;
            if q <= q_max {
                *a += c.norm_mjysr * (-0.5 * q).exp();
            }
        }
    } else {
        let dv = y as f64 - c.v0;
        let cv = c.ic * dv * dv;
        let bv = 2.0 * c.ib * dv;
        for (x, a) in (c.x_lo..).zip(acc[c.x_lo..=c.x_hi].iter_mut()) {
            let du = x as f64 - c.u0;
            let q = c.ia * du * du + bv * du + cv;
            if q <= q_max {
                *a += c.norm_mjysr * (-0.5 * q).exp();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// A plain TAN-like linear grid: pixel (x, y) -> xi = -(x - cx) * s (east to the left),
    /// eta = (y - cy) * s.
    #[allow(clippy::type_complexity)]
    fn linear(
        cx: f64,
        cy: f64,
        s: f64,
    ) -> (impl Fn(f64, f64) -> (f64, f64) + Sync, impl Fn(f64, f64) -> Option<(f64, f64)> + Sync) {
        (
            move |x: f64, y: f64| (-(x - cx) * s, (y - cy) * s),
            move |xi: f64, eta: f64| Some((cx - xi / s, cy + eta / s)),
        )
    }

    /// Mild quadratic distortion on top of the linear grid, inverted by Newton iterations.
    #[allow(clippy::type_complexity)]
    fn distorted(
        cx: f64,
        cy: f64,
        s: f64,
        k: f64,
    ) -> (impl Fn(f64, f64) -> (f64, f64) + Sync + Copy, impl Fn(f64, f64) -> Option<(f64, f64)> + Sync) {
        let fwd = move |x: f64, y: f64| {
            let (u, v) = (x - cx, y - cy);
            let (ud, vd) = (u + k * (u * u - 0.5 * v * v), v + k * 1.3 * u * v);
            (-ud * s, vd * s)
        };
        let inv = move |xi: f64, eta: f64| {
            let (mut x, mut y) = (cx - xi / s, cy + eta / s);
            for _ in 0..30 {
                let (a, b) = fwd(x, y);
                let j = jacobian(&fwd, x, y);
                let ji = inv(j);
                let (ea, eb) = (xi - a, eta - b);
                x += ji[0][0] * ea + ji[0][1] * eb;
                y += ji[1][0] * ea + ji[1][1] * eb;
            }
            Some((x, y))
        };
        (fwd, inv)
    }

    fn integral_jy(img: &Array2<f32>, p2t: &(dyn Fn(f64, f64) -> (f64, f64) + Sync)) -> f64 {
        let mut s = 0.0;
        for ((y, x), v) in img.indexed_iter() {
            let j = jacobian(p2t, x as f64, y as f64);
            s += *v as f64 * det(j).abs() * ARCSEC2_SR * 1e6;
        }
        s
    }

    fn one(g: Gaussian) -> Scene {
        Scene { components: vec![g] }
    }

    #[test]
    fn single_gaussian_integral_linear_grid() {
        let (f, i) = linear(60.0, 50.0, 0.1);
        for (cov, psf) in [([[0.0, 0.0], [0.0, 0.0]], 0.2), ([[0.09, 0.03], [0.03, 0.05]], 0.1)] {
            let sc = one(Gaussian {
                xi_arcsec: 0.37,
                eta_arcsec: -0.21,
                cov_arcsec2: cov,
                flux_jy: 0.0123,
                kind: ComponentKind::Clump,
            });
            for pix in [true, false] {
                let mut img = Array2::<f32>::zeros((100, 120));
                render(&sc, &RenderParams { psf_fwhm_arcsec: psf, pixel_integrate: pix }, img.view_mut(), &f, &i);
                let tot = integral_jy(&img, &f);
                assert!((tot / 0.0123 - 1.0).abs() < 1e-4, "integral {tot}");
            }
        }
    }

    #[test]
    fn undersampled_point_source_conserves_flux() {
        let (f, i) = linear(20.0, 20.0, 0.11);
        let sc = one(Gaussian {
            xi_arcsec: 0.05,
            eta_arcsec: 0.02,
            cov_arcsec2: [[0.0; 2]; 2],
            flux_jy: 1.0,
            kind: ComponentKind::Star,
        });
        let mut img = Array2::<f32>::zeros((40, 40));
        render(&sc, &RenderParams { psf_fwhm_arcsec: 0.05, pixel_integrate: true }, img.view_mut(), &f, &i);
        assert!((integral_jy(&img, &f) - 1.0).abs() < 1e-4);
    }

    #[test]
    fn splat_and_exact_paths_agree_near_threshold() {
        // The splat's affine approximation errs by ~ k * sigma_px of the peak for a quadratic
        // distortion coefficient k (1/px): 1e-5/px is a strong JWST-like SIP term.
        for k in [0.0, 1e-5] {
            let (f, i) = distorted(100.0, 100.0, 0.1, k);
            // sigma ~ 8 px in both axes after PSF and pixel box.
            let sc = one(Gaussian {
                xi_arcsec: 1.3,
                eta_arcsec: -0.7,
                cov_arcsec2: [[0.62, 0.1], [0.1, 0.5]],
                flux_jy: 1e-3,
                kind: ComponentKind::Arm,
            });
            let rp = RenderParams { psf_fwhm_arcsec: 0.2, pixel_integrate: true };
            let mut a = Array2::<f32>::zeros((200, 200));
            let mut b = Array2::<f32>::zeros((200, 200));
            render_impl(&sc, &rp, a.view_mut(), &f, &i, 1e9); // all splat
            render_impl(&sc, &rp, b.view_mut(), &f, &i, 0.0); // all exact
            let peak = a.iter().cloned().fold(0.0f32, f32::max) as f64;
            let maxdiff = a.iter().zip(b.iter()).map(|(p, q)| (p - q).abs() as f64).fold(0.0, f64::max);
            let tol = if k == 0.0 { 1e-5 } else { 1e-4 };
            assert!(maxdiff / peak < tol, "k={k} maxdiff/peak={}", maxdiff / peak);
            let (ta, tb) = (integral_jy(&a, &f), integral_jy(&b, &f));
            assert!((ta / tb - 1.0).abs() < 1e-4, "k={k} {ta} {tb}");
            assert!((ta / 1e-3 - 1.0).abs() < 1e-4, "k={k} {ta}");
        }
    }

    #[test]
    fn distortion_preserves_integrated_flux() {
        let (f, i) = distorted(150.0, 150.0, 0.1, 3e-5);
        let mut rng = part_rng(7, 0);
        let comps: Vec<Gaussian> = (0..40)
            .map(|n| {
                let s: f64 = rng.random_range(0.0..1.5);
                Gaussian {
                    xi_arcsec: rng.random_range(-8.0..8.0),
                    eta_arcsec: rng.random_range(-8.0..8.0),
                    cov_arcsec2: [[s * s, 0.2 * s * s], [0.2 * s * s, 0.7 * s * s]],
                    flux_jy: 1e-3 * (1.0 + n as f64),
                    kind: if s < 0.1 { ComponentKind::Star } else { ComponentKind::Clump },
                }
            })
            .collect();
        let sc = Scene { components: comps };
        let mut img = Array2::<f32>::zeros((300, 300));
        render(&sc, &RenderParams { psf_fwhm_arcsec: 0.15, pixel_integrate: true }, img.view_mut(), &f, &i);
        let tot = integral_jy(&img, &f);
        assert!((tot / sc.total_flux_jy() - 1.0).abs() < 1e-4, "{tot} vs {}", sc.total_flux_jy());
    }

    #[test]
    fn make_scene_deterministic_and_total_flux() {
        let p = SceneParams::default();
        let a = make_scene(&p);
        let b = make_scene(&p);
        assert_eq!(a, b);
        let c = make_scene(&SceneParams { seed: 2, ..p.clone() });
        assert_ne!(a, c);
        let s: f64 = a.components.iter().map(|g| g.flux_jy).sum();
        assert_eq!(a.total_flux_jy(), s);
        assert_eq!(a.stars().count(), p.n_stars + 1);
        let n_arm = a.components.iter().filter(|g| g.kind == ComponentKind::Arm).count();
        assert_eq!(n_arm, p.n_arms * p.arm_blobs_per_arm);
        assert!(a.components.iter().all(|g| g.flux_jy > 0.0 && g.flux_jy.is_finite()));
    }

    #[test]
    fn surface_brightness_scales_are_realistic() {
        // Central disk surface brightness (excluding the point-like nucleus) per band.
        let centre_sb = |band: f64| {
            let sc = make_scene(&SceneParams { band_um: band, ..Default::default() });
            let h = 0.12 * 120.0;
            sc.components
                .iter()
                .filter(|g| g.kind == ComponentKind::Disk)
                .map(|g| {
                    let d = [2.0 * h, 0.0];
                    let ic = inv(g.cov_arcsec2);
                    let q = ic[0][0] * d[0] * d[0];
                    g.flux_jy * 1e-6 * (-0.5 * q).exp() / (2.0 * PI * det(g.cov_arcsec2).sqrt() * ARCSEC2_SR)
                })
                .sum::<f64>()
        };
        let nircam = centre_sb(2.0);
        let miri = centre_sb(7.7);
        assert!(nircam > 0.05 && nircam < 2.0, "{nircam}");
        assert!(miri > 0.5 && miri < 20.0, "{miri}");
        // Stars dim toward MIRI, dust brightens.
        assert!(stellar_sed(2.0) > 10.0 * stellar_sed(10.0));
        assert!(dust_sed(7.7, 1.0) > 20.0 * dust_sed(3.0, 1.0));
    }

    #[test]
    fn whole_scene_recovers_total_flux() {
        let p = SceneParams::default();
        let sc = make_scene(&p);
        let s = 0.5;
        let n = ((2.0 * (p.field_half_width_arcsec + 4.0)) / s).ceil() as usize;
        let c = 0.5 * (n as f64 - 1.0);
        let (f, i) = linear(c, c, s);
        let mut img = Array2::<f32>::zeros((n, n));
        render(&sc, &RenderParams { psf_fwhm_arcsec: 0.8, pixel_integrate: true }, img.view_mut(), &f, &i);
        let tot = integral_jy(&img, &f);
        eprintln!("whole scene: {tot} Jy rendered, {} Jy truth", sc.total_flux_jy());
        assert!((tot / sc.total_flux_jy() - 1.0).abs() < 5e-3, "{tot} vs {}", sc.total_flux_jy());
        // The field edges are nearly empty sky.
        let edge = img.row(0).iter().map(|v| *v as f64).sum::<f64>() / n as f64;
        let centre = img[(n / 2, n / 2)] as f64;
        assert!(edge < 1e-3 * centre, "edge {edge} centre {centre}");
    }

    #[test]
    fn render_adds_to_existing_values() {
        let (f, i) = linear(10.0, 10.0, 0.1);
        let mut img = Array2::<f32>::from_elem((20, 20), 1.0);
        render(&Scene::default(), &RenderParams::default(), img.view_mut(), &f, &i);
        assert!(img.iter().all(|v| *v == 1.0));
    }
}
