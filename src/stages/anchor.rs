//! Stage `anchor`: the mosaic's absolute background level tied to a wide-field reference image
//! whose zero level is known (PHANGS-JWST paper, Williams et al. 2024, section 3.9 and Figure 8;
//! pjpipe `anchoring`, reference/pjpipe-algorithms.md section 11).
//!
//! The instrument's reference band (F300M for NIRCam, F770W for MIRI; `anchor.reference_band_*`) is
//! compared with the references of `anchor.references` / `--anchor`, tried in order of preference
//! (IRAC1 then WISE1, IRAC4 then WISE3): the mosaic is brought to the reference's resolution,
//! resampled onto the reference grid, binned by reference intensity, and a line fitted through the
//! bins' medians with 3-sigma clipping; the offset added to the mosaic is minus the intercept. The
//! other bands of the instrument are tied to the anchored mosaic of the reference band
//! (`anchor.reference_band_mosaic`), both smoothed to F2100W's resolution, the same way. pjpipe
//! fits against the un-anchored reference band and adds slope x its offset; fitting against the
//! anchored mosaic is the same line moved by that amount.
//!
//! Departures from pjpipe, on purpose:
//! - The mosaic is smoothed with a Gaussian of FWHM sqrt(target^2 - own^2), the band's PSF taken
//!   as a Gaussian of the PHANGS FWHM, instead of an Aniano kernel from the band's PSF: at the
//!   reference resolutions (4" to 15" against 0.1" to 0.7") the difference is far below the bin
//!   width. To keep this cheap on large mosaics, the mosaic is first block-averaged to about a tenth
//!   of the target FWHM per pixel, and the smoothing of the blocks and of the bilinear resampling is
//!   taken off the Gaussian.
//! - Bins cover the whole fitting range (pjpipe's count leaves the top of the range out), and each
//!   bin's median is placed at the median reference intensity of its pixels, not at the bin centre
//!   (on the simulated F300M scene the bin-centre placement moved the intercept by 0.02 MJy/sr).
//! - A reference that does not cover the mosaic is an error naming it (pjpipe fits what overlaps).
//! - The offset's uncertainty (from the fit) is reported, and the offset is added only where the
//!   mosaic has data (WHT > 0).
//!
//! The anchored mosaic is the `-o` product: its SCI is rewritten from the band store's SCI plus the
//! offset (so a rerun never adds twice), with `ANCHOR` / `ANCHERR` (MJy/sr) and `ANCHREF` in the
//! PRIMARY and SCI headers and a HISTORY line. `anchor/anchor.json` holds the fit and its bins,
//! `anchor/<band>_vs_<reference>.png` the picture of Figure 8. Rank 0 does all of it (the data are a
//! few thousand reference pixels) and the others wait for the result, so nothing depends on the
//! rank count.

use super::runner::{Band, Ctx, Written};
use crate::config::{AnchorConfig, Config, Instrument};
use crate::dist::CommExt;
use crate::error::Context;
use crate::geom::{CardValue, SkyWcs, TanSip};
use crate::io::fits::{card_real, card_text, read_header, read_image, read_region_f32};
use crate::kernels::anchor::{auto_range, bin_medians, block_mean, clipped_line_fit, reproject_bilinear, Bin};
use crate::kernels::gaussian::{smooth_nan, FWHM_PER_SIGMA};
use ndarray::{s, Array2};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The stage name.
pub const STAGE: &str = "anchor";
/// The report file in `anchor/`.
pub const REPORT: &str = "anchor.json";

