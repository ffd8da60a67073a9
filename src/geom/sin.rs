//! The FITS SIN (orthographic, slant parameters zero) projection, for wide-field reference images
//! (WISE atlas tiles are SIN), and [`SkyWcs`]: a celestial WCS that is TAN(-SIP) or SIN, whichever
//! the header says.
//!
//! SIN with PV2_1 = PV2_2 = 0 (Calabretta & Greisen 2002, A&A 395, 1077, section 5.1.5, eq. 55-56,
//! with LONPOLE = 180 deg): the intermediate world coordinates are the direction cosines of the
//! position about the reference point, `xi = cos d sin(a - a0)`, `eta = sin d cos d0 - cos d sin d0
//! cos(a - a0)` (radians), with the reference point's hemisphere only (`cos c > 0`); the inverse
//! takes `cos c = sqrt(1 - xi^2 - eta^2)`. The pixel-to-intermediate step is the same linear part
//! as TAN's (CDi_j, PCi_j x CDELTi, or CDELTi with CROTA2). Checked against astropy's `WCS`
//! (tests below).

use super::wcs::{
    bad, check_units_and_frame, det2, invert2, linear_part, real, required_real, required_text, wrap_360, CardValue,
    TanSip, WcsError,
};
use std::collections::BTreeMap;

const ARCSEC_PER_DEG: f64 = 3600.0;

/// A SIN projection without slant parameters or distortion.
#[derive(Clone, Debug, PartialEq)]
pub struct SinWcs {
    /// FITS 1-based `[CRPIX1, CRPIX2]`.
    pub crpix: [f64; 2],
    /// `[CRVAL1, CRVAL2]` = (RA, Dec) of the reference point, degrees.
    pub crval_deg: [f64; 2],
    /// Linear part, degrees per pixel.
    pub cd: [[f64; 2]; 2],
}

impl SinWcs {
    /// 0-based pixel to (RA, Dec) in degrees, RA in [0, 360); NaN outside the projection's disc.
    pub fn pixel_to_sky(&self, x: f64, y: f64) -> (f64, f64) {
        let (u, v) = (x + 1.0 - self.crpix[0], y + 1.0 - self.crpix[1]);
        let xi = (self.cd[0][0] * u + self.cd[0][1] * v).to_radians();
        let eta = (self.cd[1][0] * u + self.cd[1][1] * v).to_radians();
        let rho2 = xi * xi + eta * eta;
        if rho2 > 1.0 {
            return (f64::NAN, f64::NAN);
        }
        let cos_c = (1.0 - rho2).sqrt();
        let (sin_d0, cos_d0) = self.crval_deg[1].to_radians().sin_cos();
        let dec = (cos_c * sin_d0 + eta * cos_d0).clamp(-1.0, 1.0).asin().to_degrees();
        let ra = self.crval_deg[0] + xi.atan2(cos_c * cos_d0 - eta * sin_d0).to_degrees();
        (wrap_360(ra), dec)
    }

    /// (RA, Dec) in degrees to the 0-based pixel.
    ///
    /// # Errors
    /// [`WcsError::OutsideProjection`] on the far hemisphere, [`WcsError::SingularCd`].
    pub fn sky_to_pixel(&self, ra_deg: f64, dec_deg: f64) -> Result<(f64, f64), WcsError> {
        let (sin_d0, cos_d0) = self.crval_deg[1].to_radians().sin_cos();
        let (sin_d, cos_d) = dec_deg.to_radians().sin_cos();
        let (sin_da, cos_da) = (ra_deg - self.crval_deg[0]).to_radians().sin_cos();
        let cos_c = sin_d0 * sin_d + cos_d0 * cos_d * cos_da;
        if cos_c <= 0.0 || cos_c.is_nan() {
            return Err(WcsError::OutsideProjection { ra_deg, dec_deg });
        }
        let xi = (cos_d * sin_da).to_degrees();
        let eta = (sin_d * cos_d0 - cos_d * sin_d0 * cos_da).to_degrees();
        let inv = invert2(&self.cd).ok_or(WcsError::SingularCd)?;
        let u = inv[0][0] * xi + inv[0][1] * eta;
        let v = inv[1][0] * xi + inv[1][1] * eta;
        Ok((u + self.crpix[0] - 1.0, v + self.crpix[1] - 1.0))
    }
}

