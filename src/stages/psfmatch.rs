//! Stage `psfmatch`: the mosaic convolved to other resolutions (SPEC stage psfmatch; pjpipe
//! psf_matching with Aniano et al. 2011 kernels, `kernels::psfmatch`), and the noise curve.
//!
//! By step:
//! 1. Rank 0 finds the band's PSF image in `psfmatch.psf` (FITS, `PIXELSCL` or `PIXSCALE` in
//!    arcsec; the file whose FILTER card, else whose name, names the band; a single file serves any
//!    band); without one it warns and uses the band's analytic Gaussian model (the PHANGS FWHM
//!    table) at a quarter of the mosaic's pixel scale.
//! 2. Rank 0 builds one kernel per target of `psfmatch.targets` (a Gaussian, or another band's PSF
//!    found the same way), writes it to `psfmatch/kernels/<band>_to_<target>.fits` (W- and D in the
//!    header), resamples it to the mosaic's pixel scale, writes that too (`..._mosaic.fits`, the
//!    kernel the convolution uses, for other tools) and broadcasts it (bytes, so every rank holds
//!    the same bits).
//! 3. The convolution is distributed: the mosaic's rows are cut into chunks of `psfmatch.chunk_rows`
//!    (independent of the rank count), dealt round-robin; each owner reads its chunks' SCI and ERR,
//!    the owners exchange halo rows as wide as the largest kernel radius (`Comm::exchange`), and
//!    each chunk is convolved by one FFT (`kernels::psfmatch::convolve_rows`). Rank 0 gathers the
//!    chunks in order and writes `<stem>_at<target>.fits` beside the `-o` mosaic (SCI, ERR, the
//!    celestial WCS, BMAJ/BMIN/BPA for Gaussian targets). A band target whose own mosaic exists
//!    beside this one (the file name with the band substituted), or in the sibling band folder of
//!    `tessera run`'s layout, is regridded onto its grid.
//! 4. Rank 0 writes `psfmatch/safe_fwhm.json` (the very safe, safe and aggressive Gaussian FWHMs of
//!    the band's PSF), `psfmatch/noise_curve.csv` and `.png` (the sky noise after Gaussian smoothing
//!    of increasing FWHM, beside the uncorrelated law) and `psfmatch/psfmatch.json`.

use super::runner::{Band, Ctx, Written};
use crate::config::Instrument;
use crate::dist::{Comm, CommExt};
use crate::error::Context;
use crate::geom::wcs::{CardValue, TanSip};
use crate::io::fits::{card_real, card_text, read_header, read_image, read_region_f32, ExtKind, ExtSpec, MosaicWriter};
use crate::kernels::psfmatch::{
    self as pm, kernel_at_scale, make_kernel, safe_fwhm, KernelParams, MatchKernel, PsfImage, SafeFwhm, Target,
};
use ndarray::{s, Array2};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A chunk this rank owns: its first row with halo, SCI and ERR rows with halos.
type HaloChunk = (usize, Array2<f32>, Array2<f32>);
/// SCI and ERR rows (a chunk's, or the whole convolved image).
type Planes = (Array2<f32>, Array2<f32>);

/// Stage name: CLI, TOML section, output folder.
pub const STAGE: &str = "psfmatch";

/// One target in `psfmatch/psfmatch.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    pub target: String,
    /// The PSF-matched mosaic.
    pub product: PathBuf,
    /// The kernel FITS (at the source PSF's pixel scale).
    pub kernel_file: PathBuf,
    /// Where the target PSF came from (a file, or the analytic model).
    pub target_psf: String,
    pub source_fwhm_arcsec: f64,
    pub target_fwhm_arcsec: f64,
    pub w_minus: f64,
    pub d: f64,
    /// Kernel radius at the mosaic's pixel scale, pixels (the halo width).
    pub kernel_radius_px: usize,
    /// The band mosaic whose grid the result was regridded onto, if any.
    pub regridded_onto: Option<PathBuf>,
}

/// `psfmatch/psfmatch.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PsfmatchFile {
    pub band: String,
    pub mosaic: PathBuf,
    /// The band's PSF: a file, or the analytic model.
    pub psf: String,
    pub chunk_rows: usize,
    pub chunks: usize,
    /// The mosaic's pixel scale, arcsec.
    pub pixel_scale_arcsec: f64,
    /// The largest smoothing FWHM of the noise curve, mosaic pixels (0 without a curve).
    pub noise_max_fwhm_px: f64,
    pub targets: Vec<TargetReport>,
    pub warnings: Vec<String>,
}

/// A PSF found for a band: the image and where it came from.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct FoundPsf {
    ny: usize,
    nx: usize,
    data: Vec<f64>,
    scale_arcsec: f64,
    source: String,
    /// The file, when it came from one.
    file: Option<PathBuf>,
}

