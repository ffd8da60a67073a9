//! Regridding an image onto another pixel grid by bilinear interpolation of surface brightness
//! (pjpipe's psf_matching regrids a band matched to another band's PSF onto that band's grid). A
//! pixel whose four neighbours are not all finite is NaN; ERR is interpolated alike (the regrid's own
//! covariance is ignored, as pjpipe does). The pixel mapping comes in as a function, so no WCS
//! reaches this module.

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

/// Bilinear value of `img` at the 0-based position (`x`, `y`); NaN outside or next to a NaN.
pub fn bilinear(img: ArrayView2<f32>, x: f64, y: f64) -> f32 {
    let (ny, nx) = img.dim();
    if !(x >= 0.0 && y >= 0.0 && x <= (nx - 1) as f64 && y <= (ny - 1) as f64) {
        return f32::NAN;
    }
    let (x0, y0) = ((x.floor() as usize).min(nx.saturating_sub(2)), (y.floor() as usize).min(ny.saturating_sub(2)));
    let (x1, y1) = ((x0 + 1).min(nx - 1), (y0 + 1).min(ny - 1));
    let (tx, ty) = (x - x0 as f64, y - y0 as f64);
    let v = [img[[y0, x0]], img[[y0, x1]], img[[y1, x0]], img[[y1, x1]]];
    if v.iter().any(|p| !p.is_finite()) {
        return f32::NAN;
    }
    let top = v[0] as f64 * (1.0 - tx) + v[1] as f64 * tx;
    let bot = v[2] as f64 * (1.0 - tx) + v[3] as f64 * tx;
    (top * (1.0 - ty) + bot * ty) as f32
}

/// `img` resampled onto an `ny x nx` grid: output pixel (`x`, `y`) takes `img` at `map(x, y)` (its
/// position in `img`'s pixels, `None` = off the sky).
pub fn regrid(
    img: ArrayView2<f32>,
    ny: usize,
    nx: usize,
    map: impl Fn(f64, f64) -> Option<(f64, f64)> + Sync,
) -> Array2<f32> {
    let mut out = Array2::from_elem((ny, nx), f32::NAN);
    out.axis_iter_mut(ndarray::Axis(0)).into_par_iter().enumerate().for_each(|(y, mut row)| {
        for x in 0..nx {
            if let Some((u, v)) = map(x as f64, y as f64) {
                row[x] = bilinear(img, u, v);
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plane_is_interpolated_exactly_and_nans_spread_to_neighbours() {
        let mut img = Array2::from_shape_fn((10, 12), |(y, x)| (2.0 * x as f64 + 3.0 * y as f64) as f32);
        let out = regrid(img.view(), 5, 5, |x, y| Some((1.5 + 2.0 * x, 0.25 + 1.5 * y)));
        for ((y, x), v) in out.indexed_iter() {
            let want = 2.0 * (1.5 + 2.0 * x as f64) + 3.0 * (0.25 + 1.5 * y as f64);
            assert!((*v as f64 - want).abs() < 1e-4, "{v} {want}");
        }
        img[[4, 4]] = f32::NAN;
        assert!(bilinear(img.view(), 3.5, 3.5).is_nan());
        assert!(bilinear(img.view(), 5.5, 5.5).is_finite());
        assert!(bilinear(img.view(), -0.1, 2.0).is_nan());
    }
}