/// A celestial WCS as a header gives it: TAN (with or without SIP) or SIN.
#[derive(Clone, Debug, PartialEq)]
pub enum SkyWcs {
    Tan(TanSip),
    Sin(SinWcs),
}

impl SkyWcs {
    /// Parse from header cards: `RA---SIN`/`DEC--SIN` (PV2_1 and PV2_2 absent or zero; LONPOLE absent
    /// or 180; CUNIT deg; RADESYS ICRS or FK5) as [`SinWcs`], anything else through
    /// [`TanSip::from_cards`] (whose errors name the CTYPEs it accepts).
    ///
    /// # Errors
    /// As [`TanSip::from_cards`]; for SIN, a missing keyword, slant parameters, another LONPOLE or a
    /// singular linear part.
    pub fn from_cards(cards: &BTreeMap<String, CardValue>) -> Result<Self, WcsError> {
        let c1 = required_text(cards, "CTYPE1")?.to_ascii_uppercase();
        let c2 = required_text(cards, "CTYPE2")?.to_ascii_uppercase();
        if c1 != "RA---SIN" && c2 != "DEC--SIN" {
            return TanSip::from_cards(cards).map(SkyWcs::Tan);
        }
        if c1 != "RA---SIN" || c2 != "DEC--SIN" {
            return Err(bad("CTYPE1", format!("'{c1}' and '{c2}' are not a RA---SIN/DEC--SIN pair")));
        }
        for key in ["PV2_1", "PV2_2"] {
            if real(cards, key)?.is_some_and(|v| v != 0.0) {
                return Err(bad(key, "slant SIN projections (PV2_1/PV2_2 not 0) are not supported".into()));
            }
        }
        if let Some(l) = real(cards, "LONPOLE")? {
            if (l - 180.0).abs() > 1e-9 {
                return Err(bad("LONPOLE", format!("{l} is not supported, only 180")));
            }
        }
        check_units_and_frame(cards)?;
        let crpix = [required_real(cards, "CRPIX1")?, required_real(cards, "CRPIX2")?];
        let crval_deg = [required_real(cards, "CRVAL1")?, required_real(cards, "CRVAL2")?];
        if !(-90.0..90.0).contains(&crval_deg[1]) {
            return Err(bad("CRVAL2", format!("{} is outside [-90, 90)", crval_deg[1])));
        }
        let cd = linear_part(cards)?;
        if !det2(&cd).is_finite() || det2(&cd) == 0.0 {
            return Err(WcsError::SingularCd);
        }
        Ok(SkyWcs::Sin(SinWcs { crpix, crval_deg, cd }))
    }

    /// 0-based pixel to (RA, Dec), degrees.
    pub fn pixel_to_sky(&self, x: f64, y: f64) -> (f64, f64) {
        match self {
            SkyWcs::Tan(w) => w.pixel_to_sky(x, y),
            SkyWcs::Sin(w) => w.pixel_to_sky(x, y),
        }
    }

    /// (RA, Dec) in degrees to the 0-based pixel.
    ///
    /// # Errors
    /// As [`TanSip::sky_to_pixel`] and [`SinWcs::sky_to_pixel`].
    pub fn sky_to_pixel(&self, ra_deg: f64, dec_deg: f64) -> Result<(f64, f64), WcsError> {
        match self {
            SkyWcs::Tan(w) => w.sky_to_pixel(ra_deg, dec_deg),
            SkyWcs::Sin(w) => w.sky_to_pixel(ra_deg, dec_deg),
        }
    }

