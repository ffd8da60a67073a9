//! The plan: deterministic and balanced for 1..7 ranks (more ranks than chunks included), chunk
//! sizes from the memory budget, the runaway-grid guard, and named errors.

use std::path::PathBuf;
use tessera::config::{PlanConfig, UserGrid};
use tessera::geom::TanSip;
use tessera::plan::{build_plan, chunk_side_for_ranks, chunk_side_from_budget, CalMeta, ExposureId, PlanError};

/// A synthetic exposure: `n` x `n` pixels of `scale` arcsec, centred `(dx, dy)` arcsec from (150, 2).
fn meta(name: &str, n: usize, scale: f64, dx: f64, dy: f64, filter: &str) -> CalMeta {
    let s = scale / 3600.0;
    let dec0: f64 = 2.0;
    let wcs = TanSip::tan(
        [150.0 + dx / 3600.0 / dec0.to_radians().cos(), dec0 + dy / 3600.0],
        [(n as f64 + 1.0) / 2.0; 2],
        [[-s, 0.0], [0.0, s]],
    );
    CalMeta {
        path: PathBuf::from(format!("/data/{name}_cal.fits")),
        instrument: "NIRCAM".into(),
        detector: "NRCALONG".into(),
        filter: filter.into(),
        pupil: "CLEAR".into(),
        target: "T".into(),
        id: ExposureId {
            program: "01234".into(),
            observation: "001".into(),
            visit: "001".into(),
            visit_group: "02".into(),
            sequence: "1".into(),
            activity: "01".into(),
            exposure: name.into(),
        },
        expstart_mjd: 60000.0,
        expmid_mjd: 60000.001,
        expend_mjd: 60000.002,
        effexptm_s: 100.0,
        subarray: "FULL".into(),
        shape: [n, n],
        bunit: "MJy/sr".into(),
        wcs,
        dt_bgr_days: None,
    }
}

fn cfg(chunk_px: usize) -> PlanConfig {
    PlanConfig {
        pixscale_arcsec: 0.0,
        margin_px: 4,
        chunk_px,
        bytes_per_output_px: 256,
        max_fill_ratio: 4.0,
        max_output_mpix: 2000.0,
        common_grid: tessera::config::CommonGrid::None,
        grid: None,
    }
}

/// A 3x3 mosaic of 256-px exposures with overlaps: a grid of about 700 x 700 output pixels.
fn mosaic() -> Vec<CalMeta> {
    let mut v = vec![];
    for j in 0..3 {
        for i in 0..3 {
            let name = format!("{:05}", j * 3 + i + 1);
            v.push(meta(&name, 256, 0.063, (i as f64 - 1.0) * 14.0, (j as f64 - 1.0) * 14.0, "F300M"));
        }
    }
    v
}

#[test]
fn plan_is_deterministic_and_order_independent() {
    let m = mosaic();
    let a = build_plan(&m, &cfg(128), 4096, 3).unwrap();
    let mut rev = m.clone();
    rev.reverse();
    let b = build_plan(&rev, &cfg(128), 4096, 3).unwrap();
    assert_eq!(a, b);
    // the exposure table is sorted, indices are positions
    for (i, e) in a.exposures.iter().enumerate() {
        assert_eq!(e.index, i);
    }
}

#[test]
fn every_chunk_owned_once_and_balanced_for_1_to_7_ranks() {
    let m = mosaic();
    let base = build_plan(&m, &cfg(128), 4096, 1).unwrap();
    let nchunks = base.chunks.len();
    assert!(nchunks >= 25, "{nchunks} chunks");
    let total: u64 = base.chunks.iter().map(|c| c.input_px).sum();
    // input pixels landing on the grid = the exposures' pixels (scale 1:1), to a fraction of a percent
    let inpix = 9.0 * 256.0 * 256.0;
    assert!((total as f64 - inpix).abs() / inpix < 0.005, "{total} vs {inpix}");
    let wmax = base.chunks.iter().map(|c| c.input_px).max().unwrap();
    for n in 1..=7 {
        let p = build_plan(&m, &cfg(128), 4096, n).unwrap();
        // the same chunks and contents for any rank count; only owners change
        assert_eq!(p.chunks.len(), nchunks);
        for (c, b) in p.chunks.iter().zip(&base.chunks) {
            assert_eq!(
                (c.y0, c.y1, c.x0, c.x1, c.input_px, &c.exposures),
                (b.y0, b.y1, b.x0, b.x1, b.input_px, &b.exposures)
            );
            assert!(c.owner < n);
        }
        let loads: Vec<u64> = (0..n).map(|r| p.chunks_of(r).map(|c| c.input_px).sum()).collect();
        assert_eq!(loads, p.rank_input_px);
        assert_eq!(loads.iter().sum::<u64>(), total);
        // LPT bound: no rank exceeds the mean by more than the heaviest chunk
        let mean = total as f64 / n as f64;
        assert!(*loads.iter().max().unwrap() as f64 <= mean + wmax as f64, "n {n}: {loads:?}");
        // every exposure has an owner within range, spread over ranks
        assert!(p.exposures.iter().all(|e| e.owner < n));
        let owners: std::collections::BTreeSet<_> = p.exposures.iter().map(|e| e.owner).collect();
        assert_eq!(owners.len(), n.min(9));
    }
}

#[test]
fn more_ranks_than_chunks() {
    let m = vec![meta("00001", 64, 0.063, 0.0, 0.0, "F300M")];
    let p = build_plan(&m, &cfg(0), 4096, 5).unwrap();
    assert_eq!(p.chunks.len(), 1);
    assert_eq!(p.chunks[0].owner, 0);
    assert_eq!(p.rank_input_px[1..], [0, 0, 0, 0]);
    assert_eq!(p.chunks_of(4).count(), 0);
}

