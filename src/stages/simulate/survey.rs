//! The design of a synthetic survey: instrument geometry (detectors, gaps, modules, pixel scales,
//! SIP distortion), mosaic tiles, dithers, visits, times, pointing errors and background levels.
//!
//! A pure, deterministic function of the `[simulate]` config: every rank computes the same design
//! and renders only the exposures it owns. Nothing here renders pixels or writes files.

use crate::config::{Instrument, SimulateConfig};
use crate::geom::{tangent_arcsec_to_sky, SipPoly, TanSip};
use crate::kernels::detector::rng_for;
use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

/// The galaxy centre of every simulated survey (a PHANGS-like target at moderate declination).
pub const TARGET_RA_DEG: f64 = 24.174;
pub const TARGET_DEC_DEG: f64 = 15.783;
/// Program number written to PROGRAM.
pub const PROGRAM: &str = "09999";

/// Random stream ids (one per purpose, so adding one never changes the others).
pub mod stream {
    pub const DESIGN: u64 = 1;
    pub const SCENE: u64 = 2;
    pub const CATALOG: u64 = 3;
    /// Per-tile background planes (+ tile index * 2^32).
    pub const TILE_PLANE: u64 = 4;
    /// Per-exposure streams start here (+ exposure index * 16 + purpose).
    pub const EXPOSURE_BASE: u64 = 1 << 20;
}

/// One detector of the instrument: name and its centre offset in the instrument frame (arcsec).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorLayout {
    /// DETECTOR keyword value (NRCA1, NRCALONG, MIRIMAGE).
    pub name: String,
    /// Centre offset from the instrument's reference point, arcsec (x along rows, y along columns).
    pub offset_arcsec: [f64; 2],
    /// Module (A/B) for NIRCam, "" for MIRI.
    pub module: String,
}

/// Geometry of the instrument for a size preset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstrumentLayout {
    pub instrument: Instrument,
    /// `[ny, nx]` of each detector.
    pub shape: [usize; 2],
    pub pixscale_arcsec: f64,
    pub detectors: Vec<DetectorLayout>,
    /// Extent of all detectors together, arcsec (width, height) in the instrument frame.
    pub extent_arcsec: [f64; 2],
    /// Position angle of the instrument's +y axis east of north, deg.
    pub pa_deg: f64,
    /// Reference-pixel border width (rows and columns for NIRCam; columns only for MIRI).
    pub refpix: usize,
}

impl InstrumentLayout {
    /// The layout of `instrument` with detectors of `n` pixels (NIRCam) or `n/2` rows (MIRI).
    pub fn new(instrument: Instrument, n: usize) -> InstrumentLayout {
        match instrument {
            Instrument::NircamSw | Instrument::NircamLw => {
                let sw = instrument == Instrument::NircamSw;
                let s = instrument.native_pixscale_arcsec();
                // SW: each module is 2x2 detectors with a gap of ~5" (0.08 of a detector at full size);
                // LW: one detector per module covering the same field. Modules ~43" apart at full size.
                let d_sw = n as f64 * 0.031;
                let gap = 0.08 * d_sw;
                let module_w = 2.0 * d_sw + gap;
                let module_gap = 0.68 * d_sw;
                let mx = 0.5 * (module_w + module_gap);
                let mut dets = vec![];
                for (m, sign) in [("A", -1.0), ("B", 1.0)] {
                    if sw {
                        let q = 0.5 * (d_sw + gap);
                        for (k, (dx, dy)) in [(-q, q), (q, q), (-q, -q), (q, -q)].iter().enumerate() {
                            dets.push(DetectorLayout {
                                name: format!("NRC{m}{}", k + 1),
                                offset_arcsec: [sign * mx + dx, *dy],
                                module: m.into(),
                            });
                        }
                    } else {
                        dets.push(DetectorLayout {
                            name: format!("NRC{m}LONG"),
                            offset_arcsec: [sign * mx, 0.0],
                            module: m.into(),
                        });
                    }
                }
                let lw_side = if sw { d_sw } else { n as f64 * s };
                let height = if sw { module_w } else { lw_side };
                let width = 2.0 * mx + if sw { module_w } else { lw_side };
                InstrumentLayout {
                    instrument,
                    shape: [n, n],
                    pixscale_arcsec: s,
                    detectors: dets,
                    extent_arcsec: [width, height],
                    pa_deg: 25.0,
                    refpix: 4,
                }
            }
            Instrument::Miri => {
                let rows = (n / 2).max(64);
                let cols = rows + 8;
                let s = 0.11;
                InstrumentLayout {
                    instrument,
                    shape: [rows, cols],
                    pixscale_arcsec: s,
                    detectors: vec![DetectorLayout {
                        name: "MIRIMAGE".into(),
                        offset_arcsec: [0.0, 0.0],
                        module: String::new(),
                    }],
                    extent_arcsec: [cols as f64 * s, rows as f64 * s],
                    pa_deg: 37.0,
                    refpix: 4,
                }
            }
        }
    }

