//! The HDF5 band store: one file per band, one group per stage (named after the stage, e.g.
//! `drizzle`), one chunked dataset per product (`SCI`, `WHT`, `CON`, ...), written in parallel by the
//! ranks that own the output chunks and read back serially for assembly.
//!
//! Layout: a product with one plane is a dataset of shape `[ny, nx]`; a product with several planes
//! (the CON context bits) is `[plane, ny, nx]`. Datasets are HDF5-chunked by `chunk_px` x `chunk_px`
//! (clamped to the image), unfilled pixels read as NaN (f32) or 0 (u32). Provenance (version, config,
//! rank and thread counts) is stored as variable-length string attributes on the file root.
//!
//! Parallel writes: [`BandStore::create`] opens the file on an MPI communicator with the MPI-IO driver
//! (`H5Pset_fapl_mpio`); every write is one collective `H5Dwrite` (`H5FD_MPIO_COLLECTIVE`) with a
//! hyperslab selection, or an empty selection (`H5Sselect_none`) on ranks with nothing left to write.
//! hdf5-metno's high-level writers do independent I/O, hence the few raw `hdf5-sys` calls here. The
//! mode HDF5 actually used (`H5Pget_mpio_actual_io_mode`) is logged at debug level and counted in
//! [`WriteStats`]. Reads ([`read_rows_f32`], ...) reopen the closed file with the default driver.
//!
//! What does not live here: which rank owns which block (`plan`), the all-reduce that gives
//! `max_blocks_any_rank` (`dist`), the rename of the temporary file when the stage completes (the
//! caller, see [`super::temp_path`]). This module never imports `mpi`: the communicator arrives as an
//! opaque [`MpiHandle`] made by `dist::mpi::MpiComm::raw_comm_handle`.

use std::ffi::c_void;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use hdf5::plist::dataset_create::FillTime;
use hdf5::types::VarLenUnicode;
use hdf5::H5Type;
use hdf5_sys::h5::{herr_t, hsize_t};
use hdf5_sys::h5i::hid_t;
use ndarray::{s, Array2, ArrayView2, CowArray, Ix2};

/// An MPI communicator for [`BandStore::create`], as an opaque handle (Open MPI's `MPI_Comm` is a
/// pointer). Made by `dist` (`MpiComm::raw_comm_handle`), so that `io` never imports `mpi`.
/// HDF5 duplicates the communicator when the file is opened, so the handle only has to be valid for
/// the duration of `create`; MPI must stay initialised until the store is closed.
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub struct MpiHandle(*mut c_void);

impl MpiHandle {
    /// Wrap a raw communicator.
    ///
    /// # Safety
    /// `comm` must be a valid Open MPI `MPI_Comm` (the pointer inside rsmpi's `MPI_Comm`) of an
    /// initialised, not yet finalised MPI, and stay valid until [`BandStore::create`] returns.
    pub unsafe fn from_raw(comm: *mut c_void) -> MpiHandle {
        MpiHandle(comm)
    }

    /// The raw communicator pointer.
    pub fn as_raw(self) -> *mut c_void {
        self.0
    }
}

/// Element type of a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit float (SCI, ERR, WHT, variances); unwritten pixels are NaN.
    F32,
    /// 32-bit unsigned integer (DQ, CON context bits); unwritten pixels are 0.
    U32,
}

/// One dataset of a stage group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductSpec {
    /// Dataset name, e.g. `SCI` (no `/`).
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// 1 for an image `[y, x]`; more for a plane stack `[plane, y, x]` (CON).
    pub planes: usize,
}

impl ProductSpec {
    /// A one-plane f32 image.
    pub fn f32_image(name: &str) -> ProductSpec {
        ProductSpec { name: name.to_string(), dtype: Dtype::F32, planes: 1 }
    }

    /// A u32 stack of `planes` planes (`planes == 1` gives a plain `[y, x]` image).
    pub fn u32_planes(name: &str, planes: usize) -> ProductSpec {
        ProductSpec { name: name.to_string(), dtype: Dtype::U32, planes }
    }
}

/// The transfer mode HDF5 reports for one write (`H5Pget_mpio_actual_io_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// The file is not opened on MPI (default driver).
    Serial,
    /// `H5D_MPIO_NO_COLLECTIVE`: HDF5 fell back to independent I/O.
    NoCollective,
    /// `H5D_MPIO_CHUNK_INDEPENDENT`.
    ChunkIndependent,
    /// `H5D_MPIO_CHUNK_COLLECTIVE`: all chunks collectively.
    ChunkCollective,
    /// `H5D_MPIO_CHUNK_MIXED`: some chunks collectively, some not.
    ChunkMixed,
    /// `H5D_MPIO_CONTIGUOUS_COLLECTIVE`.
    ContiguousCollective,
    /// A value this module does not know.
    Other(i32),
}

impl IoMode {
    /// Whether the whole transfer was collective.
    pub fn is_collective(self) -> bool {
        matches!(self, IoMode::ChunkCollective | IoMode::ContiguousCollective)
    }

    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    fn from_raw(v: i32) -> IoMode {
        match v {
            0 => IoMode::NoCollective,
            1 => IoMode::ChunkIndependent,
            2 => IoMode::ChunkCollective,
            3 => IoMode::ChunkMixed,
            4 => IoMode::ContiguousCollective,
            v => IoMode::Other(v),
        }
    }
}

/// How this rank's writes were carried out so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Writes (including empty ones) that HDF5 reports as fully collective.
    pub collective: usize,
    /// Writes on an MPI file that were not (fully) collective.
    pub not_collective: usize,
    /// Writes on a serial file.
    pub serial: usize,
}