impl FoundPsf {
    fn image(&self) -> PsfImage {
        PsfImage {
            data: Array2::from_shape_vec((self.ny, self.nx), self.data.clone()).expect("shape"),
            scale_arcsec: self.scale_arcsec,
        }
    }
}

fn card_f64(cards: &BTreeMap<String, CardValue>, key: &str) -> Option<f64> {
    match cards.get(key) {
        Some(CardValue::Real(v)) => Some(*v),
        Some(CardValue::Int(v)) => Some(*v as f64),
        _ => None,
    }
}

fn card_str(cards: &BTreeMap<String, CardValue>, key: &str) -> Option<String> {
    match cards.get(key) {
        Some(CardValue::Text(v)) => Some(v.trim().to_string()),
        _ => None,
    }
}

/// Read a PSF image: the primary HDU, pixel scale from `PIXELSCL` (stpsf) or `PIXSCALE`.
///
/// # Errors
/// An unreadable file, or one without a pixel scale, naming the file and the keywords.
pub fn read_psf(path: &Path) -> crate::Result<PsfImage> {
    let (img, cards) = read_image(path).with_context(|| format!("reading the PSF image {}", path.display()))?;
    let scale = card_f64(&cards, "PIXELSCL").or_else(|| card_f64(&cards, "PIXSCALE")).ok_or_else(|| {
        crate::err!(
            "{}: the PSF image has no pixel scale: neither PIXELSCL nor PIXSCALE (arcsec per pixel) is in its primary \
             header",
            path.display()
        )
    })?;
    crate::ensure!(
        scale.is_finite() && scale > 0.0,
        "{}: PIXELSCL/PIXSCALE = {scale} is not a positive pixel scale in arcsec",
        path.display()
    );
    Ok(PsfImage { data: img.mapv(f64::from), scale_arcsec: scale })
}

/// The file of `files` that holds `band`'s PSF: its FILTER card names the band, else its file name
/// does; a single file naming no other band serves any band.
fn psf_file_for(files: &[PathBuf], band: &str) -> crate::Result<Option<PathBuf>> {
    let filter_of = |p: &Path| -> crate::Result<Option<String>> {
        let h = read_header(p, "PRIMARY").with_context(|| format!("reading the PSF image {}", p.display()))?;
        Ok(card_str(&h, "FILTER"))
    };
    let want = band.to_ascii_uppercase();
    let mut named = vec![];
    for f in files {
        match filter_of(f)? {
            Some(fl) if fl.eq_ignore_ascii_case(&want) => return Ok(Some(f.clone())),
            Some(_) => {}
            None => named.push(f.clone()),
        }
    }
    if let Some(f) = files.iter().find(|f| {
        f.file_name().is_some_and(|n| n.to_string_lossy().to_ascii_uppercase().contains(&want))
            && filter_of(f).ok().flatten().is_none()
    }) {
        return Ok(Some(f.clone()));
    }
    if files.len() == 1 && named.len() == 1 {
        let n = files[0].file_name().map(|n| n.to_string_lossy().to_ascii_uppercase()).unwrap_or_default();
        let names_other = n
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| w.len() >= 4 && w.starts_with('F') && Instrument::of_filter(w).is_some() && w != want);
        if !names_other {
            return Ok(Some(files[0].clone()));
        }
    }
    Ok(None)
}

/// The band's analytic PSF: a Gaussian of the PHANGS FWHM, at `scale_arcsec`, 10 FWHMs across.
fn analytic_psf(band: &str, scale_arcsec: f64) -> crate::Result<(PsfImage, f64)> {
    let inst = Instrument::of_filter(band).ok_or_else(|| crate::err!("{band}: not a NIRCam or MIRI band"))?;
    let fwhm = super::simulate::survey::psf_fwhm_arcsec(band, inst);
    let n = ((10.0 * fwhm / scale_arcsec).ceil() as usize).max(41) | 1;
    Ok((PsfImage { data: pm::kernel::gaussian_image(n, fwhm / scale_arcsec), scale_arcsec }, fwhm))
}

/// Find and read `band`'s PSF (warning into `warnings` when the analytic model stands in).
fn find_psf(files: &[PathBuf], band: &str, mosaic_scale: f64, warnings: &mut Vec<String>) -> crate::Result<FoundPsf> {
    let (img, source, file) = match psf_file_for(files, band)? {
        Some(f) => (read_psf(&f)?, f.display().to_string(), Some(f)),
        None => {
            let (img, fwhm) = analytic_psf(band, mosaic_scale / 4.0)?;
            let w = format!(
                "no PSF image for {band} (psfmatch.psf, --psf): using its analytic model, a Gaussian of FWHM {fwhm:.3} \
                 arcsec"
            );
            tracing::warn!("[{STAGE}] {w}");
            warnings.push(w);
            (img, format!("analytic Gaussian, FWHM {fwhm:.4} arcsec"), None)
        }
    };
    Ok(FoundPsf {
        ny: img.data.nrows(),
        nx: img.data.ncols(),
        data: img.data.iter().copied().collect(),
        scale_arcsec: img.scale_arcsec,
        source,
        file,
    })
}