    /// The MIRI Lyot-coronagraph box `[y0, y1) x [x0, x1)`: rows 735-1023 and columns 0-289 of the
    /// full 1024 x 1032 frame, scaled to this frame size.
    pub fn lyot_box(&self) -> Option<[usize; 4]> {
        (self.instrument == Instrument::Miri).then(|| crate::plan::miri_lyot_box(self.shape))
    }

    /// MIRI: where the light falls on the detector ([`MiriFocalPlane`]); `None` for NIRCam.
    pub fn miri_focal_plane(&self) -> Option<MiriFocalPlane> {
        (self.instrument == Instrument::Miri).then(|| MiriFocalPlane::new(self.shape))
    }
}

/// The MIRI imager focal plane on the 1024 x 1032 detector, scaled to a simulated frame of `shape`
/// (every simulated size keeps the real proportions; `large` is the real frame).
///
/// Sources:
/// - Bouchet et al. 2015, PASP 127, 612 ("MIRIM, the MIRI imager"): the imager has an unobstructed
///   view of 74" x 113" (673 columns at 0.11"/px); the rest of the nominal 113" x 113" field, on the
///   left of the detector, holds the coronagraphs and the LRS. JDox "MIRI Coronagraphic Imaging",
///   figure 1: the coronagraph views sit on the left side, the Lyot coronagraph at the top and the
///   three 4QPMs below it. Imaging cal files flag that strip NON_SCIENCE except the Lyot box (rows
///   735-1023, columns 0-289; pjpipe matches it as its own image), and unilluminated columns
///   separate it from the imager field, which starts near column 360.
/// - The Lyot occulter (webbpsf's MIRI model, after Boccaletti et al. 2015, PASP 127, 633): an
///   opaque spot of 4.25" diameter (4.32" specified) held by a 0.722" wide bar running across the
///   30" field of the coronagraph. The occulted pixels see no sky; the simulator flags them
///   NON_SCIENCE like the rest of the coronagraph strip, since no imaging mosaic can use them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MiriFocalPlane {
    /// `[ny, nx]` of the frame.
    pub shape: [usize; 2],
    /// First column of the imager field.
    pub imager_x0: usize,
    /// The Lyot box `[y0, y1, x0, x1]` ([`crate::plan::miri_lyot_box`]).
    pub lyot: [usize; 4],
    /// Centre of the Lyot spot `(y, x)`, pixels (the centre of the box).
    pub spot_yx: (f64, f64),
    /// Radius of the Lyot spot, pixels.
    pub spot_radius_px: f64,
    /// Half-width of the spot's support bar (vertical, through the spot, across the box), pixels.
    pub bar_halfwidth_px: f64,
}

impl MiriFocalPlane {
    /// Full-frame columns, rows and pixel scale the published numbers refer to.
    const FULL_COLS: f64 = 1032.0;
    const PIXSCALE_ARCSEC: f64 = 0.11;

