//! JWST Level 2 calibrated exposures (`*_cal.fits`) and plain FITS images, through cfitsio.
//!
//! Reads the primary-header keys that identify an exposure, the SCI/ERR/DQ/VAR_*/AREA extensions
//! and the TAN-SIP WCS of the SCI header; reads sub-rectangles without reading the whole file;
//! writes cal files in the layout the JWST pipeline uses (for the simulator) and plain images.
//! FITS 1-based conventions stay inside this file: callers see 0-based `[y, x]` arrays.
//! Every error names the file, the HDU and, where it applies, the keyword.
//! The numerical meaning of DQ bits lives in `kernels::dq`; this file only moves them.

use crate::geom::{CardValue, TanSip, WcsError};
use crate::plan::{CalMeta, ExposureId};
use fitsio::hdu::{FitsHdu, HduInfo};
use fitsio::images::{ImageDescription, ImageType};
use fitsio::FitsFile;
use ndarray::Array2;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use crate::kernels::dq;

/// What went wrong with a FITS file.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum FitsProblem {
    #[error("cfitsio: {0}")]
    Cfitsio(String),
    #[error("extension is missing")]
    MissingHdu,
    #[error("keyword is missing")]
    MissingKeyword,
    #[error("{0}")]
    BadKeyword(String),
    #[error("{0}")]
    BadData(String),
    #[error("bad WCS: {0}")]
    Wcs(WcsError),
}

/// A FITS error naming the file, HDU and keyword.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("{}{}: {problem}", path.display(), location(hdu, keyword))]
pub struct FitsError {
    pub path: PathBuf,
    pub hdu: Option<String>,
    pub keyword: Option<String>,
    pub problem: FitsProblem,
}

fn location(hdu: &Option<String>, keyword: &Option<String>) -> String {
    match (hdu, keyword) {
        (Some(h), Some(k)) => format!(" [HDU {h}, keyword {k}]"),
        (Some(h), None) => format!(" [HDU {h}]"),
        (None, Some(k)) => format!(" [keyword {k}]"),
        (None, None) => String::new(),
    }
}

impl FitsError {
    fn new(path: &Path, hdu: Option<&str>, keyword: Option<&str>, problem: FitsProblem) -> Self {
        FitsError {
            path: path.to_path_buf(),
            hdu: hdu.map(str::to_string),
            keyword: keyword.map(str::to_string),
            problem,
        }
    }
    fn cfitsio(path: &Path, hdu: Option<&str>, e: impl std::fmt::Display) -> Self {
        FitsError::new(path, hdu, None, FitsProblem::Cfitsio(e.to_string()))
    }
}

/// A whole cal exposure in memory. Arrays are `[y, x]`.
#[derive(Clone, Debug)]
pub struct CalImage {
    pub meta: CalMeta,
    /// Surface brightness, MJy/sr.
    pub sci: Array2<f32>,
    pub err: Array2<f32>,
    pub dq: Array2<u32>,
    pub var_poisson: Option<Array2<f32>>,
    pub var_rnoise: Option<Array2<f32>>,
    pub var_flat: Option<Array2<f32>>,
    /// Pixel area relative to the nominal pixel area.
    pub area: Option<Array2<f32>>,
}