/// What rank 0 decides before the convolution.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Setup {
    ny: usize,
    nx: usize,
    scale_arcsec: f64,
    /// Kernel sizes at the mosaic scale, per target (the kernels follow as bytes).
    kernel_n: Vec<usize>,
    reports: Vec<TargetReport>,
    psf_source: String,
    psf_fwhm_arcsec: f64,
    warnings: Vec<String>,
}

/// The rows `[y0, y1)` of chunk `i`.
fn chunk_rows(i: usize, h: usize, ny: usize) -> (usize, usize) {
    (i * h, ((i + 1) * h).min(ny))
}

fn f32_bytes(out: &mut Vec<u8>, a: &[f32]) {
    for v in a {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn read_u64(b: &[u8], at: &mut usize) -> usize {
    let v = u64::from_le_bytes(b[*at..*at + 8].try_into().expect("8 bytes")) as usize;
    *at += 8;
    v
}

fn read_f32s(b: &[u8], at: &mut usize, n: usize) -> Vec<f32> {
    let v = b[*at..*at + 4 * n].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    *at += 4 * n;
    v
}

/// The chunks' rows with halos: for each chunk this rank owns, rows `[y0 - r, y1 + r)` (within the
/// image) of SCI and ERR, its own rows read from `mosaic`, the halo rows received from the owners
/// of the neighbouring chunks.
///
/// # Errors
/// A read failing on any rank (all ranks return it).
pub fn chunks_with_halos(
    comm: &dyn Comm,
    mosaic: &Path,
    ny: usize,
    nx: usize,
    h: usize,
    r: usize,
) -> crate::Result<BTreeMap<usize, HaloChunk>> {
    let nchunks = ny.div_ceil(h);
    let owner = |i: usize| i % comm.size();
    let me = comm.rank();
    let mine: Vec<usize> = (0..nchunks).filter(|&i| owner(i) == me).collect();
    // own rows
    let read = || -> crate::Result<BTreeMap<usize, Planes>> {
        let mut m = BTreeMap::new();
        for &i in &mine {
            let (y0, y1) = chunk_rows(i, h, ny);
            let sci = read_region_f32(mosaic, "SCI", y0..y1, 0..nx)?;
            let err = read_region_f32(mosaic, "ERR", y0..y1, 0..nx)?;
            m.insert(i, (sci, err));
        }
        Ok(m)
    };
    let core = comm.agree(read()).map_err(|e| crate::err!("reading {}: {e}", mosaic.display()))?;
    let need = |i: usize| {
        let (y0, y1) = chunk_rows(i, h, ny);
        (y0.saturating_sub(r), (y1 + r).min(ny))
    };
    // halo strips to the owners of the chunks that need them
    let mut sends: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    for (&d, (sci, err)) in &core {
        let (d0, d1) = chunk_rows(d, h, ny);
        for c in 0..nchunks {
            if owner(c) == me {
                continue;
            }
            let (a, b) = need(c);
            let (lo, hi) = (a.max(d0), b.min(d1));
            if lo >= hi {
                continue;
            }
            let buf = sends.entry(owner(c)).or_default();
            for v in [c, lo, hi - lo] {
                buf.extend_from_slice(&(v as u64).to_le_bytes());
            }
            f32_bytes(buf, sci.slice(s![lo - d0..hi - d0, ..]).as_standard_layout().as_slice().expect("contiguous"));
            f32_bytes(buf, err.slice(s![lo - d0..hi - d0, ..]).as_standard_layout().as_slice().expect("contiguous"));
        }
    }
    let received = comm.exchange(sends.into_iter().collect());
    // assemble each chunk's rows with halos
    let mut out = BTreeMap::new();
    for &c in &mine {
        let (a, b) = need(c);
        out.insert(c, (a, Array2::from_elem((b - a, nx), f32::NAN), Array2::from_elem((b - a, nx), f32::NAN)));
    }
    let mut place = |c: usize, y: usize, sci: ndarray::ArrayView2<f32>, err: ndarray::ArrayView2<f32>| {
        if let Some((a, bs, be)) = out.get_mut(&c) {
            let n = sci.nrows();
            bs.slice_mut(s![y - *a..y - *a + n, ..]).assign(&sci);
            be.slice_mut(s![y - *a..y - *a + n, ..]).assign(&err);
        }
    };
    for (&d, (sci, err)) in &core {
        let (d0, d1) = chunk_rows(d, h, ny);
        for &c in &mine {
            let (a, b) = need(c);
            let (lo, hi) = (a.max(d0), b.min(d1));
            if lo < hi {
                place(c, lo, sci.slice(s![lo - d0..hi - d0, ..]), err.slice(s![lo - d0..hi - d0, ..]));
            }
        }
    }
    for (_, bytes) in received {
        let mut at = 0;
        while at < bytes.len() {
            let c = read_u64(&bytes, &mut at);
            let y = read_u64(&bytes, &mut at);
            let n = read_u64(&bytes, &mut at);
            let sci = Array2::from_shape_vec((n, nx), read_f32s(&bytes, &mut at, n * nx)).expect("shape");
            let err = Array2::from_shape_vec((n, nx), read_f32s(&bytes, &mut at, n * nx)).expect("shape");
            place(c, y, sci.view(), err.view());
        }
    }
    Ok(out)
}

/// Convolve the mosaic's SCI and ERR with each kernel, distributed as the module doc says; rank 0
/// returns the whole images (in target order), other ranks `None`.
///
/// # Errors
/// Reads failing on any rank.
pub fn convolve_distributed(
    comm: &dyn Comm,
    mosaic: &Path,
    ny: usize,
    nx: usize,
    h: usize,
    kernels: &[Array2<f64>],
) -> crate::Result<Option<Vec<Planes>>> {
    let rmax = kernels.iter().map(|k| k.nrows() / 2).max().unwrap_or(0);
    let chunks = chunks_with_halos(comm, mosaic, ny, nx, h, rmax)?;
    let mut results = vec![];
    for k in kernels {
        let r = k.nrows() / 2;
        let mut mine = vec![];
        for (&c, (a, sci, err)) in &chunks {
            let (y0, y1) = chunk_rows(c, h, ny);
            let (b0, b1) = (y0.saturating_sub(r), (y1 + r).min(ny));
            let view = s![b0 - a..b1 - a, ..];
            let out = pm::convolve_rows(sci.slice(view), err.slice(view), (y0 - b0)..(y1 - b0), k.view());
            for v in [c as u64, y0 as u64, (y1 - y0) as u64] {
                mine.extend_from_slice(&v.to_le_bytes());
            }
            f32_bytes(&mut mine, out.sci.as_slice().expect("contiguous"));
            f32_bytes(&mut mine, out.err.as_slice().expect("contiguous"));
        }
        let all = comm.gather_bytes(0, &mine);
        if let Some(parts) = all {
            let mut sci = Array2::from_elem((ny, nx), f32::NAN);
            let mut err = Array2::from_elem((ny, nx), f32::NAN);
            for bytes in parts {
                let mut at = 0;
                while at < bytes.len() {
                    let _c = read_u64(&bytes, &mut at);
                    let y = read_u64(&bytes, &mut at);
                    let n = read_u64(&bytes, &mut at);
                    let a = Array2::from_shape_vec((n, nx), read_f32s(&bytes, &mut at, n * nx)).expect("shape");
                    let b = Array2::from_shape_vec((n, nx), read_f32s(&bytes, &mut at, n * nx)).expect("shape");
                    sci.slice_mut(s![y..y + n, ..]).assign(&a);
                    err.slice_mut(s![y..y + n, ..]).assign(&b);
                }
            }
            results.push((sci, err));
        }
    }
    Ok((comm.rank() == 0).then_some(results))
}

/// `<stem>_at<target>.fits` beside the mosaic.
pub fn product_path(mosaic: &Path, target: &str) -> PathBuf {
    let stem = mosaic.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    mosaic.with_file_name(format!("{stem}_at{target}.fits"))
}

/// The mosaic of `band` for `mosaic` (of `this_band`), if it exists: its file name with the band's
/// name replaced, beside it, or in the sibling folder named after the band when `mosaic`'s folder is
/// named after `this_band` (`tessera run`'s `<target>/<band>/` layout).
fn band_mosaic(mosaic: &Path, this_band: &str, band: &str) -> Option<PathBuf> {
    let swap = |name: &str| -> Option<String> {
        let (lo, up) = (this_band.to_ascii_lowercase(), this_band.to_ascii_uppercase());
        if name.contains(&up) {
            Some(name.replace(&up, &band.to_ascii_uppercase()))
        } else if name.contains(&lo) {
            Some(name.replace(&lo, &band.to_ascii_lowercase()))
        } else {
            None
        }
    };
    let name = swap(&mosaic.file_name()?.to_string_lossy())?;
    let beside = mosaic.with_file_name(&name);
    let folder = mosaic.parent()?;
    let sibling = folder
        .file_name()
        .and_then(|f| swap(&f.to_string_lossy()))
        .and_then(|f| folder.parent().map(|g| g.join(f).join(&name)));
    [Some(beside), sibling].into_iter().flatten().find(|p| p != mosaic && p.is_file())
}

/// Kernel file name: `<band>_to_<target>.fits`, lower case, '.' as 'p' (pjpipe's convention).
fn kernel_file_name(band: &str, target: &str) -> String {
    format!("{}_to_{}.fits", band.to_ascii_lowercase(), target.to_ascii_lowercase().replace('.', "p"))
}

/// The kernel resampled to the mosaic's pixel scale: `<band>_to_<target>_mosaic.fits`.
pub fn mosaic_kernel_file_name(band: &str, target: &str) -> String {
    kernel_file_name(band, target).replace(".fits", "_mosaic.fits")
}

fn write_kernel(path: &Path, k: &MatchKernel, band: &str, target: &str) -> crate::Result<()> {
    let n = k.data.nrows();
    let c = (n / 2 + 1) as f64;
    let cards = vec![
        card_text("SOURCE", band, "source PSF (band)"),
        card_text("TARGET", target, "target PSF"),
        card_real("PIXELSCL", k.scale_arcsec, "[arcsec/pixel] kernel pixel scale"),
        card_real("WMINUS", k.w_minus, "Aniano+2011 W-: weight of the negative lobes"),
        card_real("D", k.d, "Aniano+2011 D: sum |K*source - target|"),
        card_real("FWHMSRC", k.source_fwhm_arcsec, "[arcsec] source PSF FWHM"),
        card_real("FWHMTGT", k.target_fwhm_arcsec, "[arcsec] target PSF FWHM"),
        card_text("NORMALIZ", "SUM", "kernel normalised to unit sum"),
        card_text("CTYPE1", "RA---TAN", ""),
        card_text("CTYPE2", "DEC--TAN", ""),
        card_real("CRPIX1", c, ""),
        card_real("CRPIX2", c, ""),
        card_real("CDELT1", -k.scale_arcsec / 3600.0, "[deg]"),
        card_real("CDELT2", k.scale_arcsec / 3600.0, "[deg]"),
    ];
    crate::io::fits::write_image(path, &k.data.mapv(|v| v as f32), &cards, &[])?;
    Ok(())
}

/// Write a PSF-matched mosaic (rank 0).
#[allow(clippy::too_many_arguments)]
fn write_product(
    path: &Path,
    sci: &Array2<f32>,
    err: &Array2<f32>,
    wcs_cards: &[crate::io::fits::Card],
    band: &str,
    target: &crate::config::PsfTarget,
    rep: &TargetReport,
    history: &[String],
) -> crate::Result<()> {
    let (ny, nx) = sci.dim();
    let with_wcs = |unit: &str| {
        let mut c = vec![card_text("BUNIT", unit, "physical units of the array values")];
        c.extend(wcs_cards.iter().cloned());
        c
    };
    let exts = vec![
        ExtSpec { name: "SCI".into(), kind: ExtKind::F32, planes: 1, cards: with_wcs("MJy/sr") },
        ExtSpec { name: "ERR".into(), kind: ExtKind::F32, planes: 1, cards: with_wcs("MJy/sr") },
    ];
    let mut primary = vec![
        card_text("BAND", band, "tessera band"),
        card_text("PSFMATCH", &target.name, "resolution matched to"),
        card_real("WMINUS", rep.w_minus, "kernel W- (Aniano+2011)"),
        card_real("KERNEL_D", rep.d, "kernel D (Aniano+2011)"),
        card_text("ORIGIN", "TESSERA", "PSF-matched by tessera"),
    ];
    if let Some(f) = target.gaussian_fwhm_arcsec {
        primary.push(card_real("BMAJ", f / 3600.0, "[deg] beam major axis (FWHM)"));
        primary.push(card_real("BMIN", f / 3600.0, "[deg] beam minor axis (FWHM)"));
        primary.push(card_real("BPA", 0.0, "[deg] beam position angle"));
    }
    let mut w = MosaicWriter::create(path, ny, nx, &primary, history, exts)
        .with_context(|| format!("creating {}", path.display()))?;
    let block = 512;
    let mut y = 0;
    while y < ny {
        let y1 = (y + block).min(ny);
        w.write_rows_f32("SCI", y, sci.slice(s![y..y1, ..]))?;
        w.write_rows_f32("ERR", y, err.slice(s![y..y1, ..]))?;
        y = y1;
    }
    w.finish()?;
    Ok(())
}

/// Run the stage.
///
/// # Errors
/// No `-o` mosaic, unreadable PSF files or one without a pixel scale, a PSF broader than a target,
/// reads and writes, naming the file.
pub fn stage(ctx: &Ctx, band: &Band) -> crate::Result<Written> {
    let comm = ctx.comm;
    let pcfg = &ctx.cfg.psfmatch;
    let mosaic = ctx.output.ok_or_else(|| crate::err!("psfmatch works on the mosaic: give it with -o"))?.to_path_buf();
    let dir = ctx.cfg.run.output_dir.join(STAGE);
    let bname = band.plan.band.clone();
    let params = KernelParams::default();
    // a band is not matched to its own PSF (a band list shared by an instrument's bands names it)
    let targets: Vec<&crate::config::PsfTarget> =
        pcfg.targets.iter().filter(|t| !t.name.eq_ignore_ascii_case(&bname)).collect();
    if targets.len() < pcfg.targets.len() && comm.rank() == 0 {
        tracing::info!("[{STAGE}] {bname} is not matched to its own PSF: that target is left out");
    }

    // 1-2: the PSF and the kernels (rank 0)
    let kernel_bytes = std::cell::RefCell::new(vec![]);
    let setup: Setup = comm.on_root_then_broadcast(0, || -> crate::Result<Setup> {
        crate::io::make_dir(&dir.join("kernels"))?;
        let h = read_header(&mosaic, "SCI").with_context(|| format!("reading the mosaic {}", mosaic.display()))?;
        let nx = card_f64(&h, "NAXIS1").ok_or_else(|| crate::err!("{}: SCI has no NAXIS1", mosaic.display()))? as usize;
        let ny = card_f64(&h, "NAXIS2").ok_or_else(|| crate::err!("{}: SCI has no NAXIS2", mosaic.display()))? as usize;
        let wcs = TanSip::from_cards(&h).map_err(|e| crate::err!("{}: SCI WCS: {e}", mosaic.display()))?;
        let scale = wcs.pixel_scale_arcsec();
        let mut warnings = vec![];
        let src = find_psf(&pcfg.psf, &bname, scale, &mut warnings)?;
        let src_img = src.image();
        let mut reports = vec![];
        let mut kernel_n = vec![];
        let mut psf_fwhm = f64::NAN;
        for t in &targets {
            let (target, target_src) = match t.gaussian_fwhm_arcsec {
                Some(f) => (Target::Gaussian { fwhm_arcsec: f }, format!("Gaussian, FWHM {f} arcsec")),
                None => {
                    let tp = find_psf(&pcfg.psf, &t.name, scale, &mut warnings)?;
                    (Target::Psf(tp.image()), tp.source.clone())
                }
            };
            let k = make_kernel(&src_img, &target, &params).map_err(|e| {
                crate::err!(
                    "{} to {}: {e}",
                    src.file.as_ref().map_or(src.source.clone(), |f| f.display().to_string()),
                    t.name
                )
            })?;
            psf_fwhm = k.source_fwhm_arcsec;
            let kfile = dir.join("kernels").join(kernel_file_name(&bname, &t.name));
            write_kernel(&kfile, &k, &bname, &t.name)?;
            let km = kernel_at_scale(&k, scale);
            // the kernel as the convolution below uses it, at the mosaic's pixel scale (for other
            // tools, e.g. scripts/bench --convolve): psfmatch/kernels/<band>_to_<target>_mosaic.fits
            let at_mosaic = MatchKernel { data: km.clone(), scale_arcsec: scale, ..k.clone() };
            write_kernel(
                &dir.join("kernels").join(mosaic_kernel_file_name(&bname, &t.name)),
                &at_mosaic,
                &bname,
                &t.name,
            )?;
            tracing::info!(
                "[{STAGE}] {bname} -> {}: kernel W- {:.3}, D {:.4}, {} px at the mosaic scale",
                t.name,
                k.w_minus,
                k.d,
                km.nrows()
            );
            kernel_n.push(km.nrows());
            kernel_bytes.borrow_mut().extend(km.iter().flat_map(|v| v.to_le_bytes()));
            reports.push(TargetReport {
                target: t.name.clone(),
                product: product_path(&mosaic, &t.name),
                kernel_file: kfile,
                target_psf: target_src,
                source_fwhm_arcsec: k.source_fwhm_arcsec,
                target_fwhm_arcsec: k.target_fwhm_arcsec,
                w_minus: k.w_minus,
                d: k.d,
                kernel_radius_px: km.nrows() / 2,
                regridded_onto: None,
            });
        }
        Ok(Setup {
            ny,
            nx,
            scale_arcsec: scale,
            kernel_n,
            reports,
            psf_source: src.source,
            psf_fwhm_arcsec: psf_fwhm,
            warnings,
        })
    })?;
    // the kernels' bits, from rank 0
    let mut kb = kernel_bytes.into_inner();
    comm.broadcast_bytes(0, &mut kb);
    let mut kernels = vec![];
    let mut at = 0;
    for &n in &setup.kernel_n {
        let v: Vec<f64> = kb[at..at + 8 * n * n]
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        at += 8 * n * n;
        kernels.push(Array2::from_shape_vec((n, n), v).expect("shape"));
    }

    // 3: the distributed convolution
    let (ny, nx) = (setup.ny, setup.nx);
    let results = convolve_distributed(comm, &mosaic, ny, nx, pcfg.chunk_rows, &kernels)?;

    // 4: products (rank 0)
    let products: Vec<PathBuf> = comm.on_root_then_broadcast(0, || -> crate::Result<Vec<PathBuf>> {
        let results = results.expect("rank 0 holds the results");
        let h = read_header(&mosaic, "SCI")?;
        let wcs = TanSip::from_cards(&h).map_err(|e| crate::err!("{}: SCI WCS: {e}", mosaic.display()))?;
        let mut reports = setup.reports.clone();
        let mut warnings = setup.warnings.clone();
        let mut history = ctx.prov.history();
        history.push(format!("psfmatch of {}", mosaic.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
        history.push(format!("band PSF: {}", setup.psf_source));
        let mut written = vec![];
        for ((t, rep), (sci, err)) in targets.iter().zip(reports.iter_mut()).zip(results) {
            let mut hist = history.clone();
            hist.push(format!("kernel {} W- {:.4} D {:.4}", rep.kernel_file.display(), rep.w_minus, rep.d));
            let (sci, err, cards) = match (t.gaussian_fwhm_arcsec, band_mosaic(&mosaic, &bname, &t.name)) {
                (None, Some(other)) => {
                    let oh = read_header(&other, "SCI")?;
                    let ow = TanSip::from_cards(&oh).map_err(|e| crate::err!("{}: SCI WCS: {e}", other.display()))?;
                    let onx = card_f64(&oh, "NAXIS1").unwrap_or(0.0) as usize;
                    let ony = card_f64(&oh, "NAXIS2").unwrap_or(0.0) as usize;
                    let map = |x: f64, y: f64| {
                        let (ra, dec) = ow.pixel_to_sky(x, y);
                        wcs.sky_to_pixel(ra, dec).ok()
                    };
                    let s2 = pm::regrid::regrid(sci.view(), ony, onx, map);
                    let e2 = pm::regrid::regrid(err.view(), ony, onx, map);
                    hist.push(format!("regridded onto {}", other.display()));
                    rep.regridded_onto = Some(other);
                    (s2, e2, ow.to_cards())
                }
                (None, None) => {
                    warnings.push(format!(
                        "{}: no {} mosaic beside {}: kept on this band's grid",
                        t.name,
                        t.name,
                        mosaic.display()
                    ));
                    (sci, err, wcs.to_cards())
                }
                _ => (sci, err, wcs.to_cards()),
            };
            write_product(&rep.product, &sci, &err, &cards, &bname, t, rep, &hist)?;
            written.push(rep.product.clone());
        }
        // safe FWHMs
        let src = find_psf(&pcfg.psf, &bname, setup.scale_arcsec, &mut vec![])?;
        let safe: SafeFwhm = safe_fwhm(&src.image(), &params).context("safe FWHM table")?;
        let mut table = BTreeMap::new();
        table.insert(bname.clone(), serde_json::json!({ "psf": setup.psf_source, "table": safe }));
        crate::io::json::write_json(&dir.join("safe_fwhm.json"), &table)?;
        // noise curve
        let noise_max_fwhm_px = if pcfg.noise_curve {
            noise_curve_products(&dir, &mosaic, ny, nx, setup.scale_arcsec, setup.psf_fwhm_arcsec, pcfg, &bname)?
        } else {
            0.0
        };
        let report = PsfmatchFile {
            band: bname.clone(),
            mosaic: mosaic.clone(),
            psf: setup.psf_source.clone(),
            chunk_rows: pcfg.chunk_rows,
            chunks: ny.div_ceil(pcfg.chunk_rows),
            pixel_scale_arcsec: setup.scale_arcsec,
            noise_max_fwhm_px,
            targets: reports,
            warnings,
        };
        crate::io::json::write_json(&dir.join("psfmatch.json"), &report)?;
        Ok(written)
    })?;
    Ok(Written { beside_mosaic: products, ..Default::default() })
}

/// `psfmatch/noise_curve.csv` and `.png` from the emptiest region of the mosaic; returns the largest
/// smoothing FWHM in pixels.
#[allow(clippy::too_many_arguments)]
fn noise_curve_products(
    dir: &Path,
    mosaic: &Path,
    ny: usize,
    nx: usize,
    scale: f64,
    psf_fwhm: f64,
    pcfg: &crate::config::PsfmatchConfig,
    band: &str,
) -> crate::Result<f64> {
    let side = pcfg.noise_region_px;
    let gmax = pcfg.targets.iter().filter_map(|t| t.gaussian_fwhm_arcsec).fold(0.0f64, f64::max);
    let fmax = if pcfg.noise_max_fwhm_arcsec > 0.0 { pcfg.noise_max_fwhm_arcsec } else { (2.0 * gmax).max(1.0) };
    // the emptiest square: of a 3 x 3 grid of candidates (corners, edges' middles, centre), the one
    // whose flattened sky has the lowest clipped standard deviation, among those with at least half
    // the data of the best-covered one (a galaxy's centre, its arms or residual stripes would measure
    // structure, not noise)
    let starts = |n: usize| -> Vec<usize> {
        let mut v = vec![0, n.saturating_sub(side) / 2, n.saturating_sub(side)];
        v.dedup();
        v
    };
    let bx = pm::noise::background_box_px(fmax / scale);
    let mut candidates: Vec<(f64, usize, usize, usize)> = vec![];
    for &y0 in &starts(ny) {
        for &x0 in &starts(nx) {
            let sci = read_region_f32(mosaic, "SCI", y0..(y0 + side).min(ny), x0..(x0 + side).min(nx))?;
            let finite = sci.iter().filter(|v| v.is_finite()).count();
            let flat = pm::noise::flatten(sci.view(), bx);
            let (std, n) = pm::noise::sky_std(flat.view(), &pm::noise::sky_mask(flat.view(), 2));
            if n > 0 && std.is_finite() {
                candidates.push((std, finite, y0, x0));
            }
        }
    }
    let most = candidates.iter().map(|c| c.1).max().unwrap_or(0);
    let Some(&(_, _, y0, x0)) = candidates
        .iter()
        .filter(|c| 2 * c.1 >= most)
        .min_by(|a, b| a.0.total_cmp(&b.0).then((a.2, a.3).cmp(&(b.2, b.3))))
    else {
        crate::bail!("{}: no sky pixels for the noise curve", mosaic.display());
    };
    let sci = read_region_f32(mosaic, "SCI", y0..(y0 + side).min(ny), x0..(x0 + side).min(nx))?;
    tracing::info!("[{STAGE}] noise curve measured on the emptiest {side} px square, at x {x0}, y {y0}");
    let steps = 16;
    let fwhms_arcsec: Vec<f64> = (0..=steps).map(|i| fmax * i as f64 / steps as f64).collect();
    let fpx: Vec<f64> = fwhms_arcsec.iter().map(|f| f / scale).collect();
    let curve = pm::noise_curve(sci.view(), &fpx);
    let mut csv = String::from(
        "kernel_fwhm_arcsec,resolution_arcsec,std_mjysr,std_uncorrelated_mjysr,ratio_to_uncorrelated,n_pixels\n",
    );
    for (f, p) in fwhms_arcsec.iter().zip(&curve) {
        let res = (psf_fwhm * psf_fwhm + f * f).sqrt();
        csv.push_str(&format!(
            "{f:.4},{res:.4},{:.6e},{:.6e},{:.4},{}\n",
            p.std,
            p.std_uncorrelated,
            p.std / p.std_uncorrelated,
            p.n_pixels
        ));
    }
    crate::io::json::write_text(&dir.join("noise_curve.csv"), &csv)?;
    use crate::io::plot::{charts, Chart, Series, Style};
    let mut series = vec![
        Series { label: "measured".into(), x: fwhms_arcsec.clone(), y: curve.iter().map(|p| p.std).collect() },
        Series {
            label: "uncorrelated noise".into(),
            x: fwhms_arcsec.clone(),
            y: curve.iter().map(|p| p.std_uncorrelated).collect(),
        },
    ];
    if let Some(g) = pcfg.targets.iter().filter_map(|t| t.gaussian_fwhm_arcsec).next() {
        if g > psf_fwhm {
            let k = (g * g - psf_fwhm * psf_fwhm).sqrt();
            let top = curve.first().map_or(1.0, |p| p.std);
            series.push(Series { label: format!("kernel to {g}\""), x: vec![k, k], y: vec![0.0, top] });
        }
    }
    let chart = Chart {
        title: format!("{band}: empty-sky noise after Gaussian smoothing (PSF {psf_fwhm:.3}\")"),
        xlabel: "smoothing FWHM (arcsec)".into(),
        ylabel: "std (MJy/sr)".into(),
        style: Style::Lines,
        series,
    };
    charts(&dir.join("noise_curve.png"), &format!("{band} noise curve"), &[chart])?;
    Ok(fmax / scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_band_mosaic_is_found_beside_the_mosaic_or_in_the_sibling_band_folder() {
        let d = tempfile::tempdir().unwrap();
        let touch = |p: &Path| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        };
        // `tessera mosaic` layout: beside, the band in the file name
        let m = d.path().join("F770W_i2d.fits");
        touch(&m);
        assert_eq!(band_mosaic(&m, "F770W", "F1000W"), None);
        touch(&d.path().join("F1000W_i2d.fits"));
        assert_eq!(band_mosaic(&m, "F770W", "F1000W"), Some(d.path().join("F1000W_i2d.fits")));
        // `tessera run` layout: <target>/<BAND>/<target>_<band>_i2d.fits
        let m = d.path().join("ngc1/F770W/ngc1_f770w_i2d.fits");
        touch(&m);
        assert_eq!(band_mosaic(&m, "F770W", "F1000W"), None);
        let other = d.path().join("ngc1/F1000W/ngc1_f1000w_i2d.fits");
        touch(&other);
        assert_eq!(band_mosaic(&m, "F770W", "F1000W"), Some(other));
        // never the mosaic itself
        assert_eq!(band_mosaic(&m, "F770W", "F770W"), None);
    }
}