/// A band-store error, naming the file, the HDF5 object and what failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An HDF5 call failed.
    #[error("{path}: {object}: {what}: {source}")]
    Hdf5 { path: PathBuf, object: String, what: String, source: hdf5::Error },
    /// A bad argument: unknown product, wrong type, block outside the image, bad layout.
    #[error("{path}: {object}: {message}")]
    Invalid { path: PathBuf, object: String, message: String },
    /// A write failed and the file system holding the store is full.
    #[error("{path}: {object}: {what}: no space left on device in {dir}")]
    DiskFull { path: PathBuf, object: String, what: String, dir: String },
    /// A communicator was given but tessera was built without the `mpi` feature.
    #[error("{path}: cannot open on an MPI communicator: built without the `mpi` feature")]
    NoMpi { path: PathBuf },
}

/// Below this many free bytes a failed HDF5 call is reported as a full disk: HDF5 (and MPI-IO below
/// it) reports a full disk only as a failed write or an "unknown library error", and a chunk that did
/// not fit leaves at most about one chunk (a few tens of MiB) free.
const FULL_DISK_BYTES: u64 = 64 << 20;

fn h5err(path: &Path, object: &str, what: impl Into<String>) -> impl FnOnce(hdf5::Error) -> StoreError {
    let (path, object, what) = (path.to_path_buf(), object.to_string(), what.into());
    move |source| {
        if super::fits::free_bytes(&path).is_some_and(|b| b < FULL_DISK_BYTES) {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            return StoreError::DiskFull { path: path.clone(), object, what, dir: dir.display().to_string() };
        }
        StoreError::Hdf5 { path, object, what, source }
    }
}

/// Bytes the datasets of a store of `ny` x `nx` pixels holding `products` take on disk. Parallel HDF5
/// allocates every dataset in full when it is created and writes its fill value there (early
/// allocation; HDF5's "Fill Value and Dataset Storage Allocation Behavior" tables, serial against
/// parallel I/O: support.hdfgroup.org/HDF5/doc_resource/H5Fill_Behavior.html), so this is what the
/// file system must have free; a full disk shows at `create dataset`.
pub fn store_bytes(ny: usize, nx: usize, products: &[ProductSpec]) -> u64 {
    let px = ny as u64 * nx as u64;
    products.iter().map(|p| px * p.planes as u64 * 4).sum()
}

/// Refuse to create a store at `path` of `ny` x `nx` pixels holding `products` when its file system
/// has less free space than the datasets need (plus 1% and 1 MiB for HDF5's metadata). Checked
/// before the collective create, because a parallel HDF5 file that fails to allocate on a full disk
/// cannot be closed cleanly: the MPI-IO driver keeps it open, and HDF5 then tries to close it again
/// at exit, after MPI is finalised, which kills the process. Unknown free space passes.
///
/// # Errors
/// [`StoreError::DiskFull`] naming the folder, with the bytes needed and free.
pub fn check_room(path: &Path, ny: usize, nx: usize, products: &[ProductSpec]) -> Result<(), StoreError> {
    let need = store_bytes(ny, nx, products);
    let need = need + need / 100 + (1 << 20);
    match super::fits::free_bytes(path) {
        Some(free) if free < need => {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
            Err(StoreError::DiskFull {
                path: path.to_path_buf(),
                object: "/".into(),
                what: format!("the store needs {:.1} MiB and {:.1} MiB are free", mib(need), mib(free)),
                dir: dir.display().to_string(),
            })
        }
        _ => Ok(()),
    }
}

fn invalid(path: &Path, object: &str, message: impl Into<String>) -> StoreError {
    StoreError::Invalid { path: path.to_path_buf(), object: object.to_string(), message: message.into() }
}

/// Element types the store writes, with their native HDF5 memory type.
trait Elem: H5Type + Copy {
    const DTYPE: Dtype;
    fn native_type() -> hid_t;
}

impl Elem for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn native_type() -> hid_t {
        *hdf5_sys::h5t::H5T_NATIVE_FLOAT
    }
}

impl Elem for u32 {
    const DTYPE: Dtype = Dtype::U32;
    fn native_type() -> hid_t {
        *hdf5_sys::h5t::H5T_NATIVE_UINT32
    }
}

/// An HDF5 identifier closed on drop (under hdf5-metno's library lock).
struct Hid {
    id: hid_t,
    close: unsafe extern "C" fn(hid_t) -> herr_t,
}

impl Drop for Hid {
    fn drop(&mut self) {
        // SAFETY: `id` was returned by the matching H5*create/get call and is closed once.
        hdf5::sync::sync(|| unsafe {
            (self.close)(self.id);
        });
    }
}

#[cfg(feature = "mpi")]
unsafe extern "C" {
    // Not declared by hdf5-metno-sys 0.12.5. The C enum is an `int`.
    fn H5Pget_mpio_actual_io_mode(plist_id: hid_t, actual_io_mode: *mut std::os::raw::c_int) -> herr_t;
    fn H5Pget_mpio_no_collective_cause(plist_id: hid_t, local_cause: *mut u32, global_cause: *mut u32) -> herr_t;
}

/// A band file open for writing by all ranks of a communicator (or by one process).
///
/// Every method is collective when the store was created on a communicator: all ranks call it, in
/// the same order, with the same product names. Dropping the store without [`BandStore::close`]
/// closes the file too (collectively, so every rank must drop it).
pub struct BandStore {
    path: PathBuf,
    group_name: String,
    ny: usize,
    nx: usize,
    // Field order is drop order: datasets and group before the file (see `close`).
    datasets: Vec<(ProductSpec, hdf5::Dataset)>,
    group: hdf5::Group,
    dxpl: Option<Hid>,
    file: hdf5::File,
    collective: AtomicUsize,
    not_collective: AtomicUsize,
    serial: AtomicUsize,
}

