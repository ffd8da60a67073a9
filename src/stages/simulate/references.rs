//! The simulator's wide-field reference images for the `anchor` stage: IRAC1- and WISE1-like images
//! for NIRCam surveys, IRAC4- and WISE3-like ones for MIRI, written to `aux/<name>.fits`, and their
//! truth.
//!
//! Each reference is the JWST band's scene (galaxy and stars) times one colour ratio, rendered
//! analytically at the reference's resolution onto a north-up grid at its pixel scale covering the
//! survey plus three beams, with white noise, and a zero level of exactly 0. The colour ratio is
//! that of the diffuse disk between the two wavelengths (the scene's stellar and dust spectra).
//! One ratio for every component makes the band-to-band relation exactly linear, which is what
//! anchoring assumes ("near-IR or mid-IR intensities of the same region at different bands exhibit
//! a linear relation, on average"), so the offset it should find is defined exactly; real ratios
//! vary between disk, arms and HII regions (the paper's "outlying spur" in Figure 8), and with
//! the scene's per-component spectra the fitted intercept moves by a few 0.01 MJy/sr. The
//! references "include plenty of galaxy-free sky and therefore have well-established sky
//! background levels" (PHANGS-JWST paper, section 3.9), so the truth sky (`truth/truth_sky.fits`,
//! zero level 0) is on their scale. The offset a perfect anchoring adds to a mosaic is therefore
//! the median of (truth sky - mosaic), [`perfect_offset`].
//!
//! Resolutions and pixel scales follow the references pjpipe's PHANGS configuration uses
//! (`irac1_atgauss4`, `irac4_atgauss4`, `w1_atgauss7p5`, `w3_atgauss15`: pjpipe-algorithms.md
//! section 11); pixel scales: IRAC mosaics at 0.75" (S4G, Sheth et al. 2010), WISE at the Atlas
//! images' 1.375" (WISE All-Sky Explanatory Supplement, section II.3.a,
//! https://wise2.ipac.caltech.edu/docs/release/allsky/expsup/sec2_3.html). Noise levels are the
//! order of magnitude of the surface-brightness depths of S4G (IRAC1, about 27 AB mag/arcsec^2,
//! 0.002-0.003 MJy/sr), SINGS / LVL (IRAC4) and z0MGS (Leroy et al. 2019) at those resolutions;
//! they are not tuned to any target.

use crate::config::{Instrument, SimulateConfig};
use crate::geom::{sky_to_tangent_arcsec, tangent_arcsec_to_sky, OutputGrid, SkyCoord, TanSip};
use crate::io::fits::{card_real, card_text, write_image};
use crate::kernels::detector::rng_for;
use crate::kernels::scene::{self, ComponentKind, RenderParams, Scene, SceneParams};
use ndarray::{Array2, ArrayView2};
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Random streams of the reference noise: this + the reference's index (far from the survey's).
const STREAM_BASE: u64 = 1 << 40;

/// One kind of wide-field reference image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReferenceSpec {
    /// File stem and FILTER value: irac1, irac4, wise1, wise3.
    pub name: &'static str,
    pub telescope: &'static str,
    pub instrument: &'static str,
    /// Effective wavelength, micron.
    pub band_um: f64,
    /// Gaussian resolution, arcsec (BMAJ = BMIN).
    pub fwhm_arcsec: f64,
    pub pixscale_arcsec: f64,
    /// rms of the white noise per pixel, MJy/sr.
    pub noise_mjysr: f64,
}

/// Spitzer IRAC 3.6 micron, convolved to 4".
pub const IRAC1: ReferenceSpec = ReferenceSpec {
    name: "irac1",
    telescope: "SPITZER",
    instrument: "IRAC",
    band_um: 3.55,
    fwhm_arcsec: 4.0,
    pixscale_arcsec: 0.75,
    noise_mjysr: 0.003,
};
/// Spitzer IRAC 8.0 micron, convolved to 4".
pub const IRAC4: ReferenceSpec = ReferenceSpec {
    name: "irac4",
    telescope: "SPITZER",
    instrument: "IRAC",
    band_um: 7.87,
    fwhm_arcsec: 4.0,
    pixscale_arcsec: 0.75,
    noise_mjysr: 0.02,
};
/// WISE 3.4 micron, convolved to 7.5".
pub const WISE1: ReferenceSpec = ReferenceSpec {
    name: "wise1",
    telescope: "WISE",
    instrument: "WISE",
    band_um: 3.4,
    fwhm_arcsec: 7.5,
    pixscale_arcsec: 1.375,
    noise_mjysr: 0.002,
};
/// WISE 12 micron, convolved to 15".
pub const WISE3: ReferenceSpec = ReferenceSpec {
    name: "wise3",
    telescope: "WISE",
    instrument: "WISE",
    band_um: 12.0,
    fwhm_arcsec: 15.0,
    pixscale_arcsec: 1.375,
    noise_mjysr: 0.01,
};

/// The references of an instrument in the paper's order of preference.
pub fn for_instrument(i: Instrument) -> [ReferenceSpec; 2] {
    match i {
        Instrument::Miri => [IRAC4, WISE3],
        Instrument::NircamSw | Instrument::NircamLw => [IRAC1, WISE1],
    }
}

/// What the truth records about one reference image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReferenceTruth {
    pub name: String,
    /// Path below the survey folder (`aux/irac1.fits`).
    pub file: String,
    pub band_um: f64,
    pub fwhm_arcsec: f64,
    pub pixscale_arcsec: f64,
    pub noise_mjysr: f64,
    /// The reference's true zero level (the sky it holds besides the galaxy and stars), MJy/sr.
    pub zero_level_mjysr: f64,
    /// Reference / JWST band surface-brightness ratio (that of the diffuse disk), the same for every
    /// component.
    pub colour_ratio: f64,
}