    /// The pixel scale at the reference point, arcsec (square root of |det CD|).
    pub fn pixel_scale_arcsec(&self) -> f64 {
        match self {
            SkyWcs::Tan(w) => w.pixel_scale_arcsec(),
            SkyWcs::Sin(w) => det2(&w.cd).abs().sqrt() * ARCSEC_PER_DEG,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CardValue::{Real, Text};

    /// A 400 x 300 SIN header at 1.375"/px rotated by 10 deg (PC form), as a WISE atlas tile has.
    fn header(cdelt: f64) -> BTreeMap<String, CardValue> {
        let mut m = BTreeMap::new();
        m.insert("CTYPE1".into(), Text("RA---SIN".into()));
        m.insert("CTYPE2".into(), Text("DEC--SIN".into()));
        for (k, v) in [
            ("CRPIX1", 200.5),
            ("CRPIX2", 150.5),
            ("CRVAL1", 24.174),
            ("CRVAL2", 15.783),
            ("CDELT1", -cdelt),
            ("CDELT2", cdelt),
            ("PC1_1", 0.9848077530),
            ("PC1_2", -0.1736481777),
            ("PC2_1", 0.1736481777),
            ("PC2_2", 0.9848077530),
        ] {
            m.insert(k.into(), Real(v));
        }
        m
    }

    /// astropy 8.0.2 `WCS(header).all_pix2world(..., 0)` of the same headers.
    #[test]
    fn sin_matches_astropy_and_round_trips() {
        let cases = [
            (3.8194e-4, 0.0, 0.0, 24.241652442761, 15.713525497701),
            (3.8194e-4, 399.0, 299.0, 24.106301175136, 15.852453579857),
            (3.8194e-4, 199.5, 149.5, 24.174, 15.783),
            (3.8194e-4, 10.25, 280.75, 24.257033970778, 15.819800637846),
            (3.8194e-4, 350.0, 20.0, 24.106261040726, 15.744261350804),
            // 0.05 deg pixels: 20 deg from the reference point, where SIN and TAN differ by degrees
            (0.05, 0.0, 0.0, 32.786547402528, 6.473906366280),
            (0.05, 399.0, 299.0, 14.745887455649, 24.721573896707),
        ];
        for (cdelt, x, y, ra, dec) in cases {
            let w = SkyWcs::from_cards(&header(cdelt)).unwrap();
            assert!(matches!(w, SkyWcs::Sin(_)));
            let (r, d) = w.pixel_to_sky(x, y);
            assert!((r - ra).abs() < 1e-9 && (d - dec).abs() < 1e-9, "({x}, {y}): {r} {d} vs {ra} {dec}");
            let (px, py) = w.sky_to_pixel(ra, dec).unwrap();
            assert!((px - x).abs() < 1e-6 && (py - y).abs() < 1e-6, "({x}, {y}) back to ({px}, {py})");
        }
        let w = SkyWcs::from_cards(&header(3.8194e-4)).unwrap();
        assert!((w.pixel_scale_arcsec() - 1.375).abs() < 1e-3);
        // the far hemisphere has no projection
        assert!(w.sky_to_pixel(24.174 + 180.0, -15.783).is_err());
    }

    #[test]
    fn tan_headers_stay_tan_and_bad_sin_headers_are_named() {
        let mut h = header(3.8194e-4);
        h.insert("CTYPE1".into(), Text("RA---TAN".into()));
        h.insert("CTYPE2".into(), Text("DEC--TAN".into()));
        assert!(matches!(SkyWcs::from_cards(&h).unwrap(), SkyWcs::Tan(_)));
        let mut h = header(3.8194e-4);
        h.insert("CTYPE2".into(), Text("DEC--TAN".into()));
        assert!(SkyWcs::from_cards(&h).unwrap_err().to_string().contains("RA---SIN/DEC--SIN"));
        let mut h = header(3.8194e-4);
        h.insert("PV2_1".into(), Real(0.1));
        assert!(SkyWcs::from_cards(&h).unwrap_err().to_string().contains("PV2_1"));
        let mut h = header(3.8194e-4);
        h.insert("CTYPE1".into(), Text("RA---ZEA".into()));
        h.insert("CTYPE2".into(), Text("DEC--ZEA".into()));
        assert!(SkyWcs::from_cards(&h).unwrap_err().to_string().contains("RA---TAN"));
    }
}
