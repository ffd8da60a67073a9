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
    #[error("{0}")]
    Io(String),
    #[error("no space left on device in {0}")]
    DiskFull(String),
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
    fn cfitsio(path: &Path, hdu: Option<&str>, e: impl Described) -> Self {
        FitsError::new(path, hdu, None, FitsProblem::Cfitsio(e.describe()))
    }
}

/// An error from cfitsio or around it, in words: cfitsio statuses become their meaning
/// ([`status_words`]) instead of `FitsError { status: 107, .. }`.
trait Described {
    fn describe(&self) -> String;
}

impl Described for fitsio::errors::Error {
    fn describe(&self) -> String {
        match self {
            fitsio::errors::Error::Fits(e) => status_words(e.status),
            fitsio::errors::Error::Index(e) => format!("{} (requested {:?})", e.message, e.given),
            other => other.to_string(),
        }
    }
}

impl Described for &str {
    fn describe(&self) -> String {
        (*self).to_string()
    }
}

impl Described for String {
    fn describe(&self) -> String {
        self.clone()
    }
}

impl Described for std::io::Error {
    fn describe(&self) -> String {
        self.to_string()
    }
}

impl Described for ndarray::ShapeError {
    fn describe(&self) -> String {
        self.to_string()
    }
}

/// A cfitsio status code in words: cfitsio's own text (`fits_get_errstatus`), with what it
/// usually means for a cal file where that is not obvious, and the code.
pub fn status_words(status: i32) -> String {
    let mut buf = [0 as std::os::raw::c_char; 32];
    // SAFETY: ffgerr writes at most 31 characters and a NUL into the buffer (FLEN_STATUS = 31).
    unsafe {
        fitsio::sys::ffgerr(status, buf.as_mut_ptr());
    }
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().trim().to_string();
    let text = if text.is_empty() { "unknown cfitsio error".to_string() } else { text };
    let hint = match status {
        104 => ": the file is missing or not readable",
        106 => ": the file could not be written (disk full or read-only?)",
        107 | 108 => ": the file is shorter than its headers say (truncated or damaged)",
        151 | 252 | 253 => ": this is not a FITS file, or its header is damaged",
        _ => "",
    };
    format!("{text}{hint} (cfitsio status {status})")
}

/// Open an existing file without cfitsio's extended file-name syntax (`fits_open_diskfile`), so that
/// any legal path works, brackets included (`a[1].fits` is a file, not HDU 1 of `a`).
fn open_disk(path: &Path, write: bool) -> Result<FitsFile, FitsError> {
    let c = c_path(path)?;
    let (mode, iomode) = if write { (fitsio::FileOpenMode::READWRITE, 1) } else { (fitsio::FileOpenMode::READONLY, 0) };
    let mut fptr = std::ptr::null_mut();
    let mut status = 0;
    // SAFETY: a NUL-terminated path and out-pointers cfitsio fills; the handle is owned by FitsFile.
    unsafe {
        fitsio::sys::ffdkopn(&mut fptr, c.as_ptr(), iomode, &mut status);
    }
    if status != 0 || fptr.is_null() {
        return Err(FitsError::new(path, None, None, FitsProblem::Cfitsio(status_words(status))));
    }
    // SAFETY: fptr was just opened by cfitsio and is not used elsewhere.
    unsafe { FitsFile::from_raw(fptr, mode) }.map_err(|e| FitsError::cfitsio(path, None, e))
}