/// The float extensions of a cal file that tessera reads.
pub const FLOAT_EXTENSIONS: [&str; 6] = ["SCI", "ERR", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT", "AREA"];

fn open(path: &Path) -> Result<FitsFile, FitsError> {
    if !path.exists() {
        return Err(FitsError::cfitsio(path, None, "file does not exist"));
    }
    FitsFile::open(path).map_err(|e| FitsError::cfitsio(path, None, e))
}

fn hdu(f: &mut FitsFile, path: &Path, name: &str) -> Result<FitsHdu, FitsError> {
    f.hdu(name).map_err(|_| FitsError::new(path, Some(name), None, FitsProblem::MissingHdu))
}

/// `[ny, nx]` of a 2-D image extension.
fn image_shape(path: &Path, name: &str) -> Result<[usize; 2], FitsError> {
    let mut f = open(path)?;
    let h = hdu(&mut f, path, name)?;
    match &h.info {
        HduInfo::ImageInfo { shape, .. } if shape.len() == 2 => Ok([shape[0], shape[1]]),
        _ => Err(FitsError::new(path, Some(name), Some("NAXIS"), FitsProblem::BadData("not a 2-D image".into()))),
    }
}

fn optional_hdu(f: &mut FitsFile, name: &str) -> Option<FitsHdu> {
    f.hdu(name).ok()
}

/// Read every keyword card of an HDU into a map (COMMENT/HISTORY and empty values skipped).
/// Values: quoted strings -> Text, T/F -> Text("T"/"F"), integers -> Int, otherwise Real.
///
/// # Errors
/// [`FitsError`] naming the file and HDU.
pub fn read_cards(f: &mut FitsFile, path: &Path, hdu_name: &str) -> Result<BTreeMap<String, CardValue>, FitsError> {
    let h = if hdu_name == "PRIMARY" { f.primary_hdu() } else { f.hdu(hdu_name) }
        .map_err(|_| FitsError::new(path, Some(hdu_name), None, FitsProblem::MissingHdu))?;
    let _ = h; // `hdu()` made it the current HDU for the raw calls below
    let mut out = BTreeMap::new();
    let mut status = 0;
    let (mut nkeys, mut more) = (0, 0);
    // SAFETY: cfitsio calls on a valid open file handle with buffers of the documented sizes.
    unsafe {
        fitsio::sys::ffghsp(f.as_raw(), &mut nkeys, &mut more, &mut status);
    }
    if status != 0 {
        return Err(FitsError::cfitsio(path, Some(hdu_name), format!("status {status} reading the header size")));
    }
    for i in 1..=nkeys {
        let mut name = [0 as std::os::raw::c_char; 80];
        let mut value = [0 as std::os::raw::c_char; 80];
        let mut comment = [0 as std::os::raw::c_char; 80];
        unsafe {
            fitsio::sys::ffgkyn(
                f.as_raw(),
                i,
                name.as_mut_ptr(),
                value.as_mut_ptr(),
                comment.as_mut_ptr(),
                &mut status,
            );
        }
        if status != 0 {
            return Err(FitsError::cfitsio(path, Some(hdu_name), format!("status {status} reading card {i}")));
        }
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().trim().to_string();
        let value = unsafe { CStr::from_ptr(value.as_ptr()) }.to_string_lossy().trim().to_string();
        if name.is_empty() || value.is_empty() || name == "COMMENT" || name == "HISTORY" {
            continue;
        }
        out.insert(name, parse_card_value(&value));
    }
    Ok(out)
}

fn parse_card_value(v: &str) -> CardValue {
    if let Some(s) = v.strip_prefix('\'') {
        let s = s.strip_suffix('\'').unwrap_or(s);
        return CardValue::Text(s.replace("''", "'").trim_end().to_string());
    }
    if let Ok(i) = v.parse::<i64>() {
        return CardValue::Int(i);
    }
    match v.replace(['D', 'd'], "E").parse::<f64>() {
        Ok(x) => CardValue::Real(x),
        Err(_) => CardValue::Text(v.to_string()),
    }
}

struct Cards<'a> {
    map: &'a BTreeMap<String, CardValue>,
    path: &'a Path,
    hdu: &'a str,
}

impl Cards<'_> {
    fn err(&self, key: &str, problem: FitsProblem) -> FitsError {
        FitsError::new(self.path, Some(self.hdu), Some(key), problem)
    }
    fn text(&self, key: &str) -> Result<String, FitsError> {
        match self.map.get(key) {
            Some(CardValue::Text(s)) => Ok(s.clone()),
            Some(CardValue::Int(i)) => Ok(i.to_string()),
            Some(CardValue::Real(x)) => {
                Err(self.err(key, FitsProblem::BadKeyword(format!("expected a string, found {x}"))))
            }
            None => Err(self.err(key, FitsProblem::MissingKeyword)),
        }
    }
    fn text_or(&self, key: &str, default: &str) -> String {
        self.text(key).unwrap_or_else(|_| default.to_string())
    }
    fn real(&self, key: &str) -> Result<f64, FitsError> {
        match self.map.get(key) {
            Some(CardValue::Real(x)) if x.is_finite() => Ok(*x),
            Some(CardValue::Int(i)) => Ok(*i as f64),
            Some(other) => {
                Err(self.err(key, FitsProblem::BadKeyword(format!("expected a finite number, found {other:?}"))))
            }
            None => Err(self.err(key, FitsProblem::MissingKeyword)),
        }
    }
}

/// Read the headers of a cal file: exposure identity from the primary header, shape, BUNIT and the
/// TAN-SIP WCS from the SCI header. Does not read pixel data.
///
/// # Errors
/// [`FitsError`] naming the file, HDU and keyword: missing SCI, missing or malformed WCS keywords,
/// BUNIT other than MJy/sr, missing identity keywords, unreadable or truncated header.
pub fn read_cal_meta(path: &Path) -> Result<CalMeta, FitsError> {
    let mut f = open(path)?;
    read_meta_from(&mut f, path)
}

