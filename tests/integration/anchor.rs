//! The `anchor` stage end to end on simulated scenes whose galaxy fills the field: the reference
//! band anchored to its wide-field reference (IRAC1 for F300M, IRAC4 for F770W), a second band of
//! each instrument tied to it internally, both checked against the truth (the offset a perfect
//! anchoring adds: the median of truth sky - mosaic, `simulate::references::perfect_offset`); the
//! products (ANCHOR in the header, anchor.json, the picture); bad input (a reference that does not
//! cover the mosaic), the fallback to the next reference when the preferred one gives no fit, and a
//! missing optional reference (skipped with a warning, said in the manifest).

use crate::common::{cached, mpirun, ok, tessera, tiny_lw, tmp};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tessera::geom::TanSip;
use tessera::io::fits::{read_ext_f32, read_header, read_image};
use tessera::stages::anchor::AnchorReport;
use tessera::stages::simulate::references::perfect_offset;

/// The anchoring accuracy the paper's section 3.9 reaches ("within a few times 0.01 MJy/sr"), asked
/// here of the simulator's linear colours: 0.01 MJy/sr.
const TOLERANCE_MJYSR: f64 = 0.01;

/// A galaxy filling the field (`simulate.fill_field`), unsaturated (a saturated star's flux is
/// missing from the mosaic but present in the reference; `anchor.mask_above_mjysr` leaves such
/// stars out, which on fields this small leaves too few 4" beams), in `filter`; MIRI without
/// off-source exposures (one tile of two dithers: a 56" field).
fn filled(cell: &'static OnceLock<PathBuf>, instrument: &str, filter: &str, size: &str, tiles: &str) -> &'static Path {
    let inst = format!("simulate.instrument=\"{instrument}\"");
    let filt = format!("simulate.filter=\"{filter}\"");
    let size = format!("simulate.size=\"{size}\"");
    let tiles = format!("simulate.tiles=\"{tiles}\"");
    // the sets are leaked: the cache keeps them for the whole test run
    let sets: &'static [&'static str] = Box::leak(
        vec![
            Box::leak(inst.into_boxed_str()) as &str,
            Box::leak(filt.into_boxed_str()),
            Box::leak(size.into_boxed_str()),
            Box::leak(tiles.into_boxed_str()),
            "simulate.dithers=2",
            "simulate.fill_field=true",
            "simulate.saturate=false",
            "simulate.seed=5",
            "simulate.miri_off_exposures=0",
        ]
        .into_boxed_slice(),
    );
    cached(cell, sets)
}

fn f300m() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    filled(&D, "nircam_lw", "F300M", "small", "2x2")
}
fn f335m() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    filled(&D, "nircam_lw", "F335M", "small", "2x2")
}
fn f770w() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    filled(&D, "miri", "F770W", "medium", "1x1")
}
fn f1000w() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    filled(&D, "miri", "F1000W", "medium", "1x1")
}

/// `tessera [sets] mosaic scene -o work/<name>/m.fits [args]`; the -o mosaic.
fn mosaic(scene: &Path, work: &Path, name: &str, sets: &[&str], args: &[&str]) -> PathBuf {
    let w = work.join(name);
    std::fs::create_dir_all(&w).unwrap();
    let out = w.join("m.fits");
    let (d, o) = (scene.to_str().unwrap().to_string(), out.to_str().unwrap().to_string());
    let mut all: Vec<&str> = vec!["--set", "run.output_dir=\"out\""];
    all.extend_from_slice(sets);
    all.extend_from_slice(&["mosaic", &d, "-o", &o]);
    all.extend_from_slice(args);
    ok(&tessera(&w, &all));
    out
}

/// The offset still missing from the mosaic `m` of `scene`: what a perfect anchoring would add now.
fn remaining(m: &Path, scene: &Path) -> f64 {
    let sci = read_ext_f32(m, "SCI").unwrap();
    let wht = read_ext_f32(m, "WHT").unwrap();
    let wcs = TanSip::from_cards(&read_header(m, "SCI").unwrap()).unwrap();
    let (truth, cards) = read_image(&scene.join("truth/truth_sky.fits")).unwrap();
    let twcs = TanSip::from_cards(&cards).unwrap();
    perfect_offset(sci.view(), wht.view(), &wcs, truth.view(), &twcs)
}

fn report(m: &Path) -> AnchorReport {
    tessera::io::json::read_json(&m.parent().unwrap().join("out/anchor/anchor.json")).unwrap()
}