/// Create a new file without cfitsio's extended file-name syntax (`fits_create_diskfile`), with an
/// empty primary HDU or, given `primary`, a primary image of that description.
fn create_disk(path: &Path, shown: &Path, primary: Option<&ImageDescription>) -> Result<FitsFile, FitsError> {
    let c = c_path(path)?;
    let mut fptr = std::ptr::null_mut();
    let mut status = 0;
    // SAFETY: as in `open_disk`.
    unsafe {
        fitsio::sys::ffdkinit(&mut fptr, c.as_ptr(), &mut status);
    }
    if status != 0 || fptr.is_null() {
        return Err(write_failure(shown, Some("PRIMARY"), FitsProblem::Cfitsio(status_words(status))));
    }
    // SAFETY: as in `open_disk`.
    let mut f = unsafe { FitsFile::from_raw(fptr, fitsio::FileOpenMode::READWRITE) }
        .map_err(|e| FitsError::cfitsio(shown, Some("PRIMARY"), e))?;
    match primary {
        // what fitsio's `FitsFile::create(..).with_custom_primary(..)` writes
        Some(desc) => {
            f.create_image("_PRIMARY", desc).map_err(|e| write_error(shown, Some("PRIMARY"), e))?;
        }
        None => {
            // an empty primary array, as fitsio's `FitsFile::create(..).open()` writes it
            unsafe {
                fitsio::sys::ffphps(f.as_raw(), 8, 0, std::ptr::null_mut(), &mut status);
            }
            if status != 0 {
                return Err(write_failure(shown, Some("PRIMARY"), FitsProblem::Cfitsio(status_words(status))));
            }
        }
    }
    Ok(f)
}

fn c_path(path: &Path) -> Result<CString, FitsError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| FitsError::new(path, None, None, FitsProblem::BadData("the path contains a NUL byte".into())))
}

/// Free bytes for unprivileged writers on the file system holding `path` (or its nearest existing
/// ancestor); `None` when it cannot be asked.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let mut p = path;
    while !p.exists() {
        p = p.parent()?;
    }
    let p = if p.as_os_str().is_empty() { Path::new(".") } else { p };
    let c = CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a zeroed statvfs for the call to fill.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Below this many free bytes, a failed write is reported as a full disk: cfitsio writes 2880-byte
/// blocks through a buffer of 40 of them, so a write that failed for lack of space leaves less than
/// that free.
const FULL_DISK_BYTES: u64 = 40 * 2880 * 4;

/// A failed write to `path`: "no space left on device" when its file system is (nearly) full, since
/// cfitsio reports a full disk as a read or write error of the FITS file; else `problem`.
fn write_failure(path: &Path, hdu: Option<&str>, problem: FitsProblem) -> FitsError {
    if free_bytes(path).is_some_and(|b| b < FULL_DISK_BYTES) {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        return FitsError::new(path, hdu, None, FitsProblem::DiskFull(dir.display().to_string()));
    }
    FitsError::new(path, hdu, None, problem)
}

fn write_error(path: &Path, hdu: Option<&str>, e: impl Described) -> FitsError {
    write_failure(path, hdu, FitsProblem::Cfitsio(e.describe()))
}

/// Flush everything cfitsio buffers for `f` to disk and report a failure (a full disk shows here,
/// not when fitsio closes the file and discards the status).
fn flush(f: &mut FitsFile, path: &Path) -> Result<(), FitsError> {
    let mut status = 0;
    // SAFETY: a valid open handle.
    unsafe {
        fitsio::sys::ffflus(f.as_raw(), &mut status);
    }
    if status != 0 {
        return Err(write_failure(path, None, FitsProblem::Cfitsio(status_words(status))));
    }
    Ok(())
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
    open_disk(path, false)
}

fn hdu(f: &mut FitsFile, path: &Path, name: &str) -> Result<FitsHdu, FitsError> {
    f.hdu(name).map_err(|_| FitsError::new(path, Some(name), None, FitsProblem::MissingHdu))
}