fn read_meta_from(f: &mut FitsFile, path: &Path) -> Result<CalMeta, FitsError> {
    let primary = read_cards(f, path, "PRIMARY")?;
    let p = Cards { map: &primary, path, hdu: "PRIMARY" };
    let sci_hdu = hdu(f, path, "SCI")?;
    let shape = match &sci_hdu.info {
        HduInfo::ImageInfo { shape, .. } if shape.len() == 2 && shape[0] > 0 && shape[1] > 0 => [shape[0], shape[1]],
        HduInfo::ImageInfo { shape, .. } => {
            return Err(FitsError::new(
                path,
                Some("SCI"),
                Some("NAXIS"),
                FitsProblem::BadData(format!("expected a 2-D image, found shape {shape:?}")),
            ))
        }
        _ => return Err(FitsError::new(path, Some("SCI"), None, FitsProblem::BadData("SCI is not an image".into()))),
    };
    let sci = read_cards(f, path, "SCI")?;
    let s = Cards { map: &sci, path, hdu: "SCI" };
    let bunit = s.text("BUNIT")?;
    if !bunit.trim().eq_ignore_ascii_case("MJy/sr") {
        return Err(
            s.err("BUNIT", FitsProblem::BadKeyword(format!("expected surface brightness in MJy/sr, found `{bunit}`")))
        );
    }
    if !sci.contains_key("CTYPE1") {
        return Err(s.err("CTYPE1", FitsProblem::Wcs(WcsError::MissingKey("CTYPE1".into()))));
    }
    let wcs = TanSip::from_cards(&sci).map_err(|e| {
        let key = match &e {
            WcsError::MissingKey(k) => Some(k.clone()),
            WcsError::BadValue { key, .. } => Some(key.clone()),
            _ => None,
        };
        FitsError { path: path.to_path_buf(), hdu: Some("SCI".into()), keyword: key, problem: FitsProblem::Wcs(e) }
    })?;
    let id = ExposureId {
        program: p.text("PROGRAM")?,
        observation: p.text("OBSERVTN")?,
        visit: p.text("VISIT")?,
        visit_group: p.text("VISITGRP")?,
        sequence: p.text("SEQ_ID")?,
        activity: p.text("ACT_ID")?,
        exposure: p.text("EXPOSURE")?,
    };
    let effexptm_s = p.real("EFFEXPTM")?;
    if effexptm_s <= 0.0 {
        return Err(
            p.err("EFFEXPTM", FitsProblem::BadKeyword(format!("exposure time must be positive, found {effexptm_s}")))
        );
    }
    Ok(CalMeta {
        path: path.to_path_buf(),
        instrument: p.text("INSTRUME")?,
        detector: p.text("DETECTOR")?,
        filter: p.text("FILTER")?,
        pupil: p.text_or("PUPIL", "CLEAR"),
        target: p.text_or("TARGPROP", ""),
        id,
        expstart_mjd: p.real("EXPSTART")?,
        expmid_mjd: p.real("EXPMID")?,
        expend_mjd: p.real("EXPEND")?,
        effexptm_s,
        subarray: p.text_or("SUBARRAY", "FULL"),
        shape,
        bunit,
        wcs,
        dt_bgr_days: match primary.get("DT_BGR") {
            None => None,
            Some(_) => Some(p.real("DT_BGR")?),
        },
    })
}

fn check_shape(path: &Path, name: &str, h: &FitsHdu, shape: [usize; 2]) -> Result<(), FitsError> {
    match &h.info {
        HduInfo::ImageInfo { shape: s, .. } if s.as_slice() == shape => Ok(()),
        HduInfo::ImageInfo { shape: s, .. } => Err(FitsError::new(
            path,
            Some(name),
            Some("NAXIS"),
            FitsProblem::BadData(format!("shape {s:?} differs from SCI {shape:?}")),
        )),
        _ => Err(FitsError::new(path, Some(name), None, FitsProblem::BadData("not an image".into()))),
    }
}

fn read_f32(f: &mut FitsFile, path: &Path, name: &str, shape: [usize; 2]) -> Result<Array2<f32>, FitsError> {
    let h = hdu(f, path, name)?;
    check_shape(path, name, &h, shape)?;
    let v: Vec<f32> = h.read_image(f).map_err(|e| FitsError::cfitsio(path, Some(name), e))?;
    Array2::from_shape_vec((shape[0], shape[1]), v).map_err(|e| FitsError::cfitsio(path, Some(name), e))
}

fn read_opt_f32(
    f: &mut FitsFile,
    path: &Path,
    name: &str,
    shape: [usize; 2],
) -> Result<Option<Array2<f32>>, FitsError> {
    if optional_hdu(f, name).is_none() {
        return Ok(None);
    }
    read_f32(f, path, name, shape).map(Some)
}