    /// The focal plane of a MIRI frame of `shape` `[ny, nx]`.
    pub fn new(shape: [usize; 2]) -> Self {
        let [_, nx] = shape;
        // frame pixels per real pixel along x (the simulator keeps the 0.11" scale on smaller frames)
        let k = nx as f64 / Self::FULL_COLS;
        let lyot = crate::plan::miri_lyot_box(shape);
        let [y0, y1, x0, x1] = lyot;
        MiriFocalPlane {
            shape,
            imager_x0: ((360.0 * k).round() as usize).min(nx),
            lyot,
            spot_yx: (0.5 * (y0 + y1) as f64 - 0.5, 0.5 * (x0 + x1) as f64 - 0.5),
            spot_radius_px: 0.5 * 4.25 / Self::PIXSCALE_ARCSEC * k,
            bar_halfwidth_px: (0.5 * 0.722 / Self::PIXSCALE_ARCSEC * k).max(0.5),
        }
    }

    /// Whether pixel `(y, x)` sees the sky through the imager field or the open part of the Lyot
    /// box (everything else on the left strip is a 4QPM, the LRS, unilluminated, or occulted).
    pub fn is_science(&self, y: usize, x: usize) -> bool {
        x >= self.imager_x0 || (self.in_lyot_box(y, x) && !self.is_occulted(y, x))
    }

    /// Whether pixel `(y, x)` lies in the Lyot box.
    pub fn in_lyot_box(&self, y: usize, x: usize) -> bool {
        let [y0, y1, x0, x1] = self.lyot;
        (y0..y1).contains(&y) && (x0..x1).contains(&x)
    }

    /// Whether pixel `(y, x)` of the Lyot box is behind the spot or its bar.
    pub fn is_occulted(&self, y: usize, x: usize) -> bool {
        if !self.in_lyot_box(y, x) {
            return false;
        }
        let (dy, dx) = (y as f64 - self.spot_yx.0, x as f64 - self.spot_yx.1);
        dy.hypot(dx) <= self.spot_radius_px || dx.abs() <= self.bar_halfwidth_px
    }

    /// Whether pixel `(y, x)` receives no light at all: the columns between the coronagraph strip
    /// and the imager field, and the occulted part of the Lyot box.
    pub fn is_dark(&self, y: usize, x: usize) -> bool {
        let lyot_x1 = self.lyot[3];
        (lyot_x1..self.imager_x0).contains(&x) || self.is_occulted(y, x)
    }
}

/// One simulated exposure file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExposurePlan {
    pub index: usize,
    /// File name (`jw09999001001_02101_00001_nrca1_cal.fits`).
    pub file: String,
    pub detector: String,
    pub module: String,
    /// Tile (visit) index, 0-based; `None` for MIRI off exposures.
    pub tile: usize,
    pub dither: usize,
    pub observation: String,
    pub visit: String,
    pub exposure: usize,
    pub is_off: bool,
    pub expstart_mjd: f64,
    pub effexptm_s: f64,
    /// The WCS the pixels were rendered with.
    pub true_wcs: TanSip,
    /// The WCS written to the header (true WCS with pointing errors).
    pub header_wcs: TanSip,
    /// Total additive background level in MJy/sr (sky(t) + per-exposure offset).
    pub background_mjysr: f64,
    /// The per-exposure offset part of `background_mjysr`.
    pub offset_mjysr: f64,
    /// Smooth, time-varying sky part (MIRI thermal drift; constant for NIRCam).
    pub sky_mjysr: f64,
    /// The tile's background plane `[value at the tangent point, d/dxi, d/deta]` in MJy/sr and
    /// MJy/sr per arcsec of the target's tangent plane (xi east, eta north); zero at the tile centre.
    #[serde(default)]
    pub plane: [f64; 3],
}

/// Per-visit relative pointing error, arcsec along RA*cos(Dec) and Dec. A header WCS is the true
/// WCS rotated by the absolute rotation about the target, then shifted by this error plus the
/// absolute offset (header minus truth).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisitError {
    pub tile: usize,
    pub visit: String,
    pub dra_arcsec: f64,
    pub ddec_arcsec: f64,
}