/// An HDU that cfitsio cannot read (`what`, with the status in words): truncated or damaged.
fn damaged(path: &Path, hdu: &str, what: &str, status: i32) -> FitsError {
    FitsError::new(
        path,
        Some(hdu),
        None,
        FitsProblem::BadData(format!("{what} ({}): the file is truncated or damaged", status_words(status))),
    )
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
        return Err(FitsError::cfitsio(
            path,
            Some(hdu_name),
            format!("reading the header size: {}", status_words(status)),
        ));
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
            return Err(FitsError::cfitsio(
                path,
                Some(hdu_name),
                format!("reading card {i}: {}", status_words(status)),
            ));
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

/// The largest image side tessera accepts in a cal file, pixels: twice the largest JWST imaging
/// detector (NIRCam's 2048 x 2048; MIRI's imager is 1024 x 1032), so that a damaged or hostile
/// NAXISn is refused by name before anything is sized from it.
pub const MAX_AXIS_PX: usize = 4096;

fn read_meta_from(f: &mut FitsFile, path: &Path) -> Result<CalMeta, FitsError> {
    let primary = read_cards(f, path, "PRIMARY")?;
    let p = Cards { map: &primary, path, hdu: "PRIMARY" };
    let sci_hdu = hdu(f, path, "SCI")?;
    if let HduInfo::ImageInfo { shape, .. } = &sci_hdu.info {
        // shape is [NAXIS2, NAXIS1]
        for (key, &n) in ["NAXIS1", "NAXIS2"].iter().zip(shape.iter().rev()) {
            if n > MAX_AXIS_PX {
                return Err(FitsError::new(
                    path,
                    Some("SCI"),
                    Some(key),
                    FitsProblem::BadKeyword(format!(
                        "{key} = {n} px is larger than any JWST detector (limit {MAX_AXIS_PX} px): refused"
                    )),
                ));
            }
        }
    }
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

/// Check that a cal file is whole, once, before any stage reads it: every HDU's header readable,
/// the file as long as its headers say (the data of the last HDU complete, no partial header
/// after it), CHECKSUM/DATASUM right where the file carries them (the FITS checksum convention),
/// the SCI, ERR and DQ extensions present, and at least one finite SCI pixel.
///
/// Returns the header metadata ([`read_cal_meta`]).
///
/// # Errors
/// [`FitsError`] naming the file and HDU: "truncated" when the file is shorter or longer than its
/// headers describe, "damaged" for a checksum mismatch or an unreadable header, "no finite pixel"
/// for an all-NaN SCI, and everything [`read_cal_meta`] reports.
pub fn verify_cal(path: &Path) -> Result<CalMeta, FitsError> {
    let size = std::fs::metadata(path).map_err(|e| FitsError::from(crate::io::IoError::fs(path, e)))?.len();
    // cfitsio reads a compressed file (gzip, compress, pkzip, bzip2) whole into memory, so its size
    // on disk says nothing about the HDUs: only the headers and checksums are checked then
    let compressed = compressed(path);
    let size = if compressed { u64::MAX } else { size };
    let mut f = open(path)?;
    let mut end = 0u64;
    let mut last = String::from("PRIMARY");
    for n in 1..10_000 {
        let (mut status, mut kind) = (0, 0);
        // SAFETY: a valid open handle; cfitsio fills the out-parameters.
        unsafe {
            fitsio::sys::ffmahd(f.as_raw(), n, &mut kind, &mut status);
        }
        if status == 107 && n > 1 {
            break; // END_OF_FILE: no further HDU starts here
        }
        let name = if n == 1 { "PRIMARY".to_string() } else { extname(&mut f).unwrap_or_else(|| format!("{}", n - 1)) };
        if status != 0 {
            return Err(damaged(path, &name, "the header cannot be read", status));
        }
        let (mut head, mut data, mut data_end) = (0i64, 0i64, 0i64);
        let (mut data_ok, mut hdu_ok) = (0, 0);
        unsafe {
            fitsio::sys::ffghadll(f.as_raw(), &mut head, &mut data, &mut data_end, &mut status);
        }
        if status == 0 && (data_end as u64) <= size {
            // the checksum reads the HDU's data, so only when it is all there
            unsafe {
                fitsio::sys::ffvcks(f.as_raw(), &mut data_ok, &mut hdu_ok, &mut status);
            }
        }
        if status != 0 {
            return Err(damaged(path, &name, "unreadable", status));
        }
        if compressed && kind == 0 && data_end > data && !last_pixel_reads(&mut f) {
            return Err(FitsError::new(
                path,
                Some(&name),
                None,
                FitsProblem::BadData(
                    "the last pixel cannot be read: the compressed file is truncated or damaged".into(),
                ),
            ));
        }
        if data_ok < 0 || hdu_ok < 0 {
            let key = if data_ok < 0 { "DATASUM" } else { "CHECKSUM" };
            return Err(FitsError::new(
                path,
                Some(&name),
                Some(key),
                FitsProblem::BadData("does not match the bytes of the HDU: the file is damaged".into()),
            ));
        }
        end = data_end as u64;
        last = name;
    }
    if size < end && !compressed {
        // a hostile or damaged NAXISn makes the file look short: name the keyword then
        if let Err(e) = read_meta_from(&mut f, path) {
            if e.keyword.as_deref().is_some_and(|k| k.starts_with("NAXIS")) {
                return Err(e);
            }
        }
        return Err(FitsError::new(
            path,
            Some(&last),
            None,
            FitsProblem::BadData(format!("truncated: the file has {size} bytes, its headers describe {end}")),
        ));
    }
    if size > end && !compressed {
        return Err(FitsError::new(
            path,
            None,
            None,
            FitsProblem::BadData(format!(
                "truncated or damaged: {} bytes after the end of the last complete HDU ({last}) are not a whole \
                 HDU",
                size - end
            )),
        ));
    }
    let meta = read_meta_from(&mut f, path)?;
    for name in ["ERR", "DQ"] {
        check_shape(path, name, &hdu(&mut f, path, name)?, meta.shape)?;
    }
    let sci = read_f32(&mut f, path, "SCI", meta.shape)?;
    if !sci.iter().any(|v| v.is_finite()) {
        return Err(FitsError::new(
            path,
            Some("SCI"),
            None,
            FitsProblem::BadData("no finite pixel (all NaN or Inf): nothing to mosaic".into()),
        ));
    }
    Ok(meta)
}

/// Whether the last pixel of the current image HDU can be read (a compressed file is inflated in
/// memory, where a cut shows only as data that end early).
fn last_pixel_reads(f: &mut FitsFile) -> bool {
    let (mut status, mut naxis) = (0, 0);
    // SAFETY: a valid handle; `naxes` holds up to 9 axes (FITS allows 999, images here have <= 3).
    unsafe {
        fitsio::sys::ffgidm(f.as_raw(), &mut naxis, &mut status);
    }
    if status != 0 || !(1..=9).contains(&naxis) {
        return status == 0;
    }
    let mut naxes = [0i64; 9];
    unsafe {
        fitsio::sys::ffgiszll(f.as_raw(), naxis, naxes.as_mut_ptr(), &mut status);
    }
    let npix: i64 = naxes[..naxis as usize].iter().product();
    if status != 0 || npix <= 0 {
        return status == 0;
    }
    let (mut value, mut anynul) = (0f64, 0);
    unsafe {
        fitsio::sys::ffgpvd(f.as_raw(), 1, npix, 1, 0.0, &mut value, &mut anynul, &mut status);
    }
    status == 0
}

/// Whether the file starts with the magic bytes of a compression cfitsio undoes on open.
fn compressed(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 2];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic));
    read.is_ok() && matches!(&magic, [0x1f, 0x8b] | [0x1f, 0x9d] | [0x1f, 0x1e] | [0x1f, 0xa0] | b"PK" | b"BZ")
}