/// Read a whole cal exposure.
///
/// # Errors
/// Everything [`read_cal_meta`] reports, plus missing ERR/DQ, shape mismatches, truncated data and
/// a SCI array with no finite pixel.
pub fn read_cal(path: &Path) -> Result<CalImage, FitsError> {
    let mut f = open(path)?;
    let meta = read_meta_from(&mut f, path)?;
    let shape = meta.shape;
    let sci = read_f32(&mut f, path, "SCI", shape)?;
    if !sci.iter().any(|v| v.is_finite()) {
        return Err(FitsError::new(
            path,
            Some("SCI"),
            None,
            FitsProblem::BadData("no finite pixel (all NaN or Inf)".into()),
        ));
    }
    let err = read_f32(&mut f, path, "ERR", shape)?;
    let dq_hdu = hdu(&mut f, path, "DQ")?;
    check_shape(path, "DQ", &dq_hdu, shape)?;
    let dqv: Vec<u32> = dq_hdu.read_image(&mut f).map_err(|e| FitsError::cfitsio(path, Some("DQ"), e))?;
    let dq = Array2::from_shape_vec((shape[0], shape[1]), dqv).map_err(|e| FitsError::cfitsio(path, Some("DQ"), e))?;
    Ok(CalImage {
        var_poisson: read_opt_f32(&mut f, path, "VAR_POISSON", shape)?,
        var_rnoise: read_opt_f32(&mut f, path, "VAR_RNOISE", shape)?,
        var_flat: read_opt_f32(&mut f, path, "VAR_FLAT", shape)?,
        area: read_opt_f32(&mut f, path, "AREA", shape)?,
        meta,
        sci,
        err,
        dq,
    })
}

/// Read the sub-rectangle `y` x `x` (0-based, end-exclusive) of a float extension without reading
/// the rest of the image (cfitsio subset read).
///
/// # Errors
/// [`FitsError`] for a missing extension or a rectangle outside the image.
pub fn read_region_f32(path: &Path, ext: &str, y: Range<usize>, x: Range<usize>) -> Result<Array2<f32>, FitsError> {
    read_region(path, ext, y, x)
}

/// Like [`read_region_f32`] for the DQ extension.
///
/// # Errors
/// As [`read_region_f32`].
pub fn read_region_dq(path: &Path, y: Range<usize>, x: Range<usize>) -> Result<Array2<u32>, FitsError> {
    read_region(path, "DQ", y, x)
}

fn read_region<T: Clone>(path: &Path, ext: &str, y: Range<usize>, x: Range<usize>) -> Result<Array2<T>, FitsError>
where
    Vec<T>: fitsio::images::ReadImage,
{
    let mut f = open(path)?;
    let h = hdu(&mut f, path, ext)?;
    let shape = match &h.info {
        HduInfo::ImageInfo { shape, .. } if shape.len() == 2 => [shape[0], shape[1]],
        _ => return Err(FitsError::new(path, Some(ext), None, FitsProblem::BadData("not a 2-D image".into()))),
    };
    if y.start >= y.end || x.start >= x.end || y.end > shape[0] || x.end > shape[1] {
        return Err(FitsError::new(
            path,
            Some(ext),
            None,
            FitsProblem::BadData(format!("region y {y:?} x {x:?} is empty or outside the image of shape {shape:?}")),
        ));
    }
    // cfitsio wants the ranges in FITS axis order: x (NAXIS1) first.
    let v: Vec<T> = h.read_region(&mut f, &[&x, &y]).map_err(|e| FitsError::cfitsio(path, Some(ext), e))?;
    Array2::from_shape_vec((y.len(), x.len()), v).map_err(|e| FitsError::cfitsio(path, Some(ext), e))
}

impl From<crate::io::IoError> for FitsError {
    fn from(e: crate::io::IoError) -> Self {
        let path = match &e {
            crate::io::IoError::Fs { path, .. } | crate::io::IoError::Format { path, .. } => path.clone(),
            crate::io::IoError::NoInputs(p) => p.clone(),
        };
        FitsError { path, hdu: None, keyword: None, problem: FitsProblem::Cfitsio(e.to_string()) }
    }
}

/// A header card to write: key, value, comment.
pub type Card = (String, CardValue, String);

fn put_cards(f: &mut FitsFile, path: &Path, hdu_name: &str, cards: &[Card]) -> Result<(), FitsError> {
    let mut status = 0;
    for (key, value, comment) in cards {
        let k = CString::new(key.as_str()).expect("no NUL in key");
        let c = CString::new(comment.as_str()).expect("no NUL in comment");
        // SAFETY: valid handle, NUL-terminated strings; cfitsio copies them.
        unsafe {
            match value {
                CardValue::Real(x) => {
                    fitsio::sys::ffukyd(f.as_raw(), k.as_ptr(), *x, -17, c.as_ptr(), &mut status);
                }
                CardValue::Int(i) => {
                    fitsio::sys::ffukyj(f.as_raw(), k.as_ptr(), *i, c.as_ptr(), &mut status);
                }
                CardValue::Text(s) => {
                    let v = CString::new(s.as_str()).expect("no NUL in value");
                    fitsio::sys::ffukys(f.as_raw(), k.as_ptr(), v.as_ptr(), c.as_ptr(), &mut status);
                }
            }
        }
        if status != 0 {
            return Err(FitsError::new(
                path,
                Some(hdu_name),
                Some(key),
                FitsProblem::Cfitsio(format!("status {status} writing the card")),
            ));
        }
    }
    Ok(())
}