/// At least this many bins must survive for a reference to give a fit.
pub const MIN_BINS: usize = 3;
/// Block means per target FWHM: fine enough that the blocks and the resampling smooth little.
const BLOCKS_PER_FWHM: f64 = 10.0;
/// Rows read per block from the band store or a mosaic (rounded to the block factor).
const ROW_BLOCK: usize = 512;
/// A block mean needs this fraction of its pixels with data. Any hole (a saturated star or
/// galaxy core, which the reference sees in full) blanks the block, and [`MIN_BEAM_WEIGHT`] then
/// keeps the reference pixels whose beam reaches it out of the fit: flux missing from the mosaic
/// but present in the reference would pull the line's slope down.
const MIN_BLOCK_FRACTION: f64 = 1.0;
/// A smoothed pixel needs at least this fraction of the Gaussian's weight on pixels with data:
/// next to saturated cores, holes and the mosaic's edge, smoothing what is left would bias the
/// value (low next to a saturated galaxy centre), so such pixels are left out.
const MIN_BEAM_WEIGHT: f64 = 0.99;
/// Most pixel pairs drawn in the picture.
const MAX_PLOT_POINTS: usize = 20_000;

/// The band of `instrument` that is anchored to the external references.
pub fn reference_band(cfg: &AnchorConfig, instrument: Instrument) -> &str {
    match instrument {
        Instrument::Miri => &cfg.reference_band_miri,
        Instrument::NircamSw | Instrument::NircamLw => &cfg.reference_band_nircam,
    }
}

/// Why the stage has nothing to do for `band` (`None`: it runs). With an empty `band` (not yet
/// known), only the switch and the absence of any anchoring input count.
pub fn skip_reason(cfg: &Config, band: &str) -> Option<String> {
    let a = &cfg.anchor;
    if !a.enabled {
        return Some("anchor.enabled = false".into());
    }
    if band.is_empty() {
        return (a.references.is_empty() && a.reference_band_mosaic.is_none())
            .then(|| "no reference image (--anchor or anchor.references) and no anchor.reference_band_mosaic".into());
    }
    let Some(inst) = Instrument::of_filter(band) else {
        return Some(format!("band {band} belongs to no instrument tessera knows"));
    };
    let rb = reference_band(a, inst);
    if band == rb {
        a.references.is_empty().then(|| {
            format!(
                "no reference image for {band} (--anchor REF.fits or anchor.references): its background level \
                 stays as level matching left it"
            )
        })
    } else {
        a.reference_band_mosaic.is_none().then(|| {
            format!(
                "{band} is tied to {rb}'s anchored mosaic and anchor.reference_band_mosaic is not set: its \
                 background level stays as level matching left it"
            )
        })
    }
}

/// What one reference gave (or why it gave no fit).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tried {
    pub reference: PathBuf,
    /// "fit" or why not.
    pub outcome: String,
}

/// `anchor/anchor.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnchorReport {
    pub band: String,
    /// "external" (against a wide-field reference) or "internal" (against the reference band).
    pub mode: String,
    /// The reference used: a wide-field image, or the reference band's anchored mosaic.
    pub reference: PathBuf,
    /// Its short name (file stem), as in the picture's name.
    pub reference_name: String,
    /// Resolution compared at, arcsec (the reference's BMAJ, or `anchor.internal_fwhm_arcsec`).
    pub target_fwhm_arcsec: f64,
    /// Where `target_fwhm_arcsec` came from (BMAJ, anchor.reference_fwhm_arcsec,
    /// anchor.internal_fwhm_arcsec).
    pub target_fwhm_from: String,
    /// The band's PSF FWHM taken for its mosaic, arcsec.
    pub band_fwhm_arcsec: f64,
    /// Mosaic pixels per side of a block mean before smoothing.
    pub block_factor: usize,
    /// FWHM of the Gaussian applied after the block means, arcsec.
    pub smoothing_fwhm_arcsec: f64,
    /// Fraction of the mosaic's footprint (block means with any data) on finite reference pixels.
    pub coverage: f64,
    /// Reference pixels with a finite mosaic value.
    pub n_pairs: usize,
    /// The fitted range of reference intensity, MJy/sr, and whether it was automatic.
    pub range_mjysr: [f64; 2],
    pub auto_range: bool,
    pub bins: Vec<Bin>,
    /// band = slope x reference + intercept (MJy/sr), from the kept bins.
    pub slope: f64,
    pub slope_err: f64,
    pub intercept_mjysr: f64,
    pub intercept_err_mjysr: f64,
    /// Internal tie: the reference band's ANCHOR and ANCHERR (already in the mosaic fitted against).
    pub reference_band_offset_mjysr: Option<f64>,
    pub reference_band_offset_err_mjysr: Option<f64>,
    /// The offset added to the mosaic, MJy/sr (= -intercept), and its uncertainty.
    pub offset_mjysr: f64,
    pub offset_err_mjysr: f64,
    /// Every reference tried, in order.
    pub tried: Vec<Tried>,
}