/// EXTNAME of the current HDU, if it has one.
fn extname(f: &mut FitsFile) -> Option<String> {
    let mut value = [0 as std::os::raw::c_char; 80];
    let mut status = 0;
    let key = CString::new("EXTNAME").expect("no NUL");
    // SAFETY: a valid handle and a buffer of FLEN_VALUE (71) or more.
    unsafe {
        fitsio::sys::ffgkys(f.as_raw(), key.as_ptr(), value.as_mut_ptr(), std::ptr::null_mut(), &mut status);
    }
    (status == 0).then(|| unsafe { CStr::from_ptr(value.as_ptr()) }.to_string_lossy().trim().to_string())
}

/// Add CHECKSUM and DATASUM (the FITS checksum convention) to every HDU of an existing file, in
/// place, e.g. to inputs that lack them so that [`verify_cal`] catches any later damage.
///
/// # Errors
/// [`FitsError`] naming the file and HDU.
pub fn write_checksums(path: &Path) -> Result<(), FitsError> {
    let mut f = open_disk(path, true)?;
    for n in 1..10_000 {
        let (mut status, mut kind) = (0, 0);
        unsafe {
            fitsio::sys::ffmahd(f.as_raw(), n, &mut kind, &mut status);
        }
        if status == 107 && n > 1 {
            break;
        }
        unsafe {
            fitsio::sys::ffpcks(f.as_raw(), &mut status);
        }
        if status != 0 {
            return Err(write_failure(path, Some(&format!("{}", n - 1)), FitsProblem::Cfitsio(status_words(status))));
        }
    }
    flush(&mut f, path)
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
        use crate::io::IoError;
        let (path, problem) = match e {
            IoError::Fs { path, err } if err.raw_os_error() == Some(libc::ENOSPC) => {
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let p = FitsProblem::DiskFull(dir.display().to_string());
                (path, p)
            }
            IoError::Fs { path, err } => (path, FitsProblem::Io(err.to_string())),
            IoError::Format { path, message } => (path, FitsProblem::Io(message)),
            IoError::NoInputs(p) => {
                let m = IoError::NoInputs(p.clone()).to_string();
                (p, FitsProblem::Io(m))
            }
        };
        FitsError { path, hdu: None, keyword: None, problem }
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
                FitsProblem::Cfitsio(format!("writing the card: {}", status_words(status))),
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
                FitsProblem::Cfitsio(status_words(status)),
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
    let h = f.create_image(name, &desc).map_err(|e| write_error(path, Some(name), e))?;
    h.write_image(f, data).map_err(|e| write_error(path, Some(name), e))?;
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
        let mut f = create_disk(tmp, path, None)?;
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
        flush(&mut f, path)
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
        std::fs::copy(src, tmp).map_err(|e| copy_error(src, dst, e))?;
        let mut f = open_disk(tmp, true).map_err(|e| FitsError { path: dst.to_path_buf(), ..e })?;
        let shape = [sci.nrows(), sci.ncols()];
        for (name, write) in [("SCI", 0), ("DQ", 1)] {
            let h = hdu(&mut f, dst, name)?;
            check_shape(dst, name, &h, shape)?;
            let r =
                if write == 0 { h.write_image(&mut f, &std_slice(sci)) } else { h.write_image(&mut f, &std_slice(dq)) };
            r.map_err(|e| write_error(dst, Some(name), e))?;
        }
        f.primary_hdu().map_err(|e| FitsError::cfitsio(dst, Some("PRIMARY"), e))?;
        put_cards(&mut f, dst, "PRIMARY", primary)?;
        put_history(&mut f, dst, "PRIMARY", history)?;
        flush(&mut f, dst)
    })
}