fn put_history(f: &mut FitsFile, path: &Path, hdu_name: &str, lines: &[String]) -> Result<(), FitsError> {
    let mut status = 0;
    for l in lines {
        let s = CString::new(l.as_str()).expect("no NUL in history");
        unsafe {
            fitsio::sys::ffphis(f.as_raw(), s.as_ptr(), &mut status);
        }
        if status != 0 {
            return Err(FitsError::new(
                path,
                Some(hdu_name),
                Some("HISTORY"),
                FitsProblem::Cfitsio(format!("status {status}")),
            ));
        }
    }
    Ok(())
}

fn write_ext<T: fitsio::images::WriteImage>(
    f: &mut FitsFile,
    path: &Path,
    name: &str,
    ty: ImageType,
    shape: [usize; 2],
    data: &[T],
    cards: &[Card],
) -> Result<(), FitsError> {
    let desc = ImageDescription { data_type: ty, dimensions: &shape };
    let h = f.create_image(name, &desc).map_err(|e| FitsError::cfitsio(path, Some(name), e))?;
    h.write_image(f, data).map_err(|e| FitsError::cfitsio(path, Some(name), e))?;
    put_cards(f, path, name, cards)
}

fn std_slice<T: Clone>(a: &Array2<T>) -> std::borrow::Cow<'_, [T]> {
    match a.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(a.iter().cloned().collect()),
    }
}

/// Write a cal exposure in the JWST layout (PRIMARY with `primary` cards and `history`; SCI with the
/// WCS and BUNIT; ERR, DQ, VAR_POISSON, VAR_RNOISE, VAR_FLAT, AREA), atomically.
///
/// # Errors
/// [`FitsError`] naming the file and HDU.
pub fn write_cal(path: &Path, img: &CalImage, primary: &[Card], history: &[String]) -> Result<(), FitsError> {
    crate::io::write_atomic(path, |tmp| -> Result<(), FitsError> {
        let mut f = FitsFile::create(tmp).open().map_err(|e| FitsError::cfitsio(path, Some("PRIMARY"), e))?;
        f.primary_hdu().map_err(|e| FitsError::cfitsio(path, Some("PRIMARY"), e))?;
        put_cards(&mut f, path, "PRIMARY", primary)?;
        put_history(&mut f, path, "PRIMARY", history)?;
        let shape = [img.sci.nrows(), img.sci.ncols()];
        let mut sci_cards = vec![card_text("BUNIT", "MJy/sr", "physical units of the array values")];
        sci_cards.extend(img.meta.wcs.to_cards());
        write_ext(&mut f, path, "SCI", ImageType::Float, shape, &std_slice(&img.sci), &sci_cards)?;
        let unit = [card_text("BUNIT", "MJy/sr", "physical units of the array values")];
        let unit2 = [card_text("BUNIT", "(MJy/sr)^2", "physical units of the array values")];
        write_ext(&mut f, path, "ERR", ImageType::Float, shape, &std_slice(&img.err), &unit)?;
        write_ext(&mut f, path, "DQ", ImageType::UnsignedLong, shape, &std_slice(&img.dq), &[])?;
        for (name, arr, cards) in [
            ("VAR_POISSON", &img.var_poisson, &unit2[..]),
            ("VAR_RNOISE", &img.var_rnoise, &unit2[..]),
            ("VAR_FLAT", &img.var_flat, &unit2[..]),
            ("AREA", &img.area, &[][..]),
        ] {
            if let Some(a) = arr {
                write_ext(&mut f, path, name, ImageType::Float, shape, &std_slice(a), cards)?;
            }
        }
        Ok(())
    })
}

/// Copy the cal file `src` to `dst` with SCI and DQ replaced and `primary` cards and `history` added
/// to the primary header; every other extension and card is kept as it is. Atomic.
///
/// # Errors
/// [`FitsError`] naming the file and HDU; a shape that differs from the file's SCI.
pub fn write_corrected_copy(
    src: &Path,
    dst: &Path,
    sci: &Array2<f32>,
    dq: &Array2<u32>,
    primary: &[Card],
    history: &[String],
) -> Result<(), FitsError> {
    crate::io::write_atomic(dst, |tmp| -> Result<(), FitsError> {
        std::fs::copy(src, tmp).map_err(|e| FitsError::cfitsio(src, None, e))?;
        let mut f = FitsFile::edit(tmp).map_err(|e| FitsError::cfitsio(dst, None, e))?;
        let shape = [sci.nrows(), sci.ncols()];
        for (name, write) in [("SCI", 0), ("DQ", 1)] {
            let h = hdu(&mut f, dst, name)?;
            check_shape(dst, name, &h, shape)?;
            let r =
                if write == 0 { h.write_image(&mut f, &std_slice(sci)) } else { h.write_image(&mut f, &std_slice(dq)) };
            r.map_err(|e| FitsError::cfitsio(dst, Some(name), e))?;
        }
        f.primary_hdu().map_err(|e| FitsError::cfitsio(dst, Some("PRIMARY"), e))?;
        put_cards(&mut f, dst, "PRIMARY", primary)?;
        put_history(&mut f, dst, "PRIMARY", history)
    })
}