/// An image on a grid: `(X, Y)` of `data` is pixel `(f X + (f-1)/2, f Y + (f-1)/2)` of `wcs`.
struct OnSky {
    data: Array2<f64>,
    /// Pixels inside the image's footprint (with data, masked or not).
    foot: Array2<bool>,
    wcs: SkyWcs,
    factor: usize,
}

impl OnSky {
    fn grid_to_sky(&self, x: f64, y: f64) -> (f64, f64) {
        let f = self.factor as f64;
        self.wcs.pixel_to_sky(f * x + 0.5 * (f - 1.0), f * y + 0.5 * (f - 1.0))
    }
    fn sky_to_grid(&self, ra: f64, dec: f64) -> Option<(f64, f64)> {
        let f = self.factor as f64;
        self.wcs.sky_to_pixel(ra, dec).ok().map(|(x, y)| ((x - 0.5 * (f - 1.0)) / f, (y - 0.5 * (f - 1.0)) / f))
    }
}

/// A mosaic to smooth: its size, WCS, pixel scale and a reader of (SCI, WHT) row blocks.
struct Mosaic<'a> {
    ny: usize,
    wcs: TanSip,
    pixscale_arcsec: f64,
    fwhm_arcsec: f64,
    /// Pixels above this are holes for the comparison.
    mask_above: Option<f64>,
    rows: RowReader<'a>,
}

/// Reads (SCI, WHT) of a row range.
type RowReader<'a> = Box<dyn FnMut(Range<usize>) -> crate::Result<(Array2<f32>, Array2<f32>)> + 'a>;

/// The smoothed block-mean image of `m` at resolution `target_fwhm_arcsec` (plus a Gaussian of
/// variance `extra_var_arcsec2`), and the FWHM of the Gaussian applied after the blocks (arcsec).
fn smooth_to(m: &mut Mosaic, target_fwhm_arcsec: f64, extra_var_arcsec2: f64) -> crate::Result<(OnSky, f64)> {
    let f = ((target_fwhm_arcsec / BLOCKS_PER_FWHM / m.pixscale_arcsec).floor() as usize).max(1);
    let rb = (ROW_BLOCK / f).max(1) * f;
    let mut blocks = vec![];
    let mut feet = vec![];
    let mut y = 0;
    while y < m.ny {
        let r = y..(y + rb).min(m.ny);
        let (sci, wht) = (m.rows)(r.clone())?;
        let lim = m.mask_above.unwrap_or(f64::INFINITY) as f32;
        let good = ndarray::Zip::from(&wht).and(&sci).map_collect(|&w, &v| w > 0.0 && v <= lim);
        blocks.push(block_mean(sci.view(), good.view(), f, MIN_BLOCK_FRACTION));
        let any = wht.mapv(|w| w > 0.0);
        feet.push(block_mean(sci.view(), any.view(), f, 0.0).mapv(|v| v.is_finite()));
        y = r.end;
    }
    let views: Vec<_> = blocks.iter().map(|b| b.view()).collect();
    let coarse = ndarray::concatenate(ndarray::Axis(0), &views).expect("equal widths");
    let fviews: Vec<_> = feet.iter().map(|b| b.view()).collect();
    let foot = ndarray::concatenate(ndarray::Axis(0), &fviews).expect("equal widths");
    // Gaussian variances add. A block mean adds a box of f pixels over the pixel's own (variance
    // (f^2 - 1) / 12 pixels^2), and the bilinear resampling onto the reference grid a triangle of one
    // block (1/6 block^2 on average over the sub-block positions): both are taken off, since on a
    // galaxy's convex profile any excess smoothing raises the mosaic in proportion to its intensity
    // and steepens the fitted line (measured: +1% slope, 0.035 MJy/sr of intercept on F770W with
    // blocks of a quarter FWHM and no correction)
    let block = f as f64 * m.pixscale_arcsec;
    let var_arcsec2 = (target_fwhm_arcsec.powi(2) - m.fwhm_arcsec.powi(2)).max(0.0) / FWHM_PER_SIGMA.powi(2)
        + extra_var_arcsec2
        - ((f * f - 1) as f64) * m.pixscale_arcsec.powi(2) / 12.0
        - block * block / 6.0;
    let sigma_px = var_arcsec2.max(0.0).sqrt() / (f as f64 * m.pixscale_arcsec);
    let data = smooth_nan(coarse.view(), sigma_px, MIN_BEAM_WEIGHT);
    let wcs = SkyWcs::Tan(m.wcs.clone());
    Ok((OnSky { data, foot, wcs, factor: f }, var_arcsec2.max(0.0).sqrt() * FWHM_PER_SIGMA))
}