/// The whole synthetic survey design.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Survey {
    pub layout: InstrumentLayout,
    pub filter: String,
    pub psf_fwhm_arcsec: f64,
    pub target_deg: [f64; 2],
    /// Half the survey's extent, arcsec (sizes the galaxy).
    pub half_extent_arcsec: f64,
    pub exposures: Vec<ExposurePlan>,
    pub visit_errors: Vec<VisitError>,
    pub absolute_offset_arcsec: [f64; 2],
    pub absolute_rotation_deg: f64,
    /// Electrons per (MJy/sr) per second of exposure (sets the Poisson noise).
    pub gain_e_per_mjysr_s: f64,
    /// Time of the first group of the ramp, s: a pixel saturates when its charge in the first group
    /// exceeds the full well (the JWST pipeline flags saturation group by group).
    pub group_time_s: f64,
    pub read_noise_e: f64,
    /// Full-well signal in electrons (saturation).
    pub full_well_e: f64,
}

/// PSF FWHM in arcsec: the PHANGS table (pjpipe P9, native pixels x native scale) where known,
/// else the diffraction limit 0.0328" per micron.
pub fn psf_fwhm_arcsec(filter: &str, instrument: Instrument) -> f64 {
    let table = [
        ("F200W", 2.141),
        ("F300M", 1.585),
        ("F335M", 1.760),
        ("F360M", 1.901),
        ("F770W", 2.445),
        ("F1000W", 2.982),
        ("F1130W", 3.409),
        ("F2100W", 6.127),
    ];
    match table.iter().find(|(f, _)| *f == filter) {
        Some((_, pix)) => pix * instrument.native_pixscale_arcsec(),
        None => 0.0328 * Instrument::filter_wavelength_um(filter).unwrap_or(2.0),
    }
}

/// Sky background of a band, MJy/sr (zodiacal light for NIRCam, thermal for MIRI), rough.
fn band_sky_mjysr(filter: &str, instrument: Instrument) -> f64 {
    let um = Instrument::filter_wavelength_um(filter).unwrap_or(2.0);
    match instrument {
        Instrument::Miri => 2.0 * (um / 7.7f64).powf(3.0), // ~2 at F770W, ~4.4 at F1000W, ~40 at F2100W
        _ => 0.1 + 0.05 * um,
    }
}

fn sip_for(rng: &mut impl Rng, n: usize) -> (SipPoly, SipPoly) {
    // Quadratic and cubic terms giving ~1e-3 of the detector size at the corners, like NIRCam/MIRI.
    let nf = n as f64;
    let mut a = SipPoly::zero(3);
    let mut b = SipPoly::zero(3);
    let mut c = |scale: f64| (rng.random::<f64>() - 0.5) * 2.0 * scale;
    a.coeffs[2][0] = c(4e-3) / nf;
    a.coeffs[1][1] = c(4e-3) / nf;
    a.coeffs[0][2] = c(4e-3) / nf;
    b.coeffs[2][0] = c(4e-3) / nf;
    b.coeffs[1][1] = c(4e-3) / nf;
    b.coeffs[0][2] = c(4e-3) / nf;
    a.coeffs[3][0] = c(8e-3) / (nf * nf);
    a.coeffs[1][2] = c(8e-3) / (nf * nf);
    b.coeffs[2][1] = c(8e-3) / (nf * nf);
    b.coeffs[0][3] = c(8e-3) / (nf * nf);
    (a, b)
}

/// Dither offsets in units of the detector size (a compact 8-point pattern that fills gaps).
const DITHERS: [[f64; 2]; 8] =
    [[0.0, 0.0], [0.09, 0.04], [0.04, 0.10], [0.13, 0.14], [0.18, 0.02], [0.02, 0.19], [0.20, 0.20], [0.11, 0.23]];