/// Write a single 2-D float image (truth skies, stripe models) with header cards in the primary HDU,
/// atomically. Extra named float extensions follow in order.
///
/// # Errors
/// [`FitsError`] naming the file.
pub fn write_image(
    path: &Path,
    data: &Array2<f32>,
    cards: &[Card],
    extensions: &[(&str, &Array2<f32>)],
) -> Result<(), FitsError> {
    crate::io::write_atomic(path, |tmp| -> Result<(), FitsError> {
        let shape = [data.nrows(), data.ncols()];
        let desc = ImageDescription { data_type: ImageType::Float, dimensions: &shape };
        let mut f = FitsFile::create(tmp)
            .with_custom_primary(&desc)
            .open()
            .map_err(|e| FitsError::cfitsio(path, Some("PRIMARY"), e))?;
        let h = f.primary_hdu().map_err(|e| FitsError::cfitsio(path, Some("PRIMARY"), e))?;
        h.write_image(&mut f, &std_slice(data)).map_err(|e| FitsError::cfitsio(path, Some("PRIMARY"), e))?;
        put_cards(&mut f, path, "PRIMARY", cards)?;
        for (name, a) in extensions {
            write_ext(&mut f, path, name, ImageType::Float, [a.nrows(), a.ncols()], &std_slice(a), &[])?;
        }
        Ok(())
    })
}

/// Read the primary image of a plain FITS file with its header cards.
///
/// # Errors
/// [`FitsError`] naming the file.
pub fn read_image(path: &Path) -> Result<(Array2<f32>, BTreeMap<String, CardValue>), FitsError> {
    let mut f = open(path)?;
    let cards = read_cards(&mut f, path, "PRIMARY")?;
    let h = f.primary_hdu().map_err(|e| FitsError::cfitsio(path, Some("PRIMARY"), e))?;
    let shape = match &h.info {
        HduInfo::ImageInfo { shape, .. } if shape.len() == 2 => [shape[0], shape[1]],
        _ => return Err(FitsError::new(path, Some("PRIMARY"), None, FitsProblem::BadData("not a 2-D image".into()))),
    };
    let v: Vec<f32> = h.read_image(&mut f).map_err(|e| FitsError::cfitsio(path, Some("PRIMARY"), e))?;
    let a =
        Array2::from_shape_vec((shape[0], shape[1]), v).map_err(|e| FitsError::cfitsio(path, Some("PRIMARY"), e))?;
    Ok((a, cards))
}

/// A text card.
pub fn card_text(key: &str, value: &str, comment: &str) -> Card {
    (key.to_string(), CardValue::Text(value.to_string()), comment.to_string())
}
/// A real card.
pub fn card_real(key: &str, value: f64, comment: &str) -> Card {
    (key.to_string(), CardValue::Real(value), comment.to_string())
}
/// An integer card.
pub fn card_int(key: &str, value: i64, comment: &str) -> Card {
    (key.to_string(), CardValue::Int(value), comment.to_string())
}

/// Pixel type of a mosaic extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtKind {
    F32,
    U32,
}

/// One extension of a mosaic FITS: name, pixel type, planes (1 = a 2-D image; >1 = a cube
/// `[plane, y, x]`), and header cards.
#[derive(Clone, Debug)]
pub struct ExtSpec {
    pub name: String,
    pub kind: ExtKind,
    pub planes: usize,
    pub cards: Vec<Card>,
}

/// A multi-extension FITS written in row blocks: every HDU is created up front, then rows are written
/// into any extension in any order, so no caller ever holds the whole image. Callers write every row:
/// rows never written hold cfitsio's raw zero fill (0.0, or 2^31 in unsigned extensions). The file is written under a temporary name and renamed by [`MosaicWriter::finish`].
pub struct MosaicWriter {
    f: Option<FitsFile>,
    tmp: PathBuf,
    path: PathBuf,
    ny: usize,
    nx: usize,
    exts: Vec<ExtSpec>,
}

