//! Geometry: the TAN-SIP WCS of the exposures, the output mosaic grid, and footprint polygons.
//!
//! Everything here is pure math on 0-based pixel coordinates (`x` = column, `y` = row, the centre of
//! the first pixel is 0.0) and sky coordinates in degrees. No files, no MPI, no config: FITS header
//! cards reach this module as a plain map built by `io::fits`.

pub mod correction;
pub mod grid;
pub mod pixmap;
pub mod polygon;
pub mod sin;
pub mod wcs;

pub use correction::SkyCorrection;
pub use grid::OutputGrid;
pub use polygon::Polygon;
pub use sin::{SinWcs, SkyWcs};
pub use wcs::{sky_to_tangent_arcsec, tangent_arcsec_to_sky, CardValue, SipPoly, TanSip, WcsError};

/// Arcseconds per degree.
pub const ARCSEC_PER_DEG: f64 = 3600.0;
/// Steradians per square arcsecond.
pub const SR_PER_ARCSEC2: f64 = (std::f64::consts::PI / 180.0 / 3600.0) * (std::f64::consts::PI / 180.0 / 3600.0);

/// A position on the sky (ICRS), in degrees.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SkyCoord {
    pub ra_deg: f64,
    pub dec_deg: f64,
}

/// A 0-based pixel position (`x` column, `y` row; pixel centres are integers).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PixelCoord {
    pub x: f64,
    pub y: f64,
}

/// Angular separation of two sky positions in degrees (haversine form, accurate at small angles).
pub fn separation_deg(a: SkyCoord, b: SkyCoord) -> f64 {
    let (ra1, de1) = (a.ra_deg.to_radians(), a.dec_deg.to_radians());
    let (ra2, de2) = (b.ra_deg.to_radians(), b.dec_deg.to_radians());
    let s = ((de2 - de1) / 2.0).sin().powi(2) + de1.cos() * de2.cos() * ((ra2 - ra1) / 2.0).sin().powi(2);
    (2.0 * s.sqrt().min(1.0).asin()).to_degrees()
}
