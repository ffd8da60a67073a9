//! Test fixtures of the destriping kernels' unit tests (compiled for tests only): a synthetic
//! NIRCam-like exposure with a galaxy, clumps, noise and 1/f row and column stripes of known truth,
//! the stripe rms and correlation measures the tests assert on, and scaled-down parameters.
//!
//! What does not live here: the simulator's detector model (`kernels::detector`), whose 1/f series
//! generator the scene uses.

use ndarray::{s, Array2, Zip};
use std::ops::Range;

use super::filters::gauss;
use super::params::{AmpLayout, ButterworthParams, SingleTileParams};
use crate::kernels::stats::nanmedian;

pub(crate) fn uniform(seed: u64, i: u64) -> f64 {
    // map a normal deviate through its CDF is overkill; use the Box-Muller inputs' cousin
    let g = gauss(seed, i);
    0.5 * (1.0 + libm_erf(g / std::f64::consts::SQRT_2))
}

pub(crate) fn libm_erf(x: f64) -> f64 {
    // Abramowitz & Stegun 7.1.26 (|err| < 1.5e-7), enough for test draws
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592)
            * t
            * (-x * x).exp();
    y.copysign(x)
}

/// Zero-mean unit-rms 1/f series of length n (the simulator's), with no power below `fmin`
/// cycles per sample, its deviates from `gauss(seed, 2, 3, ...)`.
pub(crate) fn one_over_f(seed: u64, n: usize, fmin: f64) -> Vec<f64> {
    let mut i = 1;
    crate::kernels::detector::one_over_f_series_with(n, fmin, || {
        i += 1;
        gauss(seed, i)
    })
}

pub(crate) struct Scene {
    /// galaxy component only
    pub(crate) galaxy: Array2<f64>,
    /// stripes truth
    pub(crate) stripes: Array2<f64>,
    /// observed = truth + stripes + noise, reference border zero
    pub(crate) data: Array2<f32>,
    pub(crate) bad: Array2<bool>,
}

/// Flat sky + a big 2-D Gaussian galaxy + a few compact clumps + white noise + per-amp 1/f
/// row stripes (half common, half per amp) + 1/f column stripes, 4-px zero border flagged.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scene(
    ny: usize,
    nx: usize,
    amp_w: usize,
    stripe_rms: f64,
    noise: f64,
    border: usize,
    seed: u64,
    fmin: f64,
) -> Scene {
    let (cy, cx) = (ny as f64 * 0.55, nx as f64 * 0.45);
    let (sy, sx) = (ny as f64 * 0.18, nx as f64 * 0.18);
    let clumps: Vec<(f64, f64, f64)> = (0..12)
        .map(|k| {
            (
                cy + (uniform(seed + 7, k) - 0.5) * 3.0 * sy,
                cx + (uniform(seed + 8, k) - 0.5) * 3.0 * sx,
                0.5 + 2.0 * uniform(seed + 9, k),
            )
        })
        .collect();
    let galaxy = Array2::from_shape_fn((ny, nx), |(y, x)| {
        let (dy, dx) = ((y as f64 - cy) / sy, (x as f64 - cx) / sx);
        let mut v = 3.0 * (-0.5 * (dy * dy + dx * dx)).exp();
        for &(ky, kx, a) in &clumps {
            let r2 = ((y as f64 - ky).powi(2) + (x as f64 - kx).powi(2)) / (2.0 * 2.0 * 2.0);
            v += a * (-r2).exp();
        }
        v
    });
    let truth = galaxy.mapv(|g| g + 0.2);
    let n_amp = nx.div_ceil(amp_w);
    let common = one_over_f(seed + 1, ny, fmin);
    let amps: Vec<Vec<f64>> = (0..n_amp).map(|a| one_over_f(seed + 100 + a as u64, ny, fmin)).collect();
    let cols = one_over_f(seed + 2, nx, fmin);
    let stripes = Array2::from_shape_fn((ny, nx), |(y, x)| {
        let a = x / amp_w;
        stripe_rms * ((0.5f64).sqrt() * (common[y] + amps[a][y]) + 0.3 * cols[x])
    });
    let in_border = |y: usize, x: usize| y < border || x < border || y >= ny - border || x >= nx - border;
    let data = Array2::from_shape_fn((ny, nx), |(y, x)| {
        if in_border(y, x) {
            0.0
        } else {
            (truth[[y, x]] + stripes[[y, x]] + noise * gauss(seed + 3, (y * nx + x) as u64)) as f32
        }
    });
    let bad = Array2::from_shape_fn((ny, nx), |(y, x)| in_border(y, x));
    Scene { galaxy, stripes, data, bad }
}

/// rms (about the mean) of per-amp row medians and of column medians of `r` over the pixels
/// `sel` (inside the border), combined in quadrature.
pub(crate) fn stripe_rms(r: &Array2<f64>, amp_w: usize, rows: Range<usize>, cols: Range<usize>) -> f64 {
    let rms = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt()
    };
    let mut rowmeds = Vec::new();
    let a0 = cols.start / amp_w;
    let a1 = (cols.end - 1) / amp_w;
    for a in a0..=a1 {
        let c = cols.start.max(a * amp_w)..cols.end.min((a + 1) * amp_w);
        let mut v: Vec<f64> = rows.clone().map(|y| nanmedian(&r.slice(s![y, c.clone()]).to_vec())).collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        v.iter_mut().for_each(|x| *x -= m);
        rowmeds.extend(v);
    }
    let colmeds: Vec<f64> = cols.clone().map(|x| nanmedian(&r.slice(s![rows.clone(), x]).to_vec())).collect();
    (rms(&rowmeds).powi(2) + rms(&colmeds).powi(2)).sqrt()
}

pub(crate) fn corr(a: &Array2<f64>, b: &Array2<f64>, border: usize) -> f64 {
    let (ny, nx) = a.dim();
    let sa = a.slice(s![border..ny - border, border..nx - border]);
    let sb = b.slice(s![border..ny - border, border..nx - border]);
    let n = sa.len() as f64;
    let (ma, mb) = (sa.sum() / n, sb.sum() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    Zip::from(&sa).and(&sb).for_each(|&x, &y| {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    });
    sab / (saa * sbb).sqrt()
}

pub(crate) fn rms(a: &Array2<f64>) -> f64 {
    (a.iter().map(|v| v * v).sum::<f64>() / a.len() as f64).sqrt()
}

/// Scaled-down NIRCam: 512 x 512 with 128-column amps stands for 2048 x 2048 with 512; the
/// cutoff and the filter scales scale with it (0.005 * 4, scales up to 511 / 4).
pub(crate) fn scaled_params() -> SingleTileParams {
    SingleTileParams {
        amps: AmpLayout::Columns { width_px: 128 },
        filter_scales: vec![3, 7, 15, 31, 63, 127],
        butterworth: ButterworthParams { cutoff_ratio: 0.02, ..Default::default() },
        ..Default::default()
    }
}

/// (whole, galaxy, empty) stripe rms of `r`.
pub(crate) fn regions(r: &Array2<f64>, w: usize, b: usize) -> [f64; 5] {
    let (ny, nx) = r.dim();
    [
        stripe_rms(r, w, b..ny - b, b..nx - b),
        stripe_rms(r, w, ny / 2 - 60..ny / 2 + 90, nx / 2 - 80..nx / 2 + 40),
        stripe_rms(r, w, b..70, b..nx - b),
        stripe_rms(r, w, 16..ny - 16, b..nx - b),
        stripe_rms(r, w, 16..70, b..nx - b),
    ]
}
