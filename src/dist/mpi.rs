//! The rsmpi implementation of [`Comm`](super::Comm) on `MPI_COMM_WORLD` or a group split from it
//! (`MPI_Comm_split`, for the communicator groups of a campaign).
//!
//! `main` initialises MPI once through [`init`] and keeps the returned [`MpiWorld`] (which owns the
//! rsmpi `Universe`) alive for the whole run; MPI is finalised when it is dropped.

use super::Comm;
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::datatype::{Partition, PartitionMut};
use mpi::raw::AsRaw;
use mpi::topology::{Color, Communicator, SimpleCommunicator};
use mpi::Count;

/// MPI initialised: the universe and the world communicator.
pub struct MpiWorld {
    world: MpiComm,
    _universe: mpi::environment::Universe,
}

/// An MPI communicator: `MPI_COMM_WORLD` or a group split from it ([`Comm::split`]). A split
/// communicator is freed when dropped; drop it before the [`MpiWorld`].
pub struct MpiComm {
    world: SimpleCommunicator,
}

// SAFETY: stages call collectives from one thread at a time (the main thread); rayon workers never
// touch the communicator. `Sync` is needed only so `&dyn Comm` can be captured by rayon closures
// that read `rank()`/`size()`.
unsafe impl Sync for MpiComm {}

/// Initialise MPI (once per process). Returns `None` if MPI was already initialised.
pub fn init() -> Option<MpiWorld> {
    let universe = mpi::initialize()?;
    let world = universe.world();
    Some(MpiWorld { world: MpiComm { world }, _universe: universe })
}

impl MpiWorld {
    /// The world communicator.
    pub fn comm(&self) -> &MpiComm {
        &self.world
    }
}

impl MpiComm {
    /// This communicator as the opaque handle `io::hdf5::BandStore::create` takes, so that `io` opens
    /// its band files on it without importing `mpi`. HDF5 duplicates the communicator on open; close
    /// every band store before this communicator (and MPI) goes away.
    pub fn raw_comm_handle(&self) -> crate::io::hdf5::MpiHandle {
        // SAFETY: `world` is a valid Open MPI communicator of an initialised MPI while `self` lives.
        unsafe { crate::io::hdf5::MpiHandle::from_raw(self.world.as_raw().0.cast()) }
    }
}

/// The MPI library's version string (trailing NULs removed).
pub fn library_version() -> String {
    mpi::environment::library_version().unwrap_or_default().trim_end_matches('\0').trim().to_string()
}

/// Abort `MPI_COMM_WORLD` from anywhere (used by the panic hook).
pub fn abort_world(code: i32) {
    if mpi::environment::is_initialized() && !mpi::environment::is_finalized() {
        // SAFETY: MPI is initialised; MPI_Abort on the world communicator is always valid.
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
        }
    }
}

fn displs(counts: &[Count]) -> Vec<Count> {
    counts
        .iter()
        .scan(0, |acc, &c| {
            let d = *acc;
            *acc += c;
            Some(d)
        })
        .collect()
}

fn count(n: usize) -> Count {
    Count::try_from(n).expect("message larger than 2 GiB: split it")
}