#[test]
fn grid_covers_footprints_at_native_scale() {
    let m = mosaic();
    let p = build_plan(&m, &cfg(0), 4096, 1).unwrap();
    assert_eq!(p.grid.pixscale_arcsec, 0.063);
    assert_eq!(p.grid.rotation_deg, 0.0);
    // extent: 28" between outer centres + 256 px = 28/0.063 + 256 = 700.4 px, plus 2 x 4 margin
    assert!((p.grid.nx as f64 - 709.0).abs() <= 3.0, "nx {}", p.grid.nx);
    assert!((p.grid.ny as f64 - 709.0).abs() <= 3.0, "ny {}", p.grid.ny);
    for e in &p.exposures {
        for v in &e.footprint_px {
            assert!(v[0] > 0.0 && v[0] < p.grid.nx as f64 - 1.0 && v[1] > 0.0 && v[1] < p.grid.ny as f64 - 1.0);
        }
    }
    // chunk side from the budget by hand: sqrt(2 GiB / 256 B) = 2896 -> 2880
    assert_eq!(chunk_side_from_budget(4096, 256), 2880);
    // 64 MiB: sqrt(32 MiB / 256 B) = 362 -> 320
    assert_eq!(chunk_side_from_budget(64, 256), 320);
    // ... but a small grid is cut so every rank gets ~4 chunks: sqrt(709^2 / 4) = 354.5 -> 384
    assert_eq!(chunk_side_for_ranks(709 * 709, 1), 384);
    assert_eq!(chunk_side_for_ranks(100, 8), 256);
    assert_eq!(p.chunk_px, chunk_side_for_ranks(p.grid.npix(), 1));
    assert_eq!(p.chunks.len(), 4);
    // a tight budget wins over the rank count
    let mut c = cfg(0);
    c.bytes_per_output_px = 4096;
    assert_eq!(build_plan(&m, &c, 64, 1).unwrap().chunk_px, 256);
}

#[test]
fn user_grid_is_used_as_given() {
    let m = mosaic();
    let mut c = cfg(256);
    c.grid =
        Some(UserGrid { ra_deg: 150.0, dec_deg: 2.0, nx: 1000, ny: 800, pixscale_arcsec: 0.05, rotation_deg: 10.0 });
    let p = build_plan(&m, &c, 4096, 2).unwrap();
    assert_eq!((p.grid.nx, p.grid.ny, p.grid.pixscale_arcsec, p.grid.rotation_deg), (1000, 800, 0.05, 10.0));
    assert_eq!((p.chunks_x, p.chunks_y), (4, 4));
    c.grid = Some(UserGrid { ra_deg: 10.0, dec_deg: 2.0, nx: 100, ny: 100, pixscale_arcsec: 0.05, rotation_deg: 0.0 });
    assert_eq!(build_plan(&m, &c, 4096, 2).unwrap_err(), PlanError::NoOverlap);
}

#[test]
fn runaway_grid_from_a_broken_wcs_is_refused_and_named() {
    let mut m = mosaic();
    // one exposure's CRVAL off by a degree: the covering grid would be ~700 x 57000 px = 40 Mpix
    // for a union of 9 x 256^2 = 0.6 Mpix, a fill of ~68
    m[4].wcs.crval_deg[1] += 1.0;
    let e = build_plan(&m, &cfg(0), 4096, 2).unwrap_err();
    match &e {
        PlanError::Runaway { outlier, fill, .. } => {
            assert_eq!(outlier, &m[4].path);
            assert!(*fill > 50.0 && *fill < 90.0, "fill {fill}");
        }
        other => panic!("expected Runaway, got {other:?}"),
    }
    assert!(e.to_string().contains("00005_cal.fits"), "{e}");
    // a CD matrix 100x too large makes the footprint absurd
    let mut m = mosaic();
    for r in m[2].wcs.cd.iter_mut() {
        for v in r.iter_mut() {
            *v *= 100.0;
        }
    }
    let e = build_plan(&m, &cfg(0), 4096, 1).unwrap_err();
    assert!(matches!(&e, PlanError::BadPixelScale { path, .. } if path == &m[2].path), "{e:?}");
    // SIP terms that fold the detector make the footprint absurd
    let mut m = mosaic();
    let mut a = tessera::geom::SipPoly::zero(2);
    a.coeffs[2][0] = 0.05;
    m[3].wcs.a = Some(a);
    m[3].wcs.b = Some(tessera::geom::SipPoly::zero(2));
    let e = build_plan(&m, &cfg(0), 4096, 1).unwrap_err();
    assert!(matches!(&e, PlanError::BadFootprint { path, .. } if path == &m[3].path), "{e:?}");
    // the size cap
    let mut c = cfg(0);
    c.max_output_mpix = 0.1;
    assert!(matches!(build_plan(&mosaic(), &c, 4096, 1), Err(PlanError::TooLarge { .. })));
}

#[test]
fn mixed_bands_and_empty_input_are_refused() {
    let mut m = mosaic();
    m[0].filter = "F335M".into();
    let e = build_plan(&m, &cfg(0), 4096, 1).unwrap_err();
    assert_eq!(e, PlanError::MixedBands { bands: "F300M, F335M".into() });
    assert_eq!(build_plan(&[], &cfg(0), 4096, 1).unwrap_err(), PlanError::Empty);
}