/// The result of comparing a smoothed mosaic with a reference on the reference's grid.
struct Comparison {
    x: Vec<f64>,
    y: Vec<f64>,
    coverage: f64,
}

/// Resample `m` onto `r`'s grid (over the part of it that the mosaic can reach) and pair the pixels.
fn compare(m: &OnSky, r: &OnSky) -> Comparison {
    let (my, mx) = m.data.dim();
    // coverage: the mosaic's footprint landing on the reference's footprint (for a reference band's
    // mosaic, its footprint, not its smoothed pixels, which the beam-weight cut blanks near edges)
    let (ry, rx) = r.data.dim();
    let (mut n, mut on) = (0usize, 0usize);
    let mut bbox = [f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY];
    for ((y, x), &inside) in m.foot.indexed_iter() {
        if !inside {
            continue;
        }
        n += 1;
        let (ra, dec) = m.grid_to_sky(x as f64, y as f64);
        if let Some((u, w)) = r.sky_to_grid(ra, dec) {
            bbox = [bbox[0].min(u), bbox[1].max(u), bbox[2].min(w), bbox[3].max(w)];
            let (i, j) = (u.round(), w.round());
            if i >= 0.0 && j >= 0.0 && (i as usize) < rx && (j as usize) < ry && r.foot[[j as usize, i as usize]] {
                on += 1;
            }
        }
    }
    let coverage = if n > 0 { on as f64 / n as f64 } else { 0.0 };
    if on == 0 {
        return Comparison { x: vec![], y: vec![], coverage };
    }
    let x0 = (bbox[0].floor().max(0.0) as usize).min(rx - 1);
    let x1 = (bbox[1].ceil().max(0.0) as usize).min(rx - 1);
    let y0 = (bbox[2].floor().max(0.0) as usize).min(ry - 1);
    let y1 = (bbox[3].ceil().max(0.0) as usize).min(ry - 1);
    let res = reproject_bilinear(m.data.view(), (y1 - y0 + 1, x1 - x0 + 1), |x, y| {
        let (ra, dec) = r.grid_to_sky(x + x0 as f64, y + y0 as f64);
        m.sky_to_grid(ra, dec).filter(|(u, w)| *u >= 0.0 && *w >= 0.0 && *u <= (mx - 1) as f64 && *w <= (my - 1) as f64)
    });
    let sub = r.data.slice(s![y0..=y1, x0..=x1]);
    let (mut xs, mut ys) = (vec![], vec![]);
    for (a, b) in sub.iter().zip(res.iter()) {
        if a.is_finite() && b.is_finite() {
            xs.push(*a);
            ys.push(*b);
        }
    }
    Comparison { x: xs, y: ys, coverage }
}