impl MosaicWriter {
    /// Create the file with a primary header (`primary` cards and `history`) and the extensions.
    ///
    /// # Errors
    /// [`FitsError`] naming the file and HDU.
    pub fn create(
        path: &Path,
        ny: usize,
        nx: usize,
        primary: &[Card],
        history: &[String],
        exts: Vec<ExtSpec>,
    ) -> Result<MosaicWriter, FitsError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| FitsError::from(crate::io::IoError::fs(dir, e)))?;
        }
        let tmp = crate::io::temp_path(path);
        let _ = std::fs::remove_file(&tmp);
        let mut f = FitsFile::create(&tmp).open().map_err(|e| FitsError::cfitsio(path, Some("PRIMARY"), e))?;
        f.primary_hdu().map_err(|e| FitsError::cfitsio(path, Some("PRIMARY"), e))?;
        put_cards(&mut f, path, "PRIMARY", primary)?;
        put_history(&mut f, path, "PRIMARY", history)?;
        for e in &exts {
            let ty = match e.kind {
                ExtKind::F32 => ImageType::Float,
                ExtKind::U32 => ImageType::UnsignedLong,
            };
            let dims: Vec<usize> = if e.planes > 1 { vec![e.planes, ny, nx] } else { vec![ny, nx] };
            let desc = ImageDescription { data_type: ty, dimensions: &dims };
            f.create_image(e.name.as_str(), &desc).map_err(|er| FitsError::cfitsio(path, Some(&e.name), er))?;
            put_cards(&mut f, path, &e.name, &e.cards)?;
        }
        Ok(MosaicWriter { f: Some(f), tmp, path: path.to_path_buf(), ny, nx, exts })
    }

    fn range_check(&self, ext: &str, plane: usize, y0: usize, rows: usize, cols: usize) -> Result<(), FitsError> {
        let spec = self.exts.iter().find(|e| e.name == ext);
        match spec {
            Some(s) if plane < s.planes.max(1) && y0 + rows <= self.ny && cols == self.nx => Ok(()),
            _ => Err(FitsError::new(
                &self.path,
                Some(ext),
                None,
                FitsProblem::BadData(format!(
                    "rows {y0}..{} plane {plane} do not fit the {}x{} image",
                    y0 + rows,
                    self.ny,
                    self.nx
                )),
            )),
        }
    }

    /// Write full-width rows starting at row `y0` of a float extension.
    ///
    /// # Errors
    /// [`FitsError`] naming the file and HDU.
    pub fn write_rows_f32(&mut self, ext: &str, y0: usize, rows: ndarray::ArrayView2<f32>) -> Result<(), FitsError> {
        self.range_check(ext, 0, y0, rows.nrows(), rows.ncols())?;
        let f = self.f.as_mut().expect("open until finish");
        let h = f.hdu(ext).map_err(|e| FitsError::cfitsio(&self.path, Some(ext), e))?;
        let data = rows.as_standard_layout();
        let start = y0 * self.nx;
        h.write_section(f, start, start + data.len(), data.as_slice().expect("standard layout"))
            .map_err(|e| FitsError::cfitsio(&self.path, Some(ext), e))
    }

    /// Write full-width rows starting at row `y0` of plane `plane` of an unsigned extension.
    ///
    /// # Errors
    /// [`FitsError`] naming the file and HDU.
    pub fn write_rows_u32(
        &mut self,
        ext: &str,
        plane: usize,
        y0: usize,
        rows: ndarray::ArrayView2<u32>,
    ) -> Result<(), FitsError> {
        self.range_check(ext, plane, y0, rows.nrows(), rows.ncols())?;
        let f = self.f.as_mut().expect("open until finish");
        let h = f.hdu(ext).map_err(|e| FitsError::cfitsio(&self.path, Some(ext), e))?;
        let data = rows.as_standard_layout();
        let start = plane * self.ny * self.nx + y0 * self.nx;
        h.write_section(f, start, start + data.len(), data.as_slice().expect("standard layout"))
            .map_err(|e| FitsError::cfitsio(&self.path, Some(ext), e))
    }

    /// Close the file and rename it to its final name.
    ///
    /// # Errors
    /// [`FitsError`] naming the file.
    pub fn finish(mut self) -> Result<(), FitsError> {
        drop(self.f.take());
        std::fs::rename(&self.tmp, &self.path).map_err(|e| FitsError::from(crate::io::IoError::fs(&self.path, e)))
    }
}