/// A failed copy of `src` to the temporary file of `dst`: a full disk names `dst`, anything else
/// `src` (unreadable).
fn copy_error(src: &Path, dst: &Path, e: std::io::Error) -> FitsError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        let dir = dst.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        return FitsError::new(dst, None, None, FitsProblem::DiskFull(dir.display().to_string()));
    }
    FitsError::new(src, None, None, FitsProblem::Io(format!("copying to {}: {e}", dst.display())))
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
        let mut f = create_disk(tmp, path, Some(&desc))?;
        let h = f.primary_hdu().map_err(|e| FitsError::cfitsio(path, Some("PRIMARY"), e))?;
        h.write_image(&mut f, &std_slice(data)).map_err(|e| write_error(path, Some("PRIMARY"), e))?;
        put_cards(&mut f, path, "PRIMARY", cards)?;
        for (name, a) in extensions {
            write_ext(&mut f, path, name, ImageType::Float, [a.nrows(), a.ncols()], &std_slice(a), &[])?;
        }
        flush(&mut f, path)
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
        let mut f = create_disk(&tmp, path, None)?;
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
            f.create_image(e.name.as_str(), &desc).map_err(|er| write_error(path, Some(&e.name), er))?;
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
        let h = f.hdu(ext).map_err(|e| write_error(&self.path, Some(ext), e))?;
        let data = rows.as_standard_layout();
        let start = y0 * self.nx;
        h.write_section(f, start, start + data.len(), data.as_slice().expect("standard layout"))
            .map_err(|e| write_error(&self.path, Some(ext), e))
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
        let h = f.hdu(ext).map_err(|e| write_error(&self.path, Some(ext), e))?;
        let data = rows.as_standard_layout();
        let start = plane * self.ny * self.nx + y0 * self.nx;
        h.write_section(f, start, start + data.len(), data.as_slice().expect("standard layout"))
            .map_err(|e| write_error(&self.path, Some(ext), e))
    }

    /// Close the file and rename it to its final name.
    ///
    /// # Errors
    /// [`FitsError`] naming the file.
    pub fn finish(mut self) -> Result<(), FitsError> {
        if let Some(f) = self.f.as_mut() {
            flush(f, &self.path)?;
        }
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
        std::fs::copy(src, tmp).map_err(|e| copy_error(src, dst, e))?;
        let mut f = open_disk(tmp, true).map_err(|e| FitsError { path: dst.to_path_buf(), ..e })?;
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
        put_history(&mut f, dst, "PRIMARY", history)?;
        flush(&mut f, dst)
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

/// Copy `src` to `dst` (atomically) for a release: the HDUs named in `drop` deleted where present
/// (`release.remove_bloat`: the VAR_* extensions), `cards` set and `history` appended in PRIMARY, with
/// the CHECKSUM/DATASUM of every HDU rewritten. Returns the HDUs dropped.
///
/// # Errors
/// [`FitsError`] naming the file and HDU.
pub fn copy_for_release(
    src: &Path,
    dst: &Path,
    drop: &[&str],
    cards: &[Card],
    history: &[String],
) -> Result<Vec<String>, FitsError> {
    if !src.is_file() {
        return Err(FitsError::cfitsio(src, None, "file does not exist"));
    }
    let mut dropped = vec![];
    crate::io::write_atomic(dst, |tmp| -> Result<(), FitsError> {
        std::fs::copy(src, tmp).map_err(|e| copy_error(src, dst, e))?;
        let mut f = open_disk(tmp, true).map_err(|e| FitsError { path: dst.to_path_buf(), ..e })?;
        for name in drop {
            if let Ok(h) = f.hdu(*name) {
                h.delete(&mut f).map_err(|e| FitsError::cfitsio(dst, Some(name), e))?;
                dropped.push(name.to_string());
            }
        }
        f.primary_hdu().map_err(|e| FitsError::cfitsio(dst, Some("PRIMARY"), e))?;
        put_cards(&mut f, dst, "PRIMARY", cards)?;
        put_history(&mut f, dst, "PRIMARY", history)?;
        flush(&mut f, dst)?;
        std::mem::drop(f);
        write_checksums(tmp).map_err(|e| FitsError { path: dst.to_path_buf(), ..e })
    })?;
    Ok(dropped)
}

/// Rewrite the float image extension `ext` of `path` in place (atomically: a copy under a
/// temporary name, renamed when complete), row block by row block: `rows(y0..y1)` gives the new
/// full-width rows. `cards` are set in PRIMARY and in `ext` (replacing cards of the same name), and
/// `history` is appended to PRIMARY. Every other HDU and card is kept byte for byte. Used by the
/// `anchor` stage to write the anchored mosaic.
///
/// # Errors
/// [`FitsError`] naming the file and HDU, or the error of `rows`.
pub fn rewrite_ext_f32<E: From<FitsError> + From<crate::io::IoError>>(
    path: &Path,
    ext: &str,
    row_block: usize,
    mut rows: impl FnMut(Range<usize>) -> Result<Array2<f32>, E>,
    cards: &[Card],
    history: &[String],
) -> Result<(), E> {
    let [ny, nx] = image_shape(path, ext)?;
    crate::io::write_atomic(path, |tmp| -> Result<(), E> {
        std::fs::copy(path, tmp).map_err(|e| copy_error(path, tmp, e))?;
        let mut f = open_disk(tmp, true).map_err(|e| FitsError { path: path.to_path_buf(), ..e })?;
        let mut y = 0;
        while y < ny {
            let r = y..(y + row_block.max(1)).min(ny);
            let block = rows(r.clone())?;
            if block.dim() != (r.len(), nx) {
                return Err(FitsError::new(
                    path,
                    Some(ext),
                    None,
                    FitsProblem::BadData(format!(
                        "rows {}..{} given as {:?}, expected {}x{nx}",
                        r.start,
                        r.end,
                        block.dim(),
                        r.len()
                    )),
                )
                .into());
            }
            let h = hdu(&mut f, path, ext)?;
            let data = std_slice(&block);
            h.write_section(&mut f, y * nx, r.end * nx, &data).map_err(|e| write_error(path, Some(ext), e))?;
            y = r.end;
        }
        put_cards(&mut f, path, ext, cards)?;
        f.primary_hdu().map_err(|e| FitsError::cfitsio(path, Some("PRIMARY"), e))?;
        put_cards(&mut f, path, "PRIMARY", cards)?;
        put_history(&mut f, path, "PRIMARY", history)?;
        flush(&mut f, path)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfitsio_statuses_are_put_in_words() {
        let w = status_words(107);
        assert!(w.contains("end of file") && w.contains("truncated") && w.contains("cfitsio status 107"), "{w}");
        assert!(status_words(108).contains("error reading from FITS file"), "{}", status_words(108));
        assert!(status_words(252).contains("not a FITS file"));
        let e = FitsError::cfitsio(
            Path::new("a.fits"),
            Some("SCI"),
            fitsio::errors::Error::Fits(fitsio::errors::FitsError { status: 107, message: String::new() }),
        );
        let text = e.to_string();
        assert!(
            !text.contains("FitsError {") && text.starts_with("a.fits [HDU SCI]: cfitsio: tried to move past"),
            "{text}"
        );
    }

    #[test]
    fn a_full_disk_is_named_as_such() {
        let io = crate::io::IoError::fs(Path::new("/data/out/m.fits"), std::io::Error::from_raw_os_error(libc::ENOSPC));
        let e = FitsError::from(io);
        assert_eq!(e.to_string(), "/data/out/m.fits: no space left on device in /data/out");
        let d = tempfile::tempdir().unwrap();
        assert!(free_bytes(&d.path().join("not/yet")).is_some_and(|b| b > 0));
    }

    #[test]
    fn bracketed_names_are_plain_file_names() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("img[1].fits");
        let a = Array2::from_shape_fn((3, 4), |(y, x)| (10 * y + x) as f32);
        write_image(&p, &a, &[card_int("ANSWER", 42, "")], &[]).unwrap();
        assert!(p.is_file() && !d.path().join("img").exists());
        let (b, cards) = read_image(&p).unwrap();
        assert_eq!(a, b);
        assert_eq!(cards.get("ANSWER"), Some(&CardValue::Int(42)));
    }
}