/// Design the survey.
pub fn design(cfg: &SimulateConfig) -> Survey {
    let layout = InstrumentLayout::new(cfg.instrument, cfg.size.detector_px());
    let mut rng = rng_for(cfg.seed, stream::DESIGN);
    let normal = Normal::new(0.0, 1.0).expect("valid normal");
    let target = (TARGET_RA_DEG, TARGET_DEC_DEG);
    let (ntx, nty) = cfg.tiles;
    let [w, h] = layout.extent_arcsec;
    // NIRCam tiles step by half the distance between the module centres, so that each tile's modules
    // cover the previous tile's module gap (a contiguous mosaic, as PHANGS tiles are; every tile
    // overlaps its neighbours, which level matching needs).
    let step = match cfg.instrument {
        // the tiles step by 0.85 of the imager field (74" of the 113" frame at full size), whose
        // neighbours overlap; the coronagraph strip is not science
        Instrument::Miri => {
            let fp = layout.miri_focal_plane().expect("MIRI layout");
            let imager_w = (layout.shape[1] - fp.imager_x0) as f64 * layout.pixscale_arcsec;
            [0.85 * imager_w, 0.85 * h]
        }
        _ => {
            let b: Vec<f64> = layout.detectors.iter().filter(|d| d.module == "B").map(|d| d.offset_arcsec[0]).collect();
            [b.iter().sum::<f64>() / b.len() as f64, 0.85 * h]
        }
    };
    let det_arcsec = layout.shape[0] as f64 * layout.pixscale_arcsec;
    let gdra = cfg.absolute_offset_arcsec;
    let gddec = cfg.absolute_offset_arcsec;
    let grot = cfg.absolute_rotation_deg;
    let exptime = match cfg.instrument {
        Instrument::Miri => 88.8,
        _ => 429.4,
    };
    let sky0 = band_sky_mjysr(&cfg.filter, cfg.instrument);
    let offset_rms = cfg.background_offset_mjysr;
    let t0 = 60300.0;
    // MIRI thermal background drifts by ~2% per day
    let sky_at = |t: f64| match cfg.instrument {
        Instrument::Miri => sky0 * (1.0 + 0.02 * (t - t0)),
        _ => sky0,
    };
    let mut exposures = vec![];
    let mut visit_errors = vec![];
    let mut t = t0;
    // one coverage of every tile and dither per roll offset (the first = the instrument's PA)
    for (roll, &roll_deg) in cfg.rolls_deg.iter().enumerate() {
        let pa = (layout.pa_deg + roll_deg).to_radians();
        // instrument frame (x, y) -> tangent plane (xi east, eta north), +y at PA east of north, east left
        let rot = |x: f64, y: f64| (-(x * pa.cos()) + y * pa.sin(), x * pa.sin() + y * pa.cos());
        for ty in 0..nty {
            for tx in 0..ntx {
                let tile = roll * ntx * nty + ty * ntx + tx;
                let obs = format!("{:03}", tile + 1);
                let visit = "001".to_string();
                let (vx, vy) = (
                    cfg.pointing_error_arcsec * normal.sample(&mut rng),
                    cfg.pointing_error_arcsec * normal.sample(&mut rng),
                );
                visit_errors.push(VisitError {
                    tile,
                    visit: format!("jw{PROGRAM}{obs}{visit}"),
                    dra_arcsec: vx,
                    ddec_arcsec: vy,
                });
                let tile_centre = [
                    (tx as f64 - 0.5 * (ntx as f64 - 1.0)) * step[0],
                    (ty as f64 - 0.5 * (nty as f64 - 1.0)) * step[1],
                ];
                // a plane rising by tile_plane_mjysr across the tile's larger side, in a random direction
                let plane = if cfg.tile_plane_mjysr > 0.0 {
                    let mut prng = rng_for(cfg.seed, stream::TILE_PLANE + ((tile as u64) << 32));
                    let phi = prng.random::<f64>() * std::f64::consts::TAU;
                    let g = cfg.tile_plane_mjysr / w.max(h);
                    let (gx, gy) = (g * phi.cos(), g * phi.sin());
                    let (cx, cy) = rot(tile_centre[0], tile_centre[1]);
                    [-(gx * cx + gy * cy), gx, gy]
                } else {
                    [0.0; 3]
                };
                let mut add = |is_off: bool,
                               dither: usize,
                               exposure: usize,
                               centre: [f64; 2],
                               t: f64,
                               rng: &mut rand_chacha::ChaCha8Rng| {
                    let offset = offset_rms * normal.sample(rng);
                    let sky = sky_at(t);
                    for det in &layout.detectors {
                        let ix = centre[0] + det.offset_arcsec[0];
                        let iy = centre[1] + det.offset_arcsec[1];
                        let (xi, eta) = rot(ix, iy);
                        let (ra, dec) = tangent_arcsec_to_sky(target, xi, eta);
                        let s = layout.pixscale_arcsec / 3600.0;
                        let cd = [[-s * pa.cos(), s * pa.sin()], [s * pa.sin(), s * pa.cos()]];
                        let [ny, nx] = layout.shape;
                        let mut wcs = TanSip::tan([ra, dec], [(nx as f64 + 1.0) / 2.0, (ny as f64 + 1.0) / 2.0], cd);
                        let (a, b) = sip_for(rng, nx.max(ny));
                        wcs.a = Some(a);
                        wcs.b = Some(b);
                        let true_wcs = wcs.with_fitted_inverse(4, nx, ny);
                        // header: rotate the pointing about the target by the global rotation, then shift
                        let (gxi, geta) = {
                            let r = grot.to_radians();
                            (xi * r.cos() + eta * r.sin(), -xi * r.sin() + eta * r.cos())
                        };
                        let (hra, hdec) = if is_off { (ra, dec) } else { tangent_arcsec_to_sky(target, gxi, geta) };
                        let mut header_wcs = true_wcs.shifted(0.0, 0.0, if is_off { 0.0 } else { grot });
                        header_wcs.crval_deg = [hra, hdec];
                        if !is_off {
                            header_wcs = header_wcs.shifted(vx + gdra, vy + gddec, 0.0);
                        }
                        let index = exposures.len();
                        let act = if is_off { "02" } else { "01" };
                        let file = format!(
                            "jw{PROGRAM}{obs}{visit}_02{}{act}_{:05}_{}_cal.fits",
                            if is_off { 2 } else { 1 },
                            exposure,
                            det.name.to_ascii_lowercase()
                        );
                        exposures.push(ExposurePlan {
                            index,
                            file,
                            detector: det.name.clone(),
                            module: det.module.clone(),
                            tile,
                            dither,
                            observation: obs.clone(),
                            visit: visit.clone(),
                            exposure,
                            is_off,
                            expstart_mjd: t,
                            effexptm_s: exptime,
                            true_wcs,
                            header_wcs,
                            background_mjysr: sky + offset,
                            offset_mjysr: offset,
                            sky_mjysr: sky,
                            plane: if is_off { [0.0; 3] } else { plane },
                        });
                    }
                };
                for (d, dd) in DITHERS.iter().copied().enumerate().take(cfg.dithers) {
                    let centre = [tile_centre[0] + dd[0] * det_arcsec, tile_centre[1] + dd[1] * det_arcsec];
                    add(false, d, d + 1, centre, t, &mut rng);
                    t += (exptime + 120.0) / 86400.0;
                }
                if cfg.instrument == Instrument::Miri {
                    for k in 0..cfg.miri_off_exposures {
                        // ~10 arcmin away from the galaxy: background only
                        let centre = [600.0 + 10.0 * k as f64, 600.0];
                        add(true, k, k + 1, centre, t, &mut rng);
                        t += (exptime + 120.0) / 86400.0;
                    }
                }
                t += 0.1;
            }
        }
    }
    let half_extent_arcsec = 0.5 * ((ntx as f64 - 1.0) * step[0] + w).max((nty as f64 - 1.0) * step[1] + h);
    // e-/s per MJy/sr from PHOTMJSR ~ 0.2-0.5 MJy/sr per DN/s and gains of 2-4 e-/DN; NIRCam full
    // frame BRIGHT2 groups of 21.5 s, MIRI FASTR1 frames of 2.78 s
    let (gain, rn, tgroup) = match cfg.instrument {
        Instrument::NircamSw => (2.0, 12.0, 21.5),
        Instrument::NircamLw => (7.0, 10.0, 21.5),
        Instrument::Miri => (20.0, 14.0, 2.78),
    };
    Survey {
        psf_fwhm_arcsec: psf_fwhm_arcsec(&cfg.filter, cfg.instrument),
        filter: cfg.filter.clone(),
        layout,
        target_deg: [target.0, target.1],
        half_extent_arcsec,
        exposures,
        visit_errors,
        absolute_offset_arcsec: [gdra, gddec],
        absolute_rotation_deg: grot,
        gain_e_per_mjysr_s: gain,
        group_time_s: tgroup,
        read_noise_e: rn,
        full_well_e: 80_000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geom::sky_to_tangent_arcsec;

    fn config(sets: &[&str]) -> SimulateConfig {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        crate::config::load(None, &sets).unwrap().1.simulate
    }

    /// Position angle of a WCS's +y axis east of north, deg (from the CD matrix).
    fn pa_deg(w: &TanSip) -> f64 {
        w.cd[0][1].atan2(w.cd[1][1]).to_degrees()
    }

    /// A second roll repeats the first coverage rotated about the target: the first coverage is the
    /// one-roll survey to the bit, the second has new tiles, observations and visits, every
    /// detector's axes turned by the roll, and its detector centres at the first coverage's
    /// distances from the target turned by the roll.
    #[test]
    fn a_second_roll_repeats_the_pattern_rotated_about_the_target() {
        let base = ["simulate.tiles=\"2x1\"", "simulate.dithers=2", "simulate.pointing_error_arcsec=0.0"];
        let one = design(&config(&base));
        let two = design(&config(&[&base[..], &["simulate.rolls_deg=[0.0, 50.0]"]].concat()));
        let n = one.exposures.len();
        assert_eq!(n, 2 * 2 * 2, "2 tiles x 2 dithers x 2 LW detectors");
        assert_eq!(two.exposures.len(), 2 * n);
        assert_eq!(&two.exposures[..n], &one.exposures[..], "the first roll is the one-roll survey");
        let tiles: std::collections::BTreeSet<usize> = two.exposures.iter().map(|e| e.tile).collect();
        assert_eq!(tiles.into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        let target = (two.target_deg[0], two.target_deg[1]);
        for (a, b) in one.exposures.iter().zip(&two.exposures[n..]) {
            assert_ne!(a.observation, b.observation);
            assert_ne!(a.file, b.file);
            let d = pa_deg(&b.true_wcs) - pa_deg(&a.true_wcs);
            assert!((d - 50.0).abs() < 1e-9, "{}: roll {d} deg", b.file);
            // the reference pixel's tangent-plane position, turned by -50 deg (PA runs east of north,
            // xi east): the first roll's
            let (xa, ya) = sky_to_tangent_arcsec(target, a.true_wcs.crval_deg[0], a.true_wcs.crval_deg[1]);
            let (xb, yb) = sky_to_tangent_arcsec(target, b.true_wcs.crval_deg[0], b.true_wcs.crval_deg[1]);
            let r = 50f64.to_radians();
            let (xr, yr) = (xb * r.cos() - yb * r.sin(), xb * r.sin() + yb * r.cos());
            assert!((xr - xa).hypot(yr - ya) < 1e-6, "{}: ({xr}, {yr}) vs ({xa}, {ya})", b.file);
        }
    }

    #[test]
    fn bad_rolls_are_refused_naming_the_key() {
        for bad in ["[]", "[0.0, 360.0]", "[0.0, 10.0, 20.0, 30.0, 40.0]", "[200.0]", "[0.0, -180.0, 180.0]"] {
            let sets = vec![format!("simulate.rolls_deg={bad}")];
            let err = crate::config::load(None, &sets).unwrap_err().to_string();
            assert!(err.contains("simulate.rolls_deg"), "{bad}: {err}");
        }
    }
}
