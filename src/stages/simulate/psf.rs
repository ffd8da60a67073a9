//! The simulator's PSF images for `psfmatch`: the band's PSF at 4x oversampling, in the stpsf
//! (WebbPSF) layout: the oversampled PSF in the primary HDU with `PIXELSCL` = the oversampled scale
//! in arcsec/pixel, `OVERSAMP` = 4, `DET_SAMP`, `FOV` and `FILTER` (poppy's FITS header keywords,
//! https://github.com/spacetelescope/poppy/blob/stable/docs/fitsheaders.rst: "PIXELSCL: Scale in
//! arcsecond/pixel ... (after oversampling)"; pjpipe reads stpsf PSFs at oversample 4 with a field of
//! view of 10" for NIRCam and 19.98" for MIRI, reference section 12).
//!
//! The image is the simulator's own optical PSF (the circular Gaussian `kernels::scene` renders
//! with, not integrated over pixels, as stpsf's oversampled PSF is not), so that matching with it
//! is exact for simulated data. Real JWST PSFs have Airy rings and diffraction spikes; their safe
//! FWHMs are broader (the README says by how much the table differs from the paper's Table 2).

use crate::config::Instrument;
use crate::io::fits::{card_int, card_real, card_text, write_image};
use std::path::{Path, PathBuf};

/// Oversampling of the PSF images (stpsf's default in pjpipe).
pub const OVERSAMPLE: usize = 4;

/// The field of view of the PSF image, arcsec (pjpipe's stpsf calls).
pub fn psf_fov_arcsec(instrument: Instrument) -> f64 {
    match instrument {
        Instrument::Miri => 19.98,
        _ => 10.0,
    }
}

/// File name of the oversampled PSF of `filter` under `aux/`.
pub fn psf_file_name(filter: &str) -> String {
    format!("psf_{filter}_os{OVERSAMPLE}.fits")
}

/// Write `aux/psf_<filter>_os4.fits`: a unit-sum circular Gaussian of FWHM `fwhm_arcsec` sampled at
/// pixel centres at `native_scale_arcsec / 4`, odd-sized over the instrument's field of view.
///
/// # Errors
/// The FITS write, naming the file.
pub fn write_oversampled_psf(
    aux: &Path,
    filter: &str,
    instrument: Instrument,
    fwhm_arcsec: f64,
    native_scale_arcsec: f64,
) -> crate::Result<PathBuf> {
    let scale = native_scale_arcsec / OVERSAMPLE as f64;
    let fov = psf_fov_arcsec(instrument);
    let n = ((fov / scale).round() as usize) | 1;
    let img = crate::kernels::psfmatch::kernel::gaussian_image(n, fwhm_arcsec / scale).mapv(|v| v as f32);
    let path = aux.join(psf_file_name(filter));
    write_image(
        &path,
        &img,
        &[
            card_text("FILTER", filter, "filter the PSF is for"),
            card_real("PIXELSCL", scale, "[arcsec/pixel] scale after oversampling"),
            card_int("OVERSAMP", OVERSAMPLE as i64, "oversampling relative to the detector"),
            card_int("DET_SAMP", OVERSAMPLE as i64, "oversampling of the detector plane"),
            card_real("FOV", n as f64 * scale, "[arcsec] field of view"),
            card_real("FWHM", fwhm_arcsec, "[arcsec] Gaussian FWHM (the simulator's PSF)"),
            card_text("NORMALIZ", "SUM", "unit sum"),
        ],
        &[],
    )?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::psfmatch::{safe_fwhm, KernelParams, PsfImage};

    /// The safe-FWHM table of the simulator's PSFs (README), printed; each row is ordered and above
    /// the source FWHM.
    #[test]
    fn safe_fwhm_table_of_the_simulator_psfs() {
        for band in ["F200W", "F300M", "F335M", "F360M", "F770W", "F1000W", "F1130W", "F2100W"] {
            let inst = Instrument::of_filter(band).unwrap();
            let f = crate::stages::simulate::survey::psf_fwhm_arcsec(band, inst);
            let scale = inst.native_pixscale_arcsec() / OVERSAMPLE as f64;
            let n = ((10.0 * f / scale) as usize) | 1;
            let img = crate::kernels::psfmatch::kernel::gaussian_image(n, f / scale);
            let t = safe_fwhm(&PsfImage { data: img, scale_arcsec: scale }, &KernelParams::default()).unwrap();
            println!(
                "| {band} | {:.3} | {:.3} | {:.3} | {:.3} |",
                t.source_fwhm_arcsec, t.very_safe_arcsec, t.safe_arcsec, t.aggressive_arcsec
            );
            assert!(t.very_safe_arcsec >= t.safe_arcsec && t.safe_arcsec >= t.aggressive_arcsec);
            assert!(t.aggressive_arcsec >= t.source_fwhm_arcsec);
        }
    }
}