impl Drop for MosaicWriter {
    /// A writer dropped before [`MosaicWriter::finish`] (an error part-way) removes its temporary
    /// file, so nothing half-written is left behind.
    fn drop(&mut self) {
        if let Some(f) = self.f.take() {
            drop(f);
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Read a whole 2-D float extension by EXTNAME.
///
/// # Errors
/// [`FitsError`] naming the file and HDU.
pub fn read_ext_f32(path: &Path, ext: &str) -> Result<Array2<f32>, FitsError> {
    let mut f = open(path)?;
    let h = hdu(&mut f, path, ext)?;
    let shape = match &h.info {
        HduInfo::ImageInfo { shape, .. } if shape.len() == 2 => [shape[0], shape[1]],
        _ => return Err(FitsError::new(path, Some(ext), None, FitsProblem::BadData("not a 2-D image".into()))),
    };
    read_f32(&mut f, path, ext, shape)
}

/// Read a whole unsigned extension by EXTNAME: `(planes, ny, nx)` and the values in C order.
///
/// # Errors
/// [`FitsError`] naming the file and HDU.
pub fn read_ext_u32(path: &Path, ext: &str) -> Result<(Vec<usize>, Vec<u32>), FitsError> {
    let mut f = open(path)?;
    let h = hdu(&mut f, path, ext)?;
    let shape = match &h.info {
        HduInfo::ImageInfo { shape, .. } => shape.clone(),
        _ => return Err(FitsError::new(path, Some(ext), None, FitsProblem::BadData("not an image".into()))),
    };
    let v: Vec<u32> = h.read_image(&mut f).map_err(|e| FitsError::cfitsio(path, Some(ext), e))?;
    Ok((shape, v))
}

/// The header cards of an extension (or "PRIMARY").
///
/// # Errors
/// [`FitsError`] naming the file and HDU.
pub fn read_header(path: &Path, ext: &str) -> Result<BTreeMap<String, CardValue>, FitsError> {
    let mut f = open(path)?;
    read_cards(&mut f, path, ext)
}

/// Copy `src` to `dst` (atomically; `dst` may be `src`) with the WCS cards of every HDU in `hdus`
/// that exists replaced by `wcs_cards`, and `history` appended to PRIMARY. Everything else (data,
/// other keywords) is copied byte for byte. Used by the `astrometry` stage for the corrected mosaic
/// and the tweakback exposures.
///
/// # Errors
/// [`FitsError`] naming the file and HDU (a missing `src`, an unwritable `dst`).
pub fn copy_with_wcs(
    src: &Path,
    dst: &Path,
    hdus: &[&str],
    wcs_cards: &[Card],
    history: &[String],
) -> Result<(), FitsError> {
    copy_with_wcs_and_flags(src, dst, hdus, wcs_cards, history, &[], 0)
}

/// [`copy_with_wcs`], and `bits` OR-ed into the DQ extension at the pixels `flagged` (sorted linear
/// indices `y * nx + x`, 0-based): the tweakback files and the `*_crf.fits` copies carry the outlier
/// flags this way, as the JWST pipeline's `*_crf` files do.
///
/// # Errors
/// As [`copy_with_wcs`]; a flagged index outside the DQ image.
pub fn copy_with_wcs_and_flags(
    src: &Path,
    dst: &Path,
    hdus: &[&str],
    wcs_cards: &[Card],
    history: &[String],
    flagged: &[u64],
    bits: u32,
) -> Result<(), FitsError> {
    if !src.is_file() {
        return Err(FitsError::cfitsio(src, None, "file does not exist"));
    }
    let dq = if flagged.is_empty() {
        None
    } else {
        let [ny, nx] = image_shape(src, "DQ")?;
        let mut dq = read_region_dq(src, 0..ny, 0..nx)?;
        let flat = dq.as_slice_mut().expect("a fresh array is contiguous");
        for &i in flagged {
            let v = flat.get_mut(i as usize).ok_or_else(|| {
                FitsError::new(
                    src,
                    Some("DQ"),
                    None,
                    FitsProblem::BadData(format!("flagged pixel {i} outside the {ny}x{nx} image")),
                )
            })?;
            *v |= bits;
        }
        Some(dq)
    };
    crate::io::write_atomic(dst, |tmp| -> Result<(), FitsError> {
        std::fs::copy(src, tmp).map_err(|e| FitsError::cfitsio(dst, None, e))?;
        let mut f = FitsFile::edit(tmp).map_err(|e| FitsError::cfitsio(dst, None, e))?;
        for name in hdus {
            if f.hdu(*name).is_ok() {
                put_cards(&mut f, dst, name, wcs_cards)?;
            }
        }
        if let Some(dq) = &dq {
            let h = hdu(&mut f, dst, "DQ")?;
            h.write_image(&mut f, &std_slice(dq)).map_err(|e| FitsError::cfitsio(dst, Some("DQ"), e))?;
        }
        f.primary_hdu().map_err(|e| FitsError::cfitsio(dst, Some("PRIMARY"), e))?;
        put_history(&mut f, dst, "PRIMARY", history)
    })
}

/// Read two float columns of the first binary or ASCII table of a FITS file whose names match
/// `names` (case-insensitive, first match of each list), e.g. RA and Dec.
///
/// # Errors
/// [`FitsError`] naming the file: no table HDU, a missing column.
pub fn read_table_columns(path: &Path, names: [&[&str]; 2]) -> Result<[Vec<f64>; 2], FitsError> {
    let mut f = open(path)?;
    for i in 1..64 {
        let Ok(h) = f.hdu(i) else { break };
        let HduInfo::TableInfo { column_descriptions, .. } = &h.info else { continue };
        let mut out: [Vec<f64>; 2] = [vec![], vec![]];
        for (k, wanted) in names.iter().enumerate() {
            let col = column_descriptions
                .iter()
                .find(|c| wanted.iter().any(|w| c.name.eq_ignore_ascii_case(w)))
                .ok_or_else(|| {
                    FitsError::new(
                        path,
                        Some(&format!("{i}")),
                        Some(wanted[0]),
                        FitsProblem::BadData(format!("no column named {}", wanted.join(" or "))),
                    )
                })?;
            out[k] = h.read_col::<f64>(&mut f, &col.name).map_err(|e| FitsError::cfitsio(path, None, e))?;
        }
        return Ok(out);
    }
    Err(FitsError::new(path, None, None, FitsProblem::BadData("no table extension".into())))
}