impl std::fmt::Debug for BandStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BandStore")
            .field("path", &self.path)
            .field("group", &self.group_name)
            .field("ny", &self.ny)
            .field("nx", &self.nx)
            .field("parallel", &self.dxpl.is_some())
            .finish_non_exhaustive()
    }
}

impl BandStore {
    /// Create `path` (truncating it) holding group `group` with one dataset per product, shape
    /// `[ny, nx]` or `[planes, ny, nx]`, chunked by `chunk_px` x `chunk_px` (clamped to the image),
    /// fill value NaN (f32) or 0 (u32), and the string attributes `attrs` on the file root.
    ///
    /// With `comm = Some(_)` this is collective over that communicator: every rank passes the same
    /// arguments (path, layout, attribute values). `None` writes with the default (serial) driver.
    /// The parent directory must exist. The caller renames the file when the stage completes.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for an empty image, `chunk_px == 0`, `planes == 0`, an empty, duplicate
    /// or `/`-containing product name, or an attribute value with a NUL byte; [`StoreError::NoMpi`]
    /// for a communicator without the `mpi` feature; [`StoreError::Hdf5`] when HDF5 fails.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        path: &Path,
        comm: Option<MpiHandle>,
        group: &str,
        ny: usize,
        nx: usize,
        chunk_px: usize,
        products: &[ProductSpec],
        attrs: &[(&str, String)],
    ) -> Result<BandStore, StoreError> {
        Self::create_with(path, comm, group, ny, nx, chunk_px, products, attrs, true)
    }

    /// [`BandStore::create`] for a caller that writes every pixel of every product (the drizzle
    /// stage writes every chunk of the plan, and the chunks tile the grid): no fill value is written
    /// (`H5D_FILL_TIME_NEVER`), so pixels never written read back as whatever the file holds. A
    /// parallel create allocates every dataset in full and would otherwise write the fill value over
    /// the whole store once before the data (hdf5-metno asks for `H5D_FILL_TIME_ALLOC` on chunked
    /// datasets), doubling the bytes the stage writes.
    ///
    /// # Errors
    /// As [`BandStore::create`].
    #[allow(clippy::too_many_arguments)]
    pub fn create_unfilled(
        path: &Path,
        comm: Option<MpiHandle>,
        group: &str,
        ny: usize,
        nx: usize,
        chunk_px: usize,
        products: &[ProductSpec],
        attrs: &[(&str, String)],
    ) -> Result<BandStore, StoreError> {
        Self::create_with(path, comm, group, ny, nx, chunk_px, products, attrs, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn create_with(
        path: &Path,
        comm: Option<MpiHandle>,
        group: &str,
        ny: usize,
        nx: usize,
        chunk_px: usize,
        products: &[ProductSpec],
        attrs: &[(&str, String)],
        fill: bool,
    ) -> Result<BandStore, StoreError> {
        // Argument checks are deterministic, so all ranks fail alike before any collective call.
        if ny == 0 || nx == 0 || chunk_px == 0 {
            return Err(invalid(path, "/", format!("bad layout: {ny} x {nx} px, chunks of {chunk_px} px")));
        }
        if group.is_empty() || group.contains('/') {
            return Err(invalid(path, group, "bad group name"));
        }
        for (i, p) in products.iter().enumerate() {
            let object = format!("/{group}/{}", p.name);
            if p.name.is_empty() || p.name.contains('/') || p.name == "." {
                return Err(invalid(path, &object, "bad product name"));
            }
            if p.planes == 0 {
                return Err(invalid(path, &object, "a product needs at least one plane"));
            }
            if products[..i].iter().any(|q| q.name == p.name) {
                return Err(invalid(path, &object, "product listed twice"));
            }
        }
        let attr_values = attrs
            .iter()
            .map(|(k, v)| {
                v.parse::<VarLenUnicode>()
                    .map_err(|e| invalid(path, &format!("attribute {k}"), format!("not storable: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut builder = hdf5::File::with_options();
        let parallel = comm.is_some();
        if let Some(handle) = comm {
            use_mpio(&mut builder, handle, path)?;
        }
        let file = builder.create(path).map_err(h5err(path, "/", "create file"))?;
        for ((name, _), value) in attrs.iter().zip(&attr_values) {
            let what = format!("write attribute {name}");
            file.new_attr::<VarLenUnicode>()
                .create(*name)
                .and_then(|a| a.write_scalar(value))
                .map_err(h5err(path, "/", what))?;
        }
        let grp = file.create_group(group).map_err(h5err(path, &format!("/{group}"), "create group"))?;
        let (cy, cx) = (chunk_px.min(ny), chunk_px.min(nx));
        let mut datasets = Vec::with_capacity(products.len());
        for p in products {
            let object = format!("/{group}/{}", p.name);
            let (shape, chunk) =
                if p.planes > 1 { (vec![p.planes, ny, nx], vec![1, cy, cx]) } else { (vec![ny, nx], vec![cy, cx]) };
            let fill_time = if fill { FillTime::Alloc } else { FillTime::Never };
            let ds = match p.dtype {
                Dtype::F32 => grp
                    .new_dataset::<f32>()
                    .shape(shape)
                    .chunk(chunk)
                    .fill_value(f32::NAN)
                    .fill_time(fill_time)
                    .create(&*p.name),
                Dtype::U32 => grp
                    .new_dataset::<u32>()
                    .shape(shape)
                    .chunk(chunk)
                    .fill_value(0u32)
                    .fill_time(fill_time)
                    .create(&*p.name),
            }
            .map_err(h5err(path, &object, "create dataset"))?;
            datasets.push((p.clone(), ds));
        }

        let dxpl = if parallel {
            Some(collective_dxpl().map_err(h5err(path, "/", "collective transfer plist"))?)
        } else {
            None
        };
        tracing::debug!(
            path = %path.display(), group, ny, nx, chunk_px, products = products.len(), parallel,
            "band store created"
        );
        Ok(BandStore {
            path: path.to_path_buf(),
            group_name: group.to_string(),
            ny,
            nx,
            datasets,
            group: grp,
            dxpl,
            file,
            collective: AtomicUsize::new(0),
            not_collective: AtomicUsize::new(0),
            serial: AtomicUsize::new(0),
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Image size `(ny, nx)` in pixels.
    pub fn dim(&self) -> (usize, usize) {
        (self.ny, self.nx)
    }

    /// How this rank's writes were carried out so far.
    pub fn write_stats(&self) -> WriteStats {
        WriteStats {
            collective: self.collective.load(Ordering::Relaxed),
            not_collective: self.not_collective.load(Ordering::Relaxed),
            serial: self.serial.load(Ordering::Relaxed),
        }
    }

    /// Write one block of the one-plane f32 product `product`: `Some((y0, x0, data))` puts `data`
    /// (`[y, x]`, any memory layout) at rows `y0..`, columns `x0..`; `None` takes part in the
    /// collective write with nothing to write.
    ///
    /// Collective: every rank calls this the same number of times for the same product. A rank whose
    /// block is out of bounds still takes part (with nothing) and then returns the error, so the
    /// others do not hang.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for an unknown product, a product that is not a one-plane f32 image or
    /// a block outside the image; [`StoreError::Hdf5`] when the write fails.
    pub fn write_block_f32(
        &self,
        product: &str,
        block: Option<(usize, usize, ArrayView2<f32>)>,
    ) -> Result<(), StoreError> {
        self.write_block(product, 0, block)
    }

    /// Write one block of plane `plane` of the u32 product `product` (`plane` is 0 for a one-plane
    /// product); otherwise as [`BandStore::write_block_f32`].
    ///
    /// # Errors
    /// As [`BandStore::write_block_f32`], and [`StoreError::Invalid`] for a plane out of range.
    pub fn write_block_u32(
        &self,
        product: &str,
        plane: usize,
        block: Option<(usize, usize, ArrayView2<u32>)>,
    ) -> Result<(), StoreError> {
        self.write_block(product, plane, block)
    }

    /// Write this rank's blocks of an f32 product when ranks own different numbers of blocks: makes
    /// `max_blocks_any_rank` collective writes (the caller gets that number from an all-reduce max),
    /// padding with empty writes once `my_blocks` runs out.
    ///
    /// # Errors
    /// The first error met (the remaining collective writes are still made), or
    /// [`StoreError::Invalid`] if `my_blocks` is longer than `max_blocks_any_rank`.
    pub fn write_blocks_f32(
        &self,
        product: &str,
        my_blocks: &[(usize, usize, ArrayView2<f32>)],
        max_blocks_any_rank: usize,
    ) -> Result<(), StoreError> {
        self.write_blocks(product, 0, my_blocks, max_blocks_any_rank)
    }

    /// As [`BandStore::write_blocks_f32`] for plane `plane` of a u32 product.
    ///
    /// # Errors
    /// As [`BandStore::write_blocks_f32`].
    pub fn write_blocks_u32(
        &self,
        product: &str,
        plane: usize,
        my_blocks: &[(usize, usize, ArrayView2<u32>)],
        max_blocks_any_rank: usize,
    ) -> Result<(), StoreError> {
        self.write_blocks(product, plane, my_blocks, max_blocks_any_rank)
    }

    /// Close the file (collective). Datasets and group are released first: HDF5's MPI-IO driver
    /// refuses to close a file with open objects.
    ///
    /// # Errors
    /// [`StoreError::Hdf5`] when HDF5 fails to flush or close.
    pub fn close(self) -> Result<(), StoreError> {
        let stats = self.write_stats();
        let BandStore { path, datasets, group, dxpl, file, .. } = self;
        drop(datasets);
        drop(group);
        drop(dxpl);
        tracing::debug!(path = %path.display(), ?stats, "closing band store");
        if stats.not_collective > 0 {
            tracing::debug!(
                path = %path.display(),
                not_collective = stats.not_collective,
                "some parallel writes were not collective"
            );
        }
        file.close().map_err(h5err(&path, "/", "close file"))
    }

    fn object(&self, product: &str) -> String {
        format!("/{}/{product}", self.group_name)
    }

    fn write_blocks<T: Elem>(
        &self,
        product: &str,
        plane: usize,
        my_blocks: &[(usize, usize, ArrayView2<T>)],
        max_blocks_any_rank: usize,
    ) -> Result<(), StoreError> {
        let mut first_err = None;
        for i in 0..max_blocks_any_rank {
            let block = my_blocks.get(i).map(|(y0, x0, v)| (*y0, *x0, v.view()));
            if let Err(e) = self.write_block(product, plane, block) {
                first_err.get_or_insert(e);
            }
        }
        if my_blocks.len() > max_blocks_any_rank {
            first_err.get_or_insert_with(|| {
                invalid(
                    &self.path,
                    &self.object(product),
                    format!("{} blocks to write but max_blocks_any_rank = {max_blocks_any_rank}", my_blocks.len()),
                )
            });
        }
        first_err.map_or(Ok(()), Err)
    }

    fn write_block<T: Elem>(
        &self,
        product: &str,
        plane: usize,
        block: Option<(usize, usize, ArrayView2<T>)>,
    ) -> Result<(), StoreError> {
        let object = self.object(product);
        // Same on every rank (collective arguments): failing here cannot split the ranks.
        let (spec, ds) = self
            .datasets
            .iter()
            .find(|(p, _)| p.name == product)
            .ok_or_else(|| invalid(&self.path, &object, "no such product in this store"))?;
        if spec.dtype != T::DTYPE {
            return Err(invalid(
                &self.path,
                &object,
                format!("product is {:?}, written as {:?}", spec.dtype, T::DTYPE),
            ));
        }
        // Rank-local checks: a bad block still takes part in the collective write, with nothing.
        let mut local_err = None;
        let block = block.filter(|(_, _, v)| !v.is_empty()).and_then(|(y0, x0, v)| {
            let (h, w) = v.dim();
            if plane >= spec.planes {
                local_err = Some(invalid(&self.path, &object, format!("plane {plane} of {}", spec.planes)));
                None
            } else if y0 + h > self.ny || x0 + w > self.nx {
                let msg = format!("block {h} x {w} at (y {y0}, x {x0}) outside the {} x {} image", self.ny, self.nx);
                local_err = Some(invalid(&self.path, &object, msg));
                None
            } else {
                let v: CowArray<T, Ix2> =
                    if v.is_standard_layout() { v.into() } else { v.as_standard_layout().into_owned().into() };
                Some((y0, x0, v))
            }
        });
        let sel = block.as_ref().map(|(y0, x0, v)| Selection {
            start: if spec.planes > 1 { vec![plane, *y0, *x0] } else { vec![*y0, *x0] },
            dims: v.dim(),
            buf: v.as_ptr().cast(),
        });
        let dxpl = self.dxpl.as_ref().map_or(hdf5_sys::h5p::H5P_DEFAULT, |p| p.id);
        // SAFETY: `sel.buf` points at `dims.0 * dims.1` contiguous elements of type T (standard
        // layout), alive until the call returns; the selection lies inside the dataset (checked).
        let mode = hdf5::sync::sync(|| unsafe { write_selection(ds.id(), T::native_type(), dxpl, sel.as_ref()) })
            .map_err(h5err(&self.path, &object, "collective H5Dwrite"))?;
        let counter = match mode {
            IoMode::Serial => &self.serial,
            m if m.is_collective() => &self.collective,
            _ => &self.not_collective,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            path = %self.path.display(), object = %object, block = ?sel.as_ref().map(|s| (&s.start, s.dims)),
            io_mode = ?mode, collective = mode.is_collective(), "block written"
        );
        local_err.map_or(Ok(()), Err)
    }
}

/// A hyperslab to write: start in file coordinates (`[y, x]` or `[plane, y, x]`), block size
/// `(h, w)`, and a row-major buffer of `h * w` elements.
struct Selection {
    start: Vec<usize>,
    dims: (usize, usize),
    buf: *const c_void,
}

/// Make `builder` open the file with the MPI-IO driver on `handle`'s communicator.
#[cfg(feature = "mpi")]
fn use_mpio(builder: &mut hdf5::FileBuilder, handle: MpiHandle, _path: &Path) -> Result<(), StoreError> {
    // SAFETY: `MpiHandle` holds an Open MPI `MPI_Comm` (a `#[repr(transparent)]` pointer in mpi-sys);
    // the transmute's target type is inferred from `mpio`'s parameter and its size is checked at
    // compile time. HDF5 duplicates the communicator. Naming the target type would mean importing
    // mpi-sys here, hence the allow.
    #[allow(clippy::missing_transmute_annotations)]
    builder.with_fapl(|fapl| fapl.mpio(unsafe { std::mem::transmute::<*mut c_void, _>(handle.0) }, None));
    Ok(())
}

#[cfg(not(feature = "mpi"))]
fn use_mpio(_builder: &mut hdf5::FileBuilder, _handle: MpiHandle, path: &Path) -> Result<(), StoreError> {
    Err(StoreError::NoMpi { path: path.to_path_buf() })
}

/// A dataset-transfer property list asking for collective MPI-IO.
#[cfg(feature = "mpi")]
fn collective_dxpl() -> hdf5::Result<Hid> {
    use hdf5_sys::h5p::{H5FD_mpio_xfer_t, H5Pclose, H5Pcreate, H5Pset_dxpl_mpio, H5P_CLS_DATASET_XFER};
    hdf5::sync::sync(|| {
        // SAFETY: plain HDF5 calls on a property list this function owns.
        unsafe {
            let dxpl = Hid { id: hdf5::h5check(H5Pcreate(*H5P_CLS_DATASET_XFER))?, close: H5Pclose };
            hdf5::h5check(H5Pset_dxpl_mpio(dxpl.id, H5FD_mpio_xfer_t::H5FD_MPIO_COLLECTIVE))?;
            Ok(dxpl)
        }
    })
}

#[cfg(not(feature = "mpi"))]
fn collective_dxpl() -> hdf5::Result<Hid> {
    unreachable!("create returns NoMpi before asking for a collective transfer")
}

/// One `H5Dwrite` of `sel` (or of nothing) into dataset `ds`; returns the I/O mode HDF5 used.
///
/// # Safety
/// Call under hdf5-metno's lock; `sel.buf` must hold `h * w` elements of `mem_type`, and the
/// selection must lie inside the dataset.
unsafe fn write_selection(ds: hid_t, mem_type: hid_t, dxpl: hid_t, sel: Option<&Selection>) -> hdf5::Result<IoMode> {
    use hdf5::h5check;
    use hdf5_sys::h5d::{H5Dget_space, H5Dwrite};
    use hdf5_sys::h5s::{H5S_seloper_t, H5Sclose, H5Screate_simple, H5Sselect_hyperslab, H5Sselect_none};

    let fspace = Hid { id: h5check(H5Dget_space(ds))?, close: H5Sclose };
    let dummy = 0u64;
    let (mspace, buf) = match sel {
        Some(sel) => {
            let start: Vec<hsize_t> = sel.start.iter().map(|&v| v as hsize_t).collect();
            let mut count: Vec<hsize_t> = vec![1; start.len()];
            let n = count.len();
            count[n - 2] = sel.dims.0 as hsize_t;
            count[n - 1] = sel.dims.1 as hsize_t;
            h5check(H5Sselect_hyperslab(
                fspace.id,
                H5S_seloper_t::H5S_SELECT_SET,
                start.as_ptr(),
                std::ptr::null(),
                count.as_ptr(),
                std::ptr::null(),
            ))?;
            let mdims = [sel.dims.0 as hsize_t, sel.dims.1 as hsize_t];
            (Hid { id: h5check(H5Screate_simple(2, mdims.as_ptr(), std::ptr::null()))?, close: H5Sclose }, sel.buf)
        }
        None => {
            // Nothing to write: empty selections in file and memory, a valid (unread) buffer.
            h5check(H5Sselect_none(fspace.id))?;
            let mdims = [1 as hsize_t];
            let mspace = Hid { id: h5check(H5Screate_simple(1, mdims.as_ptr(), std::ptr::null()))?, close: H5Sclose };
            h5check(H5Sselect_none(mspace.id))?;
            (mspace, (&raw const dummy).cast::<c_void>())
        }
    };
    h5check(H5Dwrite(ds, mem_type, mspace.id, fspace.id, dxpl, buf))?;
    actual_io_mode(dxpl)
}

#[cfg(feature = "mpi")]
unsafe fn actual_io_mode(dxpl: hid_t) -> hdf5::Result<IoMode> {
    if dxpl == hdf5_sys::h5p::H5P_DEFAULT {
        return Ok(IoMode::Serial);
    }
    let mut raw = 0;
    hdf5::h5check(H5Pget_mpio_actual_io_mode(dxpl, &mut raw))?;
    let mode = IoMode::from_raw(raw);
    if !mode.is_collective() {
        let (mut local, mut global) = (0u32, 0u32);
        if H5Pget_mpio_no_collective_cause(dxpl, &mut local, &mut global) >= 0 {
            tracing::debug!(?mode, local_cause = local, global_cause = global, "H5Dwrite was not collective");
        }
    }
    Ok(mode)
}

#[cfg(not(feature = "mpi"))]
unsafe fn actual_io_mode(_dxpl: hid_t) -> hdf5::Result<IoMode> {
    Ok(IoMode::Serial)
}

fn open_dataset(path: &Path, group: &str, product: &str) -> Result<(hdf5::Dataset, String), StoreError> {
    let object = format!("/{group}/{product}");
    let file = hdf5::File::open(path).map_err(h5err(path, "/", "open file"))?;
    let ds = file.dataset(&object).map_err(h5err(path, &object, "open dataset"))?;
    Ok((ds, object))
}

fn read_rows<T: Elem>(
    path: &Path,
    group: &str,
    product: &str,
    plane: usize,
    rows: Range<usize>,
) -> Result<Array2<T>, StoreError> {
    let (ds, object) = open_dataset(path, group, product)?;
    let descriptor = ds.dtype().and_then(|t| t.to_descriptor()).map_err(h5err(path, &object, "read datatype"))?;
    if descriptor != T::type_descriptor() {
        return Err(invalid(path, &object, format!("stored as {descriptor}, read as {:?}", T::DTYPE)));
    }
    let shape = ds.shape();
    let (planes, ny) = match shape[..] {
        [ny, _] => (1, ny),
        [planes, ny, _] => (planes, ny),
        _ => return Err(invalid(path, &object, format!("unexpected shape {shape:?}"))),
    };
    if plane >= planes {
        return Err(invalid(path, &object, format!("plane {plane} of {planes}")));
    }
    if rows.start > rows.end || rows.end > ny {
        return Err(invalid(path, &object, format!("rows {rows:?} outside 0..{ny}")));
    }
    let what = format!("read rows {rows:?}");
    if shape.len() == 2 {
        ds.read_slice_2d::<T, _>(s![rows, ..])
    } else {
        ds.read_slice_2d::<T, _>(s![plane, rows, ..])
    }
    .map_err(h5err(path, &object, what))
}

/// Rows `rows` (all columns, `[y, x]`) of the one-plane f32 product `/group/product`, read with
/// the default driver from a closed store (on one rank, after the collective close and a barrier).
///
/// # Errors
/// [`StoreError::Hdf5`] if the file or dataset cannot be read, [`StoreError::Invalid`] if the
/// dataset is not f32 or the rows are out of range.
pub fn read_rows_f32(path: &Path, group: &str, product: &str, rows: Range<usize>) -> Result<Array2<f32>, StoreError> {
    read_rows(path, group, product, 0, rows)
}

/// Rows `rows` of plane `plane` (0 for a one-plane product) of the u32 product `/group/product`.
///
/// # Errors
/// As [`read_rows_f32`], and [`StoreError::Invalid`] for a plane out of range.
pub fn read_rows_u32(
    path: &Path,
    group: &str,
    product: &str,
    plane: usize,
    rows: Range<usize>,
) -> Result<Array2<u32>, StoreError> {
    read_rows(path, group, product, plane, rows)
}

/// The shape of `/group/product`: `[ny, nx]` or `[planes, ny, nx]`.
///
/// # Errors
/// [`StoreError::Hdf5`] if the file or dataset cannot be opened.
pub fn product_shape(path: &Path, group: &str, product: &str) -> Result<Vec<usize>, StoreError> {
    Ok(open_dataset(path, group, product)?.0.shape())
}

/// The string attribute `name` of the file root.
///
/// # Errors
/// [`StoreError::Hdf5`] if the file or attribute cannot be read (or is not a string).
pub fn read_attr(path: &Path, name: &str) -> Result<String, StoreError> {
    let file = hdf5::File::open(path).map_err(h5err(path, "/", "open file"))?;
    let value = file.attr(name).and_then(|a| a.read_scalar::<VarLenUnicode>()).map_err(h5err(
        path,
        "/",
        format!("read attribute {name}"),
    ))?;
    Ok(value.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn pattern_f32(y: usize, x: usize) -> f32 {
        (y * 1000 + x) as f32 + 0.25
    }

    fn pattern_u32(p: usize, y: usize, x: usize) -> u32 {
        (p as u32) << 24 | (y as u32) << 12 | x as u32
    }

    #[test]
    fn serial_store_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("band.h5");
        let (ny, nx, chunk) = (37, 53, 16);
        let products =
            [ProductSpec::f32_image("SCI"), ProductSpec::u32_planes("CON", 3), ProductSpec::u32_planes("DQ", 1)];
        let attrs =
            [("tessera_version", "0.1.0".to_string()), ("config_toml", "[drizzle]\npixfrac = 1.0\n".to_string())];
        let store = BandStore::create(&path, None, "drizzle", ny, nx, chunk, &products, &attrs).unwrap();
        assert_eq!(store.dim(), (ny, nx));

        // Blocks of the chunk grid, except the one at (16, 16): it must read back as fill values.
        let mut blocks = vec![];
        for y0 in (0..ny).step_by(chunk) {
            for x0 in (0..nx).step_by(chunk) {
                if (y0, x0) != (16, 16) {
                    blocks.push((y0, x0, (chunk.min(ny - y0), chunk.min(nx - x0))));
                }
            }
        }
        let sci: Vec<_> =
            blocks.iter().map(|&(y0, x0, d)| Array2::from_shape_fn(d, |(y, x)| pattern_f32(y0 + y, x0 + x))).collect();
        let views: Vec<_> = blocks.iter().zip(&sci).map(|(&(y0, x0, _), a)| (y0, x0, a.view())).collect();
        store.write_blocks_f32("SCI", &views, views.len() + 2).unwrap();
        for p in 0..3 {
            for &(y0, x0, d) in &blocks {
                let a = Array2::from_shape_fn(d, |(y, x)| pattern_u32(p, y0 + y, x0 + x));
                store.write_block_u32("CON", p, Some((y0, x0, a.view()))).unwrap();
            }
        }
        // A transposed (non-standard layout) view is written correctly.
        let t = Array2::from_shape_fn((nx, ny), |(x, y)| (y * nx + x) as u32);
        store.write_block_u32("DQ", 0, Some((0, 0, t.t()))).unwrap();

        // Errors name the object; bad blocks and wrong types are refused.
        let e = store.write_block_f32("SCI", Some((30, 50, Array2::zeros((8, 8)).view()))).unwrap_err();
        assert!(e.to_string().contains("/drizzle/SCI") && e.to_string().contains("outside"), "{e}");
        assert!(store.write_block_f32("CON", None).is_err());
        assert!(store.write_block_u32("CON", 3, Some((0, 0, Array2::zeros((1, 1)).view()))).is_err());
        assert!(store.write_block_f32("NOPE", None).unwrap_err().to_string().contains("no such product"));
        let stats = store.write_stats();
        assert_eq!(stats.collective + stats.not_collective, 0);
        assert!(stats.serial > 0);
        store.close().unwrap();

        assert_eq!(read_attr(&path, "tessera_version").unwrap(), "0.1.0");
        assert_eq!(read_attr(&path, "config_toml").unwrap(), attrs[1].1);
        assert!(read_attr(&path, "missing").is_err());
        assert_eq!(product_shape(&path, "drizzle", "CON").unwrap(), vec![3, ny, nx]);
        assert_eq!(product_shape(&path, "drizzle", "SCI").unwrap(), vec![ny, nx]);
        {
            let file = hdf5::File::open(&path).unwrap();
            assert_eq!(file.dataset("drizzle/SCI").unwrap().dcpl().unwrap().fill_time(), FillTime::Alloc);
            assert_eq!(file.dataset("drizzle/SCI").unwrap().chunk(), Some(vec![chunk, chunk]));
            assert_eq!(file.dataset("drizzle/CON").unwrap().chunk(), Some(vec![1, chunk, chunk]));
        }

        for rows in [0..ny, 5..21, 36..37, 10..10] {
            let sci = read_rows_f32(&path, "drizzle", "SCI", rows.clone()).unwrap();
            assert_eq!(sci.dim(), (rows.len(), nx));
            for ((y, x), &v) in sci.indexed_iter() {
                let (gy, gx) = (rows.start + y, x);
                if (16..32).contains(&gy) && (16..32).contains(&gx) {
                    assert!(v.is_nan(), "unwritten pixel ({gy}, {gx}) = {v}");
                } else {
                    assert_eq!(v, pattern_f32(gy, gx));
                }
            }
            for p in 0..3 {
                let con = read_rows_u32(&path, "drizzle", "CON", p, rows.clone()).unwrap();
                for ((y, x), &v) in con.indexed_iter() {
                    let (gy, gx) = (rows.start + y, x);
                    let unwritten = (16..32).contains(&gy) && (16..32).contains(&gx);
                    assert_eq!(v, if unwritten { 0 } else { pattern_u32(p, gy, gx) });
                }
            }
            let dq = read_rows_u32(&path, "drizzle", "DQ", 0, rows.clone()).unwrap();
            for ((y, x), &v) in dq.indexed_iter() {
                assert_eq!(v, ((rows.start + y) * nx + x) as u32);
            }
        }
        assert!(read_rows_f32(&path, "drizzle", "SCI", 30..38).is_err());
        assert!(read_rows_f32(&path, "drizzle", "CON", 0..1).unwrap_err().to_string().contains("/drizzle/CON"));
        assert!(read_rows_u32(&path, "drizzle", "CON", 3, 0..1).is_err());
        assert!(read_rows_u32(&path, "drizzle", "DQ", 1, 0..1).is_err());
        assert!(read_rows_f32(&path, "stage", "SCI", 0..1).is_err());
    }

    #[test]
    fn unfilled_store_round_trips_when_every_pixel_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("band.h5");
        let (ny, nx, chunk) = (37, 53, 16);
        let products = [ProductSpec::f32_image("SCI"), ProductSpec::u32_planes("CON", 2)];
        let store = BandStore::create_unfilled(&path, None, "drizzle", ny, nx, chunk, &products, &[]).unwrap();
        for y0 in (0..ny).step_by(chunk) {
            for x0 in (0..nx).step_by(chunk) {
                let d = (chunk.min(ny - y0), chunk.min(nx - x0));
                let a = Array2::from_shape_fn(d, |(y, x)| pattern_f32(y0 + y, x0 + x));
                store.write_block_f32("SCI", Some((y0, x0, a.view()))).unwrap();
                for p in 0..2 {
                    let c = Array2::from_shape_fn(d, |(y, x)| pattern_u32(p, y0 + y, x0 + x));
                    store.write_block_u32("CON", p, Some((y0, x0, c.view()))).unwrap();
                }
            }
        }
        store.close().unwrap();
        {
            let file = hdf5::File::open(&path).unwrap();
            assert_eq!(file.dataset("drizzle/SCI").unwrap().dcpl().unwrap().fill_time(), FillTime::Never);
            assert_eq!(file.dataset("drizzle/CON").unwrap().dcpl().unwrap().fill_time(), FillTime::Never);
        }
        let sci = read_rows_f32(&path, "drizzle", "SCI", 0..ny).unwrap();
        assert_eq!(sci, Array2::from_shape_fn((ny, nx), |(y, x)| pattern_f32(y, x)));
        for p in 0..2 {
            let con = read_rows_u32(&path, "drizzle", "CON", p, 0..ny).unwrap();
            assert_eq!(con, Array2::from_shape_fn((ny, nx), |(y, x)| pattern_u32(p, y, x)));
        }
    }

    #[test]
    fn create_refuses_bad_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.h5");
        let sci = [ProductSpec::f32_image("SCI")];
        assert!(BandStore::create(&path, None, "drizzle", 0, 10, 4, &sci, &[]).is_err());
        assert!(BandStore::create(&path, None, "drizzle", 10, 10, 0, &sci, &[]).is_err());
        assert!(BandStore::create(&path, None, "a/b", 10, 10, 4, &sci, &[]).is_err());
        let twice = [ProductSpec::f32_image("SCI"), ProductSpec::u32_planes("SCI", 2)];
        assert!(BandStore::create(&path, None, "drizzle", 10, 10, 4, &twice, &[]).is_err());
        assert!(
            BandStore::create(&path, None, "drizzle", 10, 10, 4, &[ProductSpec::u32_planes("CON", 0)], &[]).is_err()
        );
        assert!(BandStore::create(&path, None, "drizzle", 10, 10, 4, &sci, &[("bad", "a\0b".to_string())]).is_err());
        // A chunk larger than the image is clamped; a missing parent directory is an HDF5 error naming the file.
        BandStore::create(&path, None, "drizzle", 3, 5, 4096, &sci, &[]).unwrap().close().unwrap();
        let missing = dir.path().join("no/such/dir.h5");
        let e = BandStore::create(&missing, None, "drizzle", 3, 5, 4, &sci, &[]).unwrap_err();
        assert!(e.to_string().contains("no/such/dir.h5"), "{e}");
        #[cfg(not(feature = "mpi"))]
        {
            // SAFETY: never handed to MPI: without the feature `create` refuses it first.
            let h = unsafe { MpiHandle::from_raw(std::ptr::null_mut()) };
            let e = BandStore::create(&path, Some(h), "drizzle", 3, 5, 4, &sci, &[]).unwrap_err();
            assert!(matches!(e, StoreError::NoMpi { .. }), "{e}");
        }
    }

    #[test]
    fn room_for_a_store_is_checked_before_it_is_created() {
        // 10 x 20 px: one f32 plane and three u32 planes of 4 bytes each = 200 * 4 * 4 bytes
        let products = [ProductSpec::f32_image("SCI"), ProductSpec::u32_planes("CON", 3)];
        assert_eq!(store_bytes(10, 20, &products), 3200);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("band.h5");
        check_room(&path, 10, 20, &products).unwrap();
        // 2^22 x 2^22 px x 4 planes x 4 bytes = 256 TiB: no test machine has that free
        let e = check_room(&path, 1 << 22, 1 << 22, &products).unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, StoreError::DiskFull { .. }), "{m}");
        assert!(m.contains("band.h5") && m.contains("no space left on device in") && m.contains("MiB are free"), "{m}");
        assert!(!path.exists(), "the check creates nothing");
    }
}
