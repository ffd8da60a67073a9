//! JWST cal-file I/O: a file written by the official data-model library (stdatamodels) reads
//! correctly; sub-rectangle reads match full reads; bad inputs give errors naming file, HDU, keyword.

use crate::common::{repo, tmp};
use std::path::{Path, PathBuf};
use tessera::io::fits::{read_cal, read_cal_meta, read_region_dq, read_region_f32, FitsProblem};

fn fixture() -> PathBuf {
    repo().join("tests/fixtures/stdatamodels/jw01234005001_02101_00003_nrcb2_cal.fits")
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join("tests/fixtures/stdatamodels/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn stdatamodels_fixture_reads_as_the_jwst_library_wrote_it() {
    let exp = expected();
    let img = read_cal(&fixture()).expect("stdatamodels file reads");
    let m = &img.meta;
    let k = &exp["key_primary_values"];
    let s = |key: &str| k[key].as_str().unwrap().to_string();
    assert_eq!(m.instrument, s("INSTRUME"));
    assert_eq!(m.detector, s("DETECTOR"));
    assert_eq!(m.filter, s("FILTER"));
    assert_eq!(m.pupil, s("PUPIL"));
    assert_eq!(m.target, s("TARGPROP"));
    assert_eq!(m.subarray, s("SUBARRAY"));
    assert_eq!(m.id.program, s("PROGRAM"));
    assert_eq!(m.id.observation, s("OBSERVTN"));
    assert_eq!(m.id.visit, s("VISIT"));
    assert_eq!(m.id.visit_group, s("VISITGRP"));
    assert_eq!(m.id.sequence, s("SEQ_ID"));
    assert_eq!(m.id.activity, s("ACT_ID"));
    assert_eq!(m.id.exposure, s("EXPOSURE"));
    assert_eq!(m.id.visit_key(), format!("jw{}", s("VISIT_ID")));
    assert_eq!(m.expstart_mjd, k["EXPSTART"].as_f64().unwrap());
    assert_eq!(m.expmid_mjd, k["EXPMID"].as_f64().unwrap());
    assert_eq!(m.expend_mjd, k["EXPEND"].as_f64().unwrap());
    assert_eq!(m.effexptm_s, k["EFFEXPTM"].as_f64().unwrap());
    assert_eq!(m.bunit, exp["bunit"].as_str().unwrap());
    let shape: Vec<usize> = exp["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    assert_eq!(m.shape.to_vec(), shape);

    // pixel samples and statistics of every extension
    let arrays: Vec<(&str, &ndarray::Array2<f32>)> = vec![
        ("SCI", &img.sci),
        ("ERR", &img.err),
        ("VAR_POISSON", img.var_poisson.as_ref().unwrap()),
        ("VAR_RNOISE", img.var_rnoise.as_ref().unwrap()),
        ("VAR_FLAT", img.var_flat.as_ref().unwrap()),
        ("AREA", img.area.as_ref().unwrap()),
    ];
    for (name, a) in arrays {
        for smp in exp["samples"][name].as_array().unwrap() {
            let (x, y) = (smp["x"].as_u64().unwrap() as usize, smp["y"].as_u64().unwrap() as usize);
            match smp["value"].as_f64() {
                None => assert!(a[[y, x]].is_nan(), "{name}[{y},{x}] should be NaN"),
                Some(v) => assert_eq!(a[[y, x]], v as f32, "{name}[{y},{x}]"),
            }
        }
        let st = &exp["stats_finite"][name];
        let finite: Vec<f64> = a.iter().filter(|v| v.is_finite()).map(|&v| v as f64).collect();
        assert_eq!(finite.len() as u64, st["n_finite"].as_u64().unwrap(), "{name} finite count");
        let sum: f64 = finite.iter().sum();
        let esum = st["sum"].as_f64().unwrap();
        assert!((sum - esum).abs() <= 1e-9 * esum.abs().max(1.0), "{name} sum {sum} vs {esum}");
    }
    for smp in exp["samples"]["DQ"].as_array().unwrap() {
        let (x, y) = (smp["x"].as_u64().unwrap() as usize, smp["y"].as_u64().unwrap() as usize);
        assert_eq!(img.dq[[y, x]] as u64, smp["value"].as_u64().unwrap(), "DQ[{y},{x}]");
    }
    let dqs = &exp["stats_finite"]["DQ"];
    let dsum: u64 = img.dq.iter().map(|&v| v as u64).sum();
    assert_eq!(dsum, dqs["sum"].as_u64().unwrap());
    use tessera::kernels::dq;
    let count = |bit: u32| img.dq.iter().filter(|&&v| v & bit != 0).count() as u64;
    assert_eq!(count(dq::REFERENCE_PIXEL), dqs["n_reference_pixel"].as_u64().unwrap());
    assert_eq!(count(dq::NON_SCIENCE), dqs["n_non_science"].as_u64().unwrap());
    assert_eq!(count(dq::DO_NOT_USE), dqs["n_do_not_use"].as_u64().unwrap());
    assert_eq!(count(dq::JUMP_DET), dqs["n_jump_det"].as_u64().unwrap());
    for (name, v) in exp["dq_flags"].as_object().unwrap() {
        let ours = match name.as_str() {
            "DO_NOT_USE" => dq::DO_NOT_USE,
            "SATURATED" => dq::SATURATED,
            "JUMP_DET" => dq::JUMP_DET,
            "NON_SCIENCE" => dq::NON_SCIENCE,
            "DEAD" => dq::DEAD,
            "REFERENCE_PIXEL" => dq::REFERENCE_PIXEL,
            other => panic!("unexpected flag {other}"),
        };
        assert_eq!(ours as u64, v.as_u64().unwrap(), "{name}");
    }

    // the SIP WCS agrees with astropy's all_pix2world on the same header
    let w = &exp["wcs_astropy"];
    let pix = w["pixels_xy"].as_array().unwrap();
    for (i, p) in pix.iter().enumerate() {
        let (x, y) = (p[0].as_f64().unwrap(), p[1].as_f64().unwrap());
        let (ra, dec) = m.wcs.pixel_to_sky(x, y);
        let era = w["all_pix2world_ra"][i].as_f64().unwrap();
        let edec = w["all_pix2world_dec"][i].as_f64().unwrap();
        assert!(
            (ra - era).abs() * dec.to_radians().cos() < 1e-9 && (dec - edec).abs() < 1e-9,
            "pixel {x},{y}: {ra},{dec} vs {era},{edec}"
        );
        let (bx, by) = m.wcs.sky_to_pixel(era, edec).unwrap();
        assert!((bx - x).abs() < 1e-6 && (by - y).abs() < 1e-6);
    }
}

#[test]
fn sub_rectangle_read_matches_the_full_read() {
    let img = read_cal(&fixture()).unwrap();
    // a non-square rectangle (the shape trap of cfitsio's axis order)
    let (y, x) = (5..17, 20..61);
    let sub = read_region_f32(&fixture(), "SCI", y.clone(), x.clone()).unwrap();
    assert_eq!(sub.dim(), (12, 41));
    let full = img.sci.slice(ndarray::s![5..17, 20..61]);
    for (a, b) in sub.iter().zip(full.iter()) {
        assert!(a == b || (a.is_nan() && b.is_nan()));
    }
    let dsub = read_region_dq(&fixture(), 0..3, 60..64).unwrap();
    assert_eq!(dsub, img.dq.slice(ndarray::s![0..3, 60..64]));
    let e = read_region_f32(&fixture(), "SCI", 60..70, 0..4).unwrap_err();
    assert_eq!(e.hdu.as_deref(), Some("SCI"));
}

/// A copy of the fixture edited with cfitsio: `edit(fits)`.
fn edited(dir: &Path, name: &str, edit: impl FnOnce(&mut fitsio::FitsFile)) -> PathBuf {
    let p = dir.join(name);
    std::fs::copy(fixture(), &p).unwrap();
    let mut f = fitsio::FitsFile::edit(&p).unwrap();
    edit(&mut f);
    drop(f);
    p
}

fn delete_key(f: &mut fitsio::FitsFile, hdu: &str, key: &str) {
    if hdu == "PRIMARY" {
        f.primary_hdu().unwrap();
    } else {
        f.hdu(hdu).unwrap();
    }
    let k = std::ffi::CString::new(key).unwrap();
    let mut status = 0;
    unsafe {
        fitsio::sys::ffdkey(f.as_raw(), k.as_ptr(), &mut status);
    }
    assert_eq!(status, 0, "deleting {key}");
}

#[test]
fn bad_inputs_name_file_hdu_and_keyword() {
    let d = tmp();
    // no SCI extension
    let p = edited(d.path(), "nosci_cal.fits", |f| {
        let h = f.hdu("SCI").unwrap();
        h.delete(f).unwrap();
    });
    let e = read_cal_meta(&p).unwrap_err();
    assert_eq!((e.hdu.as_deref(), &e.problem), (Some("SCI"), &FitsProblem::MissingHdu));
    assert!(e.to_string().contains("nosci_cal.fits") && e.to_string().contains("HDU SCI"), "{e}");

    // no WCS
    let p = edited(d.path(), "nowcs_cal.fits", |f| delete_key(f, "SCI", "CTYPE1"));
    let e = read_cal_meta(&p).unwrap_err();
    assert_eq!((e.hdu.as_deref(), e.keyword.as_deref()), (Some("SCI"), Some("CTYPE1")), "{e}");
    let p = edited(d.path(), "nocd_cal.fits", |f| delete_key(f, "SCI", "CRVAL2"));
    let e = read_cal_meta(&p).unwrap_err();
    assert_eq!(e.keyword.as_deref(), Some("CRVAL2"), "{e}");

    // wrong units
    let p = edited(d.path(), "units_cal.fits", |f| {
        let h = f.hdu("SCI").unwrap();
        h.write_key(f, "BUNIT", "DN/s").unwrap();
    });
    let e = read_cal_meta(&p).unwrap_err();
    assert_eq!((e.hdu.as_deref(), e.keyword.as_deref()), (Some("SCI"), Some("BUNIT")));
    assert!(e.to_string().contains("DN/s") && e.to_string().contains("MJy/sr"), "{e}");

    // missing identity keyword in the primary header
    let p = edited(d.path(), "noexp_cal.fits", |f| delete_key(f, "PRIMARY", "EFFEXPTM"));
    let e = read_cal_meta(&p).unwrap_err();
    assert_eq!((e.hdu.as_deref(), e.keyword.as_deref()), (Some("PRIMARY"), Some("EFFEXPTM")));

    // NaN-only data
    let p = edited(d.path(), "nan_cal.fits", |f| {
        let h = f.hdu("SCI").unwrap();
        h.write_image(f, &vec![f32::NAN; 64 * 64]).unwrap();
    });
    let e = read_cal(&p).unwrap_err();
    assert_eq!(e.hdu.as_deref(), Some("SCI"));
    assert!(e.to_string().contains("no finite pixel"), "{e}");

    // truncated file: the header reads, the data do not
    let p = d.path().join("trunc_cal.fits");
    let bytes = std::fs::read(fixture()).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    let e = read_cal(&p).unwrap_err();
    assert!(e.to_string().contains("trunc_cal.fits"), "{e}");
    assert!(e.hdu.is_some(), "names the HDU: {e}");

    // not a file at all
    let e = read_cal_meta(&d.path().join("missing_cal.fits")).unwrap_err();
    assert!(e.to_string().contains("missing_cal.fits") && e.to_string().contains("does not exist"), "{e}");
}

/// The primary cards that identify an exposure, from its metadata.
pub fn identity_cards(m: &tessera::plan::CalMeta) -> Vec<tessera::io::fits::Card> {
    let img = m;
    vec![
        tessera::io::fits::card_text("INSTRUME", &img.instrument, ""),
        tessera::io::fits::card_text("DETECTOR", &img.detector, ""),
        tessera::io::fits::card_text("FILTER", &img.filter, ""),
        tessera::io::fits::card_text("PROGRAM", &img.id.program, ""),
        tessera::io::fits::card_text("OBSERVTN", &img.id.observation, ""),
        tessera::io::fits::card_text("VISIT", &img.id.visit, ""),
        tessera::io::fits::card_text("VISITGRP", &img.id.visit_group, ""),
        tessera::io::fits::card_text("SEQ_ID", &img.id.sequence, ""),
        tessera::io::fits::card_text("ACT_ID", &img.id.activity, ""),
        tessera::io::fits::card_text("EXPOSURE", &img.id.exposure, ""),
        tessera::io::fits::card_real("EXPSTART", img.expstart_mjd, ""),
        tessera::io::fits::card_real("EXPMID", img.expmid_mjd, ""),
        tessera::io::fits::card_real("EXPEND", img.expend_mjd, ""),
        tessera::io::fits::card_real("EFFEXPTM", img.effexptm_s, ""),
    ]
}

#[test]
fn cal_written_by_tessera_round_trips() {
    let d = tmp();
    let img = read_cal(&fixture()).unwrap();
    let p = d.path().join("copy_cal.fits");
    let cards = identity_cards(&img.meta);
    tessera::io::fits::write_cal(&p, &img, &cards, &["test".into()]).unwrap();
    let back = read_cal(&p).unwrap();
    assert_eq!(back.meta.id, img.meta.id);
    assert_eq!(back.meta.wcs, img.meta.wcs, "WCS cards round trip exactly");
    assert_eq!(back.meta.expmid_mjd, img.meta.expmid_mjd);
    assert_eq!(back.dq, img.dq);
    for (a, b) in back.sci.iter().zip(img.sci.iter()) {
        assert!(a == b || (a.is_nan() && b.is_nan()));
    }
    // nothing left behind under a temporary name
    let names: Vec<String> =
        std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["copy_cal.fits".to_string()]);
}

#[test]
fn mosaic_writer_leaves_nothing_when_dropped_and_the_file_when_finished() {
    use tessera::io::fits::{ExtKind, ExtSpec, MosaicWriter};
    let d = tmp();
    let p = d.path().join("m.fits");
    let exts = || {
        vec![
            ExtSpec { name: "SCI".into(), kind: ExtKind::F32, planes: 1, cards: vec![] },
            ExtSpec { name: "CON".into(), kind: ExtKind::U32, planes: 2, cards: vec![] },
        ]
    };
    // an error part-way: nothing is left, not even the temporary file
    let mut w = MosaicWriter::create(&p, 4, 3, &[], &[], exts()).unwrap();
    w.write_rows_f32("SCI", 0, ndarray::Array2::<f32>::ones((2, 3)).view()).unwrap();
    assert!(w.write_rows_f32("SCI", 3, ndarray::Array2::<f32>::ones((2, 3)).view()).is_err(), "rows past the end");
    drop(w);
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    // a finished file holds what was written, in every extension and plane
    let mut w = MosaicWriter::create(&p, 4, 3, &[], &[], exts()).unwrap();
    let sci = ndarray::Array2::from_shape_fn((4, 3), |(y, x)| (10 * y + x) as f32);
    w.write_rows_f32("SCI", 0, sci.slice(ndarray::s![0..2, ..])).unwrap();
    w.write_rows_f32("SCI", 2, sci.slice(ndarray::s![2..4, ..])).unwrap();
    w.write_rows_u32("CON", 1, 1, ndarray::Array2::from_elem((3, 3), 7u32).view()).unwrap();
    w.finish().unwrap();
    assert_eq!(tessera::io::fits::read_ext_f32(&p, "SCI").unwrap(), sci);
    let (shape, con) = tessera::io::fits::read_ext_u32(&p, "CON").unwrap();
    assert_eq!(shape, vec![2, 4, 3]);
    assert_eq!(con.iter().filter(|&&v| v == 7).count(), 9);
    // rows never written read as cfitsio's raw zero fill: 0 + BZERO = 2^31 for unsigned extensions
    assert!(con[..12].iter().chain(&con[12..15]).all(|&v| v == 1 << 31));
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
}