fn anchor_card(m: &Path) -> f64 {
    match read_header(m, "PRIMARY").unwrap().get("ANCHOR") {
        Some(tessera::geom::CardValue::Real(v)) => *v,
        other => panic!("ANCHOR card: {other:?}"),
    }
}

/// The reference band against its references (in order of preference), then a second band of the
/// instrument tied to the anchored reference band; both within the tolerance of the truth.
/// Then the preferred reference replaced by a flat copy (no fit): the second is used when
/// `fallback_fits`, else the error names both.
fn anchor_and_tie(
    band: &Path,
    second: &Path,
    refs: [&str; 2],
    sets: &[&str],
    tie_sets: &[&str],
    tie_tolerance: f64,
    fallback_fits: bool,
) {
    let w = tmp();
    let r: Vec<String> =
        refs.iter().map(|r| band.join("aux").join(format!("{r}.fits")).to_string_lossy().into_owned()).collect();
    // absolute astrometry first (as in the chain): the truth it is checked against is on the true sky
    let cat = band.join("aux/refcat.csv").to_string_lossy().into_owned();
    let m = mosaic(band, w.path(), "band", sets, &["--anchor", &r[0], "--anchor", &r[1], "--catalog", &cat]);
    let rep = report(&m);
    assert_eq!((rep.mode.as_str(), rep.reference_name.as_str()), ("external", refs[0]), "{rep:?}");
    let left = remaining(&m, band);
    let before = left + rep.offset_mjysr;
    eprintln!(
        "{}: level matching left {before:+.4} MJy/sr to add; anchor added {:+.4} +- {:.4} (slope {:.4}); {left:+.4} remain",
        rep.band, rep.offset_mjysr, rep.offset_err_mjysr, rep.slope
    );
    // the control: the filled field leaves the mosaic's level wrong by far more than the tolerance
    assert!(before.abs() > 5.0 * TOLERANCE_MJYSR, "nothing to anchor: {before}");
    assert!(left.abs() < TOLERANCE_MJYSR, "{}: {left:+.4} MJy/sr remain after anchoring to {}", rep.band, refs[0]);
    assert_eq!(anchor_card(&m), rep.offset_mjysr);
    assert!(rep.bins.iter().filter(|b| b.used).count() >= 3);
    let png = m.parent().unwrap().join(format!("out/anchor/{}_vs_{}.png", rep.band, refs[0]));
    assert!(png.is_file(), "{}", png.display());

    // the stage again under 3 ranks: the same anchored mosaic to the bit (the rerun starts from the
    // band store, so it does not add the offset twice)
    let sci1 = read_ext_f32(&m, "SCI").unwrap();
    let (d, o) = (band.to_str().unwrap(), m.to_str().unwrap());
    let mut args: Vec<&str> = vec!["--set", "run.output_dir=\"out\""];
    args.extend_from_slice(sets);
    args.extend_from_slice(&["anchor", d, "-o", o, "--anchor", &r[0], "--anchor", &r[1], "--catalog", &cat]);
    ok(&mpirun(3, m.parent().unwrap(), &args));
    let sci3 = read_ext_f32(&m, "SCI").unwrap();
    assert!(sci1.iter().zip(sci3.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "3 ranks changed the mosaic");
    assert_eq!(report(&m).offset_mjysr.to_bits(), rep.offset_mjysr.to_bits());

    // the second band, tied to the anchored reference band at F2100W's resolution
    let set = format!("anchor.reference_band_mosaic=\"{}\"", m.display());
    let mut sets2 = sets.to_vec();
    sets2.extend_from_slice(tie_sets);
    sets2.extend_from_slice(&["--set", &set]);
    let cat2 = second.join("aux/refcat.csv").to_string_lossy().into_owned();
    let m2 = mosaic(second, w.path(), "second", &sets2, &["--catalog", &cat2]);
    let rep2 = report(&m2);
    assert_eq!(rep2.mode, "internal");
    assert_eq!(rep2.reference_band_offset_mjysr, Some(rep.offset_mjysr));
    let left2 = remaining(&m2, second);
    let before2 = left2 + rep2.offset_mjysr;
    eprintln!(
        "{}: level matching left {before2:+.4} MJy/sr to add; the tie added {:+.4} +- {:.4} (slope {:.4}); {left2:+.4} remain",
        rep2.band, rep2.offset_mjysr, rep2.offset_err_mjysr, rep2.slope
    );
    assert!(before2.abs() > 5.0 * TOLERANCE_MJYSR, "nothing to tie: {before2}");
    assert!(left2.abs() < tie_tolerance, "{}: {left2:+.4} MJy/sr remain after the tie", rep2.band);

    // the reference in the SIN projection of WISE atlas tiles (written by astropy and reproject from
    // the TAN one, on the same pixel grid): the same offset within its uncertainty
    if fallback_fits {
        let sin = w.path().join(format!("sin_{}.fits", refs[0]));
        let script = "import sys, warnings; warnings.simplefilter('ignore')\n\
                      from astropy.io import fits; from astropy.wcs import WCS; from reproject import reproject_interp\n\
                      d, h = fits.getdata(sys.argv[1]), fits.getheader(sys.argv[1])\n\
                      o = WCS(h).to_header(); o['CTYPE1'], o['CTYPE2'] = 'RA---SIN', 'DEC--SIN'\n\
                      out, _ = reproject_interp((d, WCS(h)), WCS(o), shape_out=d.shape, order='bicubic')\n\
                      for k in ('BMAJ', 'BMIN', 'BPA', 'BUNIT', 'FILTER'):\n    \
                          if k in h: o[k] = h[k]\n\
                      fits.PrimaryHDU(out.astype('f4'), o).writeto(sys.argv[2])\n";
        let py = std::process::Command::new(crate::python::python())
            .args(["-c", script, &r[0], sin.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
        assert!(read_header(&sin, "PRIMARY").unwrap()["CTYPE1"] == tessera::geom::CardValue::Text("RA---SIN".into()));
        let mut args: Vec<&str> = vec!["--set", "run.output_dir=\"out\""];
        args.extend_from_slice(sets);
        let sp = sin.to_str().unwrap().to_string();
        args.extend_from_slice(&["anchor", d, "-o", o, "--anchor", &sp, "--catalog", &cat]);
        ok(&tessera(m.parent().unwrap(), &args));
        let rs = report(&m);
        eprintln!(
            "{}: against the SIN {}: {:+.4} +- {:.4} added, against TAN {:+.4}",
            rs.band, refs[0], rs.offset_mjysr, rs.offset_err_mjysr, rep.offset_mjysr
        );
        assert!((rs.offset_mjysr - rep.offset_mjysr).abs() < 2.0 * rep.offset_err_mjysr, "{rs:?}");
    }

    // the preferred reference gives no fit (a flat copy of it: one bin), so the next one is used
    let (img, cards) = read_image(&PathBuf::from(&r[0])).unwrap();
    let mut v: Vec<f32> = img.iter().copied().filter(|v| v.is_finite()).collect();
    v.sort_by(f32::total_cmp);
    let flat_img = img.mapv(|p| if p.is_finite() { v[v.len() / 2] } else { p });
    let flat = w.path().join(format!("flat_{}.fits", refs[0]));
    tessera::io::fits::write_image(&flat, &flat_img, &header_cards(cards), &[]).unwrap();
    let mut args: Vec<&str> = vec!["--set", "run.output_dir=\"out\""];
    args.extend_from_slice(sets);
    let f = flat.to_str().unwrap().to_string();
    args.extend_from_slice(&["anchor", d, "-o", o, "--anchor", &f, "--anchor", &r[1], "--catalog", &cat]);
    let run = tessera(m.parent().unwrap(), &args);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains(&format!("flat_{}.fits: no fit", refs[0])), "{err}");
    if !fallback_fits {
        // WISE3's 15" beam over a field of about 1' leaves too few bins: an error naming both
        assert!(!run.status.success());
        assert!(
            err.contains("no anchor reference gave a fit") && err.contains(&format!("{}.fits: ", refs[1])),
            "{err}"
        );
        return;
    }
    ok(&run);
    let rep3 = report(&m);
    assert_eq!((rep3.reference_name.as_str(), rep3.tried.len()), (refs[1], 2), "{rep3:?}");
    assert!(rep3.tried[0].outcome.contains("bins"), "{:?}", rep3.tried);
    let left3 = remaining(&m, band);
    eprintln!(
        "{}: against {} (the fallback): {:+.4} +- {:.4} added (slope {:.4}); {left3:+.4} remain",
        rep3.band, refs[1], rep3.offset_mjysr, rep3.offset_err_mjysr, rep3.slope
    );
    assert_eq!(anchor_card(&m), rep3.offset_mjysr);
    // the coarser reference leaves a larger uncertainty; the truth is within 3 of it
    assert!(
        left3.abs() < 3.0 * rep3.offset_err_mjysr,
        "{}: {left3:+.4} MJy/sr remain after {} (+- {:.4})",
        rep3.band,
        refs[1],
        rep3.offset_err_mjysr
    );
}

/// A header's cards for `write_image` (without the structural ones it writes itself).
fn header_cards(cards: std::collections::BTreeMap<String, tessera::geom::CardValue>) -> Vec<tessera::io::fits::Card> {
    cards
        .into_iter()
        .filter(|(k, _)| !["SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND"].contains(&k.as_str()))
        .map(|(k, v)| (k, v, String::new()))
        .collect()
}

/// NOT MET for the tie: F335M against F300M comes within 0.03 MJy/sr, not 0.01. The simulator's
/// bands have their own spectra per component (the 3.3 micron PAH feature in F335M's dusty arms
/// and HII regions, none in the bulge), so the F335M-F300M relation is curved, not linear; measured
/// on this scene: -0.020 MJy/sr with the faint half of the field (auto range), +0.145 with pjpipe's
/// fixed range; F360M +0.063 and F200W -0.035 (fixed range) likewise. The MIRI tie, between
/// dust-dominated bands, meets 0.01.
const NIRCAM_TIE_TOLERANCE_MJYSR: f64 = 0.03;

#[test]
fn nircam_f300m_is_anchored_to_irac1_within_0p01_and_f335m_tied_to_it_within_0p03_mjysr() {
    // pjpipe's fixed range, 0.25 to 2 MJy/sr of IRAC1; the tie on the faint half of the field
    anchor_and_tie(
        f300m(),
        f335m(),
        ["irac1", "wise1"],
        &[],
        &["--set", "anchor.auto_range=true"],
        NIRCAM_TIE_TOLERANCE_MJYSR,
        true,
    );
}

#[test]
fn miri_f770w_is_anchored_to_irac4_and_f1000w_tied_to_it_within_0p01_mjysr() {
    // the filled MIRI field holds no IRAC4 pixel below 2 MJy/sr: the faint half of the field instead
    // WISE3 (15") over this 56" field gives one bin: the fallback cannot fit here
    anchor_and_tie(
        f770w(),
        f1000w(),
        ["irac4", "wise3"],
        &["--set", "anchor.auto_range=true"],
        &[],
        TOLERANCE_MJYSR,
        false,
    );
}

#[test]
fn a_missing_reference_skips_with_a_warning_and_one_off_the_mosaic_is_an_error_naming_it() {
    let dir = tiny_lw();
    let w = tmp();
    let out = w.path().join("m.fits");
    let (d, o) = (dir.to_str().unwrap(), out.to_str().unwrap());
    // no reference: the stage is skipped with a warning, and the manifest says why
    let run = tessera(w.path(), &["--set", "run.output_dir=\"out\"", "mosaic", d, "-o", o]);
    ok(&run);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("warning") && err.contains("[anchor] skipped: no reference image"), "{err}");
    let man: serde_json::Value = tessera::io::json::read_json(&w.path().join("out/manifest.json")).unwrap();
    let e = man["stages"].as_array().unwrap().iter().find(|e| e["stage"] == "anchor").unwrap();
    assert_eq!(e["status"], "skipped");
    assert!(e["reason"].as_str().unwrap().contains("no reference image"));
    assert!(!read_header(&out, "PRIMARY").unwrap().contains_key("ANCHOR"));

    // a reference one degree away covers none of the mosaic: an error naming the file
    let (img, mut cards) = read_image(&dir.join("aux/irac1.fits")).unwrap();
    let far = w.path().join("far_irac1.fits");
    let dec = match cards.get("CRVAL2") {
        Some(tessera::geom::CardValue::Real(v)) => *v,
        other => panic!("{other:?}"),
    };
    cards.insert("CRVAL2".into(), tessera::geom::CardValue::Real(dec + 1.0));
    tessera::io::fits::write_image(&far, &img, &header_cards(cards), &[]).unwrap();
    let bad = tessera(w.path(), &["--set", "run.output_dir=\"out\"", "anchor", d, "--anchor", far.to_str().unwrap()]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("far_irac1.fits") && err.contains("covers 0.0% of the mosaic"), "{err}");
    // the mosaic is left as it was
    assert!(!read_header(&out, "PRIMARY").unwrap().contains_key("ANCHOR"));
}