/// A card's number.
fn real_card(cards: &std::collections::BTreeMap<String, CardValue>, key: &str) -> Option<f64> {
    match cards.get(key) {
        Some(CardValue::Real(v)) => Some(*v),
        Some(CardValue::Int(v)) => Some(*v as f64),
        _ => None,
    }
}

/// The short name of a reference (its file stem).
fn short_name(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "reference".into())
}

/// The fit of the smoothed mosaic against one reference: bins, line, or why there is none.
struct Fit {
    cmp: Comparison,
    range: [f64; 2],
    bins: Vec<Bin>,
    line: crate::kernels::anchor::LineFit,
}

fn fit(a: &AnchorConfig, cmp: Comparison, range: [f64; 2]) -> Result<Fit, (Comparison, String)> {
    let range = if a.auto_range {
        match auto_range(&cmp.x, a.bin_width_mjysr) {
            Some((lo, hi)) => [lo, hi],
            None => return Err((cmp, "no pixel pairs".into())),
        }
    } else {
        range
    };
    let mut bins = bin_medians(&cmp.x, &cmp.y, range[0], range[1], a.bin_width_mjysr, a.min_bin_pixels);
    if bins.len() < MIN_BINS {
        let why = format!(
            "{} bins of {} MJy/sr with at least {} pixels in the range {:?} MJy/sr (need {MIN_BINS}; the \
             reference spans {:.3} to {:.3} MJy/sr over the mosaic: set anchor.range_mjysr or anchor.auto_range)",
            bins.len(),
            a.bin_width_mjysr,
            a.min_bin_pixels,
            range,
            cmp.x.iter().copied().fold(f64::INFINITY, f64::min),
            cmp.x.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        return Err((cmp, why));
    }
    let bx: Vec<f64> = bins.iter().map(|b| b.x_median).collect();
    let by: Vec<f64> = bins.iter().map(|b| b.median).collect();
    let Some(line) = clipped_line_fit(&bx, &by, a.clip_sigma, a.clip_iterations) else {
        return Err((cmp, "the bin medians give no line".into()));
    };
    if line.used.iter().filter(|u| **u).count() < MIN_BINS {
        return Err((cmp, format!("fewer than {MIN_BINS} bins survive the clipping")));
    }
    for (b, u) in bins.iter_mut().zip(&line.used) {
        b.used = *u;
    }
    Ok(Fit { cmp, range, bins, line })
}

/// Draw the picture of Figure 8.
fn picture(path: &Path, band: &str, rname: &str, fwhm: f64, f: &Fit, offset: f64) -> crate::Result<()> {
    let stride = f.cmp.x.len().div_ceil(MAX_PLOT_POINTS).max(1);
    let px: Vec<f64> = f.cmp.x.iter().step_by(stride).copied().collect();
    let py: Vec<f64> = f.cmp.y.iter().step_by(stride).copied().collect();
    let bins: Vec<crate::io::plot::BinPoint> = f
        .bins
        .iter()
        .map(|b| crate::io::plot::BinPoint { x: b.x_median, y: b.median, y_lo: b.p16, y_hi: b.p84, used: b.used })
        .collect();
    let notes = vec![
        format!("slope {:.4} +- {:.4}", f.line.slope, f.line.slope_err),
        format!("intercept {:.4} +- {:.4} MJy/sr", f.line.intercept, f.line.intercept_err),
        format!("offset added {offset:+.4} MJy/sr"),
    ];
    crate::io::plot::line_fit_figure(
        path,
        &format!("{band} vs {rname}, both at {fwhm:.2}\""),
        &format!("{rname} [MJy/sr]"),
        &format!("{band} [MJy/sr]"),
        (&px, &py),
        &bins,
        (f.line.slope, f.line.intercept),
        &notes,
    )?;
    Ok(())
}

/// Anchor the band (rank 0's work).
fn run(ctx: &Ctx, b: &Band, output: &Path) -> crate::Result<AnchorReport> {
    let cfg = ctx.cfg;
    let a = &cfg.anchor;
    let plan = &b.plan;
    let band = plan.band.clone();
    let dir = cfg.run.output_dir.join(STAGE);
    crate::io::make_dir(&dir)?;
    let store = super::drizzle::store_path(&cfg.run.output_dir, &band);
    let hdr = read_header(output, "SCI").with_context(|| format!("the mosaic to anchor, {}", output.display()))?;
    let wcs = TanSip::from_cards(&hdr).with_context(|| format!("{} [SCI]: WCS", output.display()))?;
    let band_fwhm = super::align::fwhm_arcsec(None, &band, plan.instrument);
    let store_rows = |r: Range<usize>| -> crate::Result<(Array2<f32>, Array2<f32>)> {
        let sci = crate::io::hdf5::read_rows_f32(&store, super::drizzle::GROUP, "SCI", r.clone())?;
        let wht = crate::io::hdf5::read_rows_f32(&store, super::drizzle::GROUP, "WHT", r)?;
        Ok((sci, wht))
    };
    let mut mosaic = Mosaic {
        ny: plan.grid.ny,
        wcs: wcs.clone(),
        pixscale_arcsec: plan.grid.pixscale_arcsec,
        fwhm_arcsec: band_fwhm,
        mask_above: a.mask_above_mjysr,
        rows: Box::new(store_rows),
    };
    let rb = reference_band(a, plan.instrument).to_string();
    let mut tried = vec![];
    let (mode, reference, target_fwhm, from, sm_fwhm, factor, f, ref_off) = if band == rb {
        // external: the references in order of preference
        let mut found = None;
        for path in &a.references {
            let (img, cards) = read_image(path).with_context(|| format!("anchor reference {}", path.display()))?;
            // TAN (IRAC mosaics) or SIN (WISE atlas tiles)
            let rwcs =
                SkyWcs::from_cards(&cards).with_context(|| format!("anchor reference {}: its WCS", path.display()))?;
            let (fwhm, from) = match real_card(&cards, "BMAJ") {
                Some(d) if d > 0.0 => (d * 3600.0, "BMAJ".to_string()),
                _ => match a.reference_fwhm_arcsec {
                    Some(v) => (v, "anchor.reference_fwhm_arcsec".to_string()),
                    None => crate::bail!(
                        "anchor reference {}: no BMAJ (deg) in its header and anchor.reference_fwhm_arcsec = 0: \
                         its resolution is unknown",
                        path.display()
                    ),
                },
            };
            crate::ensure!(
                fwhm > band_fwhm,
                "anchor reference {}: its resolution ({fwhm:.3}\") is not coarser than {band}'s PSF ({band_fwhm:.3}\")",
                path.display()
            );
            let r = OnSky { data: img.mapv(|v| v as f64), foot: img.mapv(|v| v.is_finite()), wcs: rwcs, factor: 1 };
            // a reference pixel is the mean of its beam-smoothed sky over the pixel: a box of the
            // reference pixel's side, variance side^2 / 12, on top of the beam
            let rpix = r.wcs.pixel_scale_arcsec();
            let (m, sm) = smooth_to(&mut mosaic, fwhm, rpix * rpix / 12.0)?;
            let cmp = compare(&m, &r);
            crate::ensure!(
                cmp.coverage >= a.min_coverage,
                "anchor reference {} covers {:.1}% of the mosaic {} (anchor.min_coverage = {:.0}%): a reference \
                 must cover the mosaic",
                path.display(),
                100.0 * cmp.coverage,
                output.display(),
                100.0 * a.min_coverage
            );
            let name = short_name(path).to_ascii_lowercase();
            let range = if name.contains("w3") || name.contains("wise3") { a.range_wise3_mjysr } else { a.range_mjysr };
            match fit(a, cmp, range) {
                Ok(f) => {
                    tried.push(Tried { reference: path.clone(), outcome: "fit".into() });
                    found = Some((path.clone(), fwhm, from, sm, m.factor, f));
                    break;
                }
                Err((_, why)) => {
                    tracing::warn!("[anchor] {}: no fit: {why}", path.display());
                    tried.push(Tried { reference: path.clone(), outcome: why });
                }
            }
        }
        let Some((p, fwhm, from, sm, factor, f)) = found else {
            crate::bail!(
                "no anchor reference gave a fit for {band}: {}",
                tried
                    .iter()
                    .map(|t| format!("{}: {}", t.reference.display(), t.outcome))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        };
        ("external", p, fwhm, from, sm, factor, f, None)
    } else {
        // internal: against the reference band's anchored mosaic, both at internal_fwhm_arcsec
        let rpath = a.reference_band_mosaic.clone().expect("skip_reason checked");
        let rhdr =
            read_header(&rpath, "SCI").with_context(|| format!("anchor.reference_band_mosaic {}", rpath.display()))?;
        let rprim = read_header(&rpath, "PRIMARY")
            .with_context(|| format!("anchor.reference_band_mosaic {}", rpath.display()))?;
        let rfilter = match rprim.get("FILTER") {
            Some(CardValue::Text(t)) => t.trim().to_ascii_uppercase(),
            _ => rb.clone(),
        };
        crate::ensure!(
            rfilter == rb,
            "anchor.reference_band_mosaic {} holds {rfilter}, not {band}'s reference band {rb}",
            rpath.display()
        );
        let ref_off = real_card(&rprim, "ANCHOR");
        if ref_off.is_none() {
            tracing::warn!(
                "[anchor] {} has no ANCHOR card: it was not anchored, so {band} is only tied to {rb}'s level",
                rpath.display()
            );
        }
        let ref_err = real_card(&rprim, "ANCHERR");
        let rwcs = TanSip::from_cards(&rhdr).with_context(|| format!("{} [SCI]: WCS", rpath.display()))?;
        let rshape = match (rhdr.get("NAXIS1"), rhdr.get("NAXIS2")) {
            (Some(CardValue::Int(nx)), Some(CardValue::Int(ny))) => (*ny as usize, *nx as usize),
            _ => crate::bail!("{} [SCI]: no NAXIS1/NAXIS2", rpath.display()),
        };
        let rp = rpath.clone();
        let mut rmosaic = Mosaic {
            ny: rshape.0,
            pixscale_arcsec: rwcs.pixel_scale_arcsec(),
            wcs: rwcs,
            fwhm_arcsec: super::align::fwhm_arcsec(None, &rb, Instrument::of_filter(&rb).unwrap_or(plan.instrument)),
            mask_above: a.mask_above_mjysr,
            rows: Box::new(move |r: Range<usize>| -> crate::Result<(Array2<f32>, Array2<f32>)> {
                let nx = rshape.1;
                Ok((read_region_f32(&rp, "SCI", r.clone(), 0..nx)?, read_region_f32(&rp, "WHT", r, 0..nx)?))
            }),
        };
        let t = a.internal_fwhm_arcsec;
        let (r, _) = smooth_to(&mut rmosaic, t, 0.0)?;
        let (m, sm) = smooth_to(&mut mosaic, t, 0.0)?;
        let cmp = compare(&m, &r);
        crate::ensure!(
            cmp.coverage >= a.min_coverage,
            "anchor.reference_band_mosaic {} covers {:.1}% of the mosaic {} (anchor.min_coverage = {:.0}%)",
            rpath.display(),
            100.0 * cmp.coverage,
            output.display(),
            100.0 * a.min_coverage
        );
        let f = fit(a, cmp, a.range_mjysr)
            .map_err(|(_, why)| crate::err!("{band} against {rb}'s mosaic {}: no fit: {why}", rpath.display()))?;
        tried.push(Tried { reference: rpath.clone(), outcome: "fit".into() });
        let factor = m.factor;
        ("internal", rpath, t, "anchor.internal_fwhm_arcsec".into(), sm, factor, f, ref_off.map(|o| (o, ref_err)))
    };
    let offset = -f.line.intercept;
    let ref_err = ref_off.and_then(|(_, e)| e).unwrap_or(0.0);
    let offset_err = (f.line.intercept_err.powi(2) + (f.line.slope * ref_err).powi(2)).sqrt();
    let rname = short_name(&reference);
    picture(&dir.join(format!("{band}_vs_{rname}.png")), &band, &rname, target_fwhm, &f, offset)?;
    let report = AnchorReport {
        band: band.clone(),
        mode: mode.into(),
        reference: reference.clone(),
        reference_name: rname.clone(),
        target_fwhm_arcsec: target_fwhm,
        target_fwhm_from: from,
        band_fwhm_arcsec: band_fwhm,
        block_factor: factor,
        smoothing_fwhm_arcsec: sm_fwhm,
        coverage: f.cmp.coverage,
        n_pairs: f.cmp.x.len(),
        range_mjysr: f.range,
        auto_range: a.auto_range,
        bins: f.bins.clone(),
        slope: f.line.slope,
        slope_err: f.line.slope_err,
        intercept_mjysr: f.line.intercept,
        intercept_err_mjysr: f.line.intercept_err,
        reference_band_offset_mjysr: ref_off.map(|(o, _)| o),
        reference_band_offset_err_mjysr: ref_off.and_then(|(_, e)| e),
        offset_mjysr: offset,
        offset_err_mjysr: offset_err,
        tried,
    };
    crate::io::json::write_json(&dir.join(REPORT), &report)?;

    // the anchored mosaic: the store's SCI plus the offset where there are data
    let cards = vec![
        card_real("ANCHOR", offset, "[MJy/sr] background offset added by anchoring"),
        card_real("ANCHERR", offset_err, "[MJy/sr] uncertainty of ANCHOR"),
        card_text("ANCHREF", &rname, "anchoring reference"),
    ];
    let history = vec![format!(
        "anchor: {offset:+.6} MJy/sr added ({mode}, {band} = {:.5} x {rname} {:+.5} at {target_fwhm:.2} arcsec)",
        f.line.slope, f.line.intercept
    )];
    let off32 = offset as f32;
    crate::io::fits::rewrite_ext_f32(
        output,
        "SCI",
        ROW_BLOCK,
        |r: Range<usize>| -> crate::Result<Array2<f32>> {
            let mut sci = crate::io::hdf5::read_rows_f32(&store, super::drizzle::GROUP, "SCI", r.clone())?;
            let wht = crate::io::hdf5::read_rows_f32(&store, super::drizzle::GROUP, "WHT", r)?;
            ndarray::Zip::from(&mut sci).and(&wht).for_each(|s, &w| {
                if w > 0.0 && s.is_finite() {
                    *s += off32;
                }
            });
            Ok(sci)
        },
        &cards,
        &history,
    )
    .with_context(|| format!("writing the anchored mosaic {}", output.display()))?;
    Ok(report)
}

/// The `anchor` stage for the runner: rank 0 fits and writes, the others wait for the outcome.
///
/// # Errors
/// No `-o` mosaic, an unreadable or non-covering reference (named), no fit with any reference; the
/// same error on every rank.
pub(crate) fn stage(ctx: &Ctx, b: &Band) -> crate::Result<Written> {
    let Some(output) = ctx.output else {
        crate::bail!("anchor needs the mosaic to anchor: give -o MOSAIC.fits");
    };
    let report = ctx.comm.on_root_then_broadcast(0, || -> Result<AnchorReport, String> {
        let t = std::time::Instant::now();
        let r = run(ctx, b, output).map_err(|e| format!("{e:#}"))?;
        tracing::info!(
            "[anchor] {}: {:+.4} +- {:.4} MJy/sr added ({} against {}: slope {:.4}, {} bins) in {:.1} s",
            r.band,
            r.offset_mjysr,
            r.offset_err_mjysr,
            r.mode,
            r.reference_name,
            r.slope,
            r.bins.iter().filter(|b| b.used).count(),
            t.elapsed().as_secs_f64()
        );
        Ok(r)
    })?;
    let _ = report;
    Ok(Written { rewrote_mosaic: true, ..Default::default() })
}
