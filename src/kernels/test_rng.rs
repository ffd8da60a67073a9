//! The unit tests' seeded generator (SplitMix64 with Box-Muller normals, small and dependency-free,
//! so synthetic test data is the same on every platform), synthetic stars and synthetic pair
//! differences (for the clipped statistics). Compiled for tests
//! only; the simulator draws from ChaCha streams instead (`stages::simulate`).

use super::sources::FWHM_PER_SIGMA;
use ndarray::Array2;

/// Deterministic pseudo-random numbers (SplitMix64).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Add a pixel-integrated circular Gaussian of total `flux` (counts) centred at `(x0, y0)`,
/// integrated by 7x7 sub-pixel sampling.
pub(crate) fn add_star(img: &mut Array2<f64>, x0: f64, y0: f64, flux: f64, fwhm: f64) {
    let s = fwhm / FWHM_PER_SIGMA;
    let h = (6.0 * s).ceil() as isize + 1;
    let (ny, nx) = img.dim();
    let ns = 7;
    let norm = flux / (2.0 * std::f64::consts::PI * s * s) / (ns * ns) as f64;
    for y in (y0.round() as isize - h)..=(y0.round() as isize + h) {
        for x in (x0.round() as isize - h)..=(x0.round() as isize + h) {
            if y < 0 || x < 0 || y >= ny as isize || x >= nx as isize {
                continue;
            }
            let mut v = 0.0;
            for a in 0..ns {
                for b in 0..ns {
                    let sy = y as f64 - 0.5 + (a as f64 + 0.5) / ns as f64 - y0;
                    let sx = x as f64 - 0.5 + (b as f64 + 0.5) / ns as f64 - x0;
                    v += (-(sx * sx + sy * sy) / (2.0 * s * s)).exp();
                }
            }
            img[[y as usize, x as usize]] += norm * v;
        }
    }
}

/// Synthetic pair differences (MJy/sr): Gaussian noise about `offset`, a fraction `tail` of
/// pixels with (mostly positive) log-normal source emission, `n_cr` cosmic-ray-like outliers
/// of either sign, a few NaN; values rounded to f32 like differences of f32 images.
pub(crate) fn synth_differences(seed: u64, n: usize, offset: f64, sigma: f64, tail: f64, n_cr: usize) -> Vec<f64> {
    let mut r = Rng(seed);
    let mut v = Vec::with_capacity(n + n_cr + 10);
    for _ in 0..n {
        let mut d = offset + sigma * r.normal();
        if r.uniform() < tail {
            let e = (1.5 * r.normal()).exp() * 0.5;
            d += if r.uniform() < 0.8 { e } else { -e };
        }
        v.push(d as f32 as f64);
    }
    for _ in 0..n_cr {
        let m = 100.0 + 4900.0 * r.uniform();
        v.push(if r.uniform() < 0.5 { m } else { -m });
    }
    for k in 0..10 {
        v.insert((k * 7919) % v.len(), f64::NAN);
    }
    v
}