impl Comm for MpiComm {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn barrier(&self) {
        self.world.barrier();
    }
    fn all_reduce_sum_u64(&self, values: &mut [u64]) {
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
    }
    fn all_reduce_sum_f64(&self, values: &mut [f64]) {
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
    }
    fn all_reduce_max_f64(&self, values: &mut [f64]) {
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, SystemOperation::max());
    }
    fn all_reduce_min_f64(&self, values: &mut [f64]) {
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, SystemOperation::min());
    }
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) {
        let r = self.world.process_at_rank(root as i32);
        let mut len = buf.len() as u64;
        r.broadcast_into(&mut len);
        buf.resize(len as usize, 0);
        if len > 0 {
            r.broadcast_into(&mut buf[..]);
        }
    }
    fn gather_bytes(&self, root: usize, data: &[u8]) -> Option<Vec<Vec<u8>>> {
        let backing = [0u8; 1];
        let data = if data.is_empty() { &backing[..0] } else { data };
        let r = self.world.process_at_rank(root as i32);
        let n = count(data.len());
        if self.rank() == root {
            let mut counts = vec![0 as Count; self.size()];
            r.gather_into_root(&n, &mut counts[..]);
            let d = displs(&counts);
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            let mut recv = vec![0u8; total.max(1)];
            {
                let mut part = PartitionMut::new(&mut recv[..], &counts[..], &d[..]);
                r.gather_varcount_into_root(data, &mut part);
            }
            Some(counts.iter().zip(&d).map(|(&c, &o)| recv[o as usize..(o + c) as usize].to_vec()).collect())
        } else {
            r.gather_into(&n);
            r.gather_varcount_into(data);
            None
        }
    }
    fn all_gather_bytes(&self, data: &[u8]) -> Vec<Vec<u8>> {
        // an empty slice of a real array: Open MPI rejects the dangling pointer of an empty Vec
        let backing = [0u8; 1];
        let data = if data.is_empty() { &backing[..0] } else { data };
        let n = count(data.len());
        let mut counts = vec![0 as Count; self.size()];
        self.world.all_gather_into(&n, &mut counts[..]);
        let d = displs(&counts);
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut recv = vec![0u8; total.max(1)];
        {
            let mut part = PartitionMut::new(&mut recv[..], &counts[..], &d[..]);
            self.world.all_gather_varcount_into(data, &mut part);
        }
        counts.iter().zip(&d).map(|(&c, &o)| recv[o as usize..(o + c) as usize].to_vec()).collect()
    }
    fn exchange(&self, sends: Vec<(usize, Vec<u8>)>) -> Vec<(usize, Vec<u8>)> {
        let size = self.size();
        let mut per_dest: Vec<Vec<u8>> = vec![vec![]; size];
        for (dest, bytes) in sends {
            assert!(dest < size, "exchange to rank {dest} of {size}");
            per_dest[dest].extend(bytes);
        }
        let send_counts: Vec<Count> = per_dest.iter().map(|b| count(b.len())).collect();
        let mut recv_counts = vec![0 as Count; size];
        self.world.all_to_all_into(&send_counts[..], &mut recv_counts[..]);
        // Buffers of at least one byte: Open MPI rejects the dangling pointer of an empty Vec even
        // when every count is zero.
        let mut send_buf: Vec<u8> = per_dest.concat();
        if send_buf.is_empty() {
            send_buf.push(0);
        }
        let sd = displs(&send_counts);
        let rd = displs(&recv_counts);
        let total: usize = recv_counts.iter().map(|&c| c as usize).sum();
        let mut recv = vec![0u8; total.max(1)];
        {
            let send = Partition::new(&send_buf[..], &send_counts[..], &sd[..]);
            let mut part = PartitionMut::new(&mut recv[..], &recv_counts[..], &rd[..]);
            self.world.all_to_all_varcount_into(&send, &mut part);
        }
        recv_counts
            .iter()
            .zip(&rd)
            .enumerate()
            .filter(|(_, (&c, _))| c > 0)
            .map(|(src, (&c, &o))| (src, recv[o as usize..(o + c) as usize].to_vec()))
            .collect()
    }
    fn hdf5_handle(&self) -> Option<crate::io::hdf5::MpiHandle> {
        Some(self.raw_comm_handle())
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
    fn split(&self, color: usize) -> Box<dyn Comm> {
        let c = Color::with_value(i32::try_from(color).expect("a group number fits an int"));
        // key = this rank: the group keeps the parent's rank order
        let sub = self
            .world
            .split_by_color_with_key(c, self.world.rank())
            .expect("a non-negative colour always gives a communicator");
        Box::new(MpiComm { world: sub })
    }
}