/// The truth of the anchoring inputs (`truth.json`, `anchor`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AnchorTruth {
    pub references: Vec<ReferenceTruth>,
    /// The scene fills the field (`simulate.fill_field`).
    pub fill_field: bool,
    /// How to get the offset a perfect anchoring adds (it depends on the pipeline's level matching).
    pub perfect_offset: String,
}

fn disk_flux(s: &Scene) -> f64 {
    s.components.iter().filter(|g| g.kind == ComponentKind::Disk).map(|g| g.flux_jy).sum()
}

/// Write the references of `cfg.instrument` covering the footprint corners `pts`, for the scene
/// made from `params` (the JWST band's; the reference wavelength replaces `band_um`).
///
/// # Errors
/// A failed FITS write (named), an empty footprint.
pub fn write_references(
    cfg: &SimulateConfig,
    params: &SceneParams,
    jwst_scene: &Scene,
    centre: (f64, f64),
    pts: &[SkyCoord],
    out: &Path,
) -> crate::Result<AnchorTruth> {
    let mut refs = vec![];
    for (k, spec) in for_instrument(cfg.instrument).into_iter().enumerate() {
        let sc = scene::make_scene(&SceneParams { band_um: spec.band_um, ..params.clone() });
        let ratio = disk_flux(&sc) / disk_flux(jwst_scene);
        let margin = (3.0 * spec.fwhm_arcsec / spec.pixscale_arcsec).ceil() as usize + 4;
        let grid = OutputGrid::covering(pts, spec.pixscale_arcsec, margin)
            .ok_or_else(|| crate::err!("reference {}: no footprint to cover", spec.name))?;
        let w = grid.wcs();
        let mut img = Array2::<f32>::zeros((grid.ny, grid.nx));
        let rp = RenderParams { psf_fwhm_arcsec: spec.fwhm_arcsec, pixel_integrate: true };
        let to_tan = |x: f64, y: f64| {
            let (ra, dec) = w.pixel_to_sky(x, y);
            sky_to_tangent_arcsec(centre, ra, dec)
        };
        let to_pix = |xi: f64, eta: f64| {
            let (ra, dec) = tangent_arcsec_to_sky(centre, xi, eta);
            w.sky_to_pixel(ra, dec).ok()
        };
        scene::render(jwst_scene, &rp, img.view_mut(), &to_tan, &to_pix);
        let zero = 0.0f64;
        let mut rng = rng_for(cfg.seed, STREAM_BASE + k as u64);
        let noise = Normal::new(0.0, spec.noise_mjysr).expect("valid normal");
        for v in img.iter_mut() {
            *v = (ratio * *v as f64 + zero + noise.sample(&mut rng)) as f32;
        }
        let fwhm_deg = spec.fwhm_arcsec / 3600.0;
        let mut cards = vec![
            card_text("BUNIT", "MJy/sr", "surface brightness"),
            card_text("TELESCOP", spec.telescope, "simulated reference"),
            card_text("INSTRUME", spec.instrument, ""),
            card_text("FILTER", spec.name, ""),
            card_real("BMAJ", fwhm_deg, "[deg] Gaussian beam FWHM"),
            card_real("BMIN", fwhm_deg, "[deg] Gaussian beam FWHM"),
            card_real("BPA", 0.0, "[deg] beam position angle"),
            card_real("WAVELEN", spec.band_um, "[micron] effective wavelength"),
        ];
        cards.extend(w.to_cards());
        let file = format!("aux/{}.fits", spec.name);
        write_image(&out.join(&file), &img, &cards, &[])?;
        refs.push(ReferenceTruth {
            name: spec.name.into(),
            file,
            band_um: spec.band_um,
            fwhm_arcsec: spec.fwhm_arcsec,
            pixscale_arcsec: spec.pixscale_arcsec,
            noise_mjysr: spec.noise_mjysr,
            zero_level_mjysr: zero,
            colour_ratio: ratio,
        });
    }
    Ok(AnchorTruth {
        references: refs,
        fill_field: cfg.fill_field,
        perfect_offset: "the references' zero level is that of truth/truth_sky.fits (0): a perfect anchoring adds \
                         the median over the mosaic of (truth sky - mosaic); see stages::simulate::references::\
                         perfect_offset"
            .into(),
    })
}

/// The offset a perfect anchoring adds to a mosaic: the median over the mosaic's pixels with data
/// (`wht > 0`, finite) of the truth sky (at the nearest truth pixel) minus the mosaic, MJy/sr. The
/// median keeps the few pixels where the grids sample a star differently out of it. NaN without
/// overlap.
pub fn perfect_offset(
    sci: ArrayView2<f32>,
    wht: ArrayView2<f32>,
    wcs: &TanSip,
    truth: ArrayView2<f32>,
    truth_wcs: &TanSip,
) -> f64 {
    let (ty, tx) = truth.dim();
    let mut d: Vec<f64> = vec![];
    for ((y, x), &v) in sci.indexed_iter() {
        if !(wht[[y, x]] > 0.0 && v.is_finite()) {
            continue;
        }
        let (ra, dec) = wcs.pixel_to_sky(x as f64, y as f64);
        if let Ok((u, w)) = truth_wcs.sky_to_pixel(ra, dec) {
            let (i, j) = (u.round(), w.round());
            if i >= 0.0 && j >= 0.0 && (i as usize) < tx && (j as usize) < ty {
                d.push(truth[[j as usize, i as usize]] as f64 - v as f64);
            }
        }
    }
    if d.is_empty() {
        return f64::NAN;
    }
    d.sort_by(f64::total_cmp);
    crate::kernels::anchor::percentile_sorted(&d, 50.0)
}
