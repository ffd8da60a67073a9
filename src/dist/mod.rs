//! Distribution: the [`Comm`] trait every stage is written against, its serial implementation, and
//! (behind the default-on `mpi` feature) the rsmpi implementation in `dist::mpi`.
//!
//! Only this module imports `mpi`. The trait is byte-oriented and object-safe; typed helpers
//! (broadcast of a serialisable value, gather of values, sums of arrays) are in [`CommExt`].
//! Stages keep results independent of the rank count by owning work deterministically (see `plan`)
//! and by reducing in a fixed order (gather to root, then combine in rank order) wherever floating
//! point order would matter; [`Comm::all_reduce_sum_u64`] is exact and order-free.

#[cfg(feature = "mpi")]
pub mod mpi;

use serde::{de::DeserializeOwned, Serialize};

/// An error agreed on by all ranks.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("rank {rank}: {message}")]
    Rank { rank: usize, message: String },
    #[error("{message}")]
    Failed { message: String },
    #[error("could not decode a message from rank {rank}: {message}")]
    Decode { rank: usize, message: String },
}

/// A communicator: the operations tessera's stages need. Every method except `rank`, `size` and
/// `abort` is collective: all ranks must call it, in the same order.
pub trait Comm: Sync {
    /// This rank, 0-based.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Wait until all ranks arrive.
    fn barrier(&self);
    /// Element-wise sum over ranks, in place (exact).
    fn all_reduce_sum_u64(&self, values: &mut [u64]);
    /// Element-wise sum over ranks, in place. Floating-point order depends on the MPI library:
    /// use [`CommExt::all_reduce_sum_f64_ordered`] when results must not depend on the rank count.
    fn all_reduce_sum_f64(&self, values: &mut [f64]);
    /// Element-wise maximum over ranks, in place.
    fn all_reduce_max_f64(&self, values: &mut [f64]);
    /// Element-wise minimum over ranks, in place.
    fn all_reduce_min_f64(&self, values: &mut [f64]);
    /// Replace `buf` on every rank by `root`'s `buf`.
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>);
    /// Gather every rank's bytes to `root` (in rank order); `None` on other ranks.
    fn gather_bytes(&self, root: usize, data: &[u8]) -> Option<Vec<Vec<u8>>>;
    /// Gather every rank's bytes to every rank, in rank order.
    fn all_gather_bytes(&self, data: &[u8]) -> Vec<Vec<u8>>;
    /// Point-to-point exchange: each rank sends `sends[i] = (dest, bytes)` and receives, from each
    /// rank that sent to it, `(source, bytes)` in source-rank order (several messages from one source
    /// are concatenated in send order). Collective, deadlock-free (halo strips use this).
    fn exchange(&self, sends: Vec<(usize, Vec<u8>)>) -> Vec<(usize, Vec<u8>)>;
    /// Abort the whole job with `code` (does not return).
    fn abort(&self, code: i32) -> !;
    /// The communicator as an opaque handle for parallel HDF5 (`None` = no MPI: HDF5's serial
    /// driver). No default on purpose: an MPI communicator answering `None` would make every rank
    /// write the same file with the serial driver.
    fn hdf5_handle(&self) -> Option<crate::io::hdf5::MpiHandle>;
    /// Split into groups (`MPI_Comm_split`): the ranks passing the same `color` form one new
    /// communicator, ranked in this communicator's rank order. Collective.
    fn split(&self, color: usize) -> Box<dyn Comm>;
}

/// The communicator group of `rank` when `size` ranks are cut into `groups` contiguous groups of
/// near-equal size (the first `size % groups` groups one rank larger): `(group, first rank, ranks)`.
///
/// # Panics
/// If `groups` is 0 or larger than `size`.
pub fn group_of(rank: usize, size: usize, groups: usize) -> (usize, usize, usize) {
    assert!(groups >= 1 && groups <= size, "{groups} groups of {size} ranks");
    let (base, extra) = (size / groups, size % groups);
    let mut first = 0;
    for g in 0..groups {
        let n = base + usize::from(g < extra);
        if rank < first + n {
            return (g, first, n);
        }
        first += n;
    }
    unreachable!("rank {rank} < size {size}")
}

/// One rank, no MPI: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct SerialComm;

impl Comm for SerialComm {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn barrier(&self) {}
    fn all_reduce_sum_u64(&self, _values: &mut [u64]) {}
    fn all_reduce_sum_f64(&self, _values: &mut [f64]) {}
    fn all_reduce_max_f64(&self, _values: &mut [f64]) {}
    fn all_reduce_min_f64(&self, _values: &mut [f64]) {}
    fn broadcast_bytes(&self, _root: usize, _buf: &mut Vec<u8>) {}
    fn gather_bytes(&self, _root: usize, data: &[u8]) -> Option<Vec<Vec<u8>>> {
        Some(vec![data.to_vec()])
    }
    fn all_gather_bytes(&self, data: &[u8]) -> Vec<Vec<u8>> {
        vec![data.to_vec()]
    }
    fn exchange(&self, sends: Vec<(usize, Vec<u8>)>) -> Vec<(usize, Vec<u8>)> {
        let mut all = vec![];
        for (dest, bytes) in sends {
            assert_eq!(dest, 0, "SerialComm has only rank 0");
            all.extend(bytes);
        }
        if all.is_empty() {
            vec![]
        } else {
            vec![(0, all)]
        }
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn hdf5_handle(&self) -> Option<crate::io::hdf5::MpiHandle> {
        None
    }
    fn split(&self, _color: usize) -> Box<dyn Comm> {
        Box::new(SerialComm)
    }
}

/// Typed helpers on top of any [`Comm`].
pub trait CommExt: Comm {
    /// Broadcast a serialisable value from `root`.
    ///
    /// # Errors
    /// [`DistError::Decode`] if the bytes cannot be decoded (a bug, not a user error).
    fn broadcast_value<T: Serialize + DeserializeOwned>(&self, root: usize, value: Option<&T>) -> Result<T, DistError> {
        let mut buf = if self.rank() == root {
            serde_json::to_vec(value.expect("root provides the value")).expect("value serialises")
        } else {
            vec![]
        };
        self.broadcast_bytes(root, &mut buf);
        serde_json::from_slice(&buf).map_err(|e| DistError::Decode { rank: root, message: decode_hint(e) })
    }

    /// Gather a serialisable value from every rank to `root`, in rank order.
    ///
    /// # Errors
    /// [`DistError::Decode`].
    fn gather_values<T: Serialize + DeserializeOwned>(
        &self,
        root: usize,
        value: &T,
    ) -> Result<Option<Vec<T>>, DistError> {
        let bytes = serde_json::to_vec(value).expect("value serialises");
        match self.gather_bytes(root, &bytes) {
            None => Ok(None),
            Some(parts) => parts
                .iter()
                .enumerate()
                .map(|(rank, p)| {
                    serde_json::from_slice(p).map_err(|e| DistError::Decode { rank, message: decode_hint(e) })
                })
                .collect::<Result<Vec<T>, _>>()
                .map(Some),
        }
    }

    /// Sum f64 arrays over ranks in rank order on rank 0, then broadcast: the same bits for any
    /// number of ranks *given the same per-rank partial sums*, and reproducible run to run.
    fn all_reduce_sum_f64_ordered(&self, values: &mut [f64]) {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = if let Some(parts) = self.gather_bytes(0, &bytes) {
            let mut acc = vec![0.0f64; values.len()];
            for p in parts {
                for (a, c) in acc.iter_mut().zip(p.chunks_exact(8)) {
                    *a += f64::from_le_bytes(c.try_into().expect("8 bytes"));
                }
            }
            acc.iter().flat_map(|v| v.to_le_bytes()).collect()
        } else {
            vec![]
        };
        self.broadcast_bytes(0, &mut out);
        for (v, c) in values.iter_mut().zip(out.chunks_exact(8)) {
            *v = f64::from_le_bytes(c.try_into().expect("8 bytes"));
        }
    }

    /// Run `f` on `root` only and broadcast its result, so that every rank returns the same `Ok` or
    /// the same `Err` (ranks agree before they fail). The error travels as its message.
    ///
    /// # Errors
    /// [`DistError::Rank`] carrying root's error message, on every rank.
    fn on_root_then_broadcast<T, E, F>(&self, root: usize, f: F) -> Result<T, DistError>
    where
        T: Serialize + DeserializeOwned,
        E: std::fmt::Display,
        F: FnOnce() -> Result<T, E>,
    {
        let local: Option<Result<T, String>> = (self.rank() == root).then(|| f().map_err(|e| e.to_string()));
        let shared: Result<T, String> = self.broadcast_value(root, local.as_ref())?;
        shared.map_err(|message| DistError::Rank { rank: root, message })
    }

    /// The one way ranks agree before they fail, when every rank does its own part of the work:
    /// each rank passes its own result, and every rank returns its value only if no rank failed;
    /// otherwise every rank returns the same error, listing each failed rank's message (`rank r:
    /// ...`). Collective: call it on every rank, also after a local failure, and never return
    /// between two collectives without it. (When one rank does the work, use
    /// [`CommExt::on_root_then_broadcast`].)
    ///
    /// # Errors
    /// [`DistError::Failed`] on every rank when any rank failed; [`DistError::Decode`].
    fn agree<T, E: std::fmt::Display>(&self, local: Result<T, E>) -> Result<T, DistError> {
        let mine: Option<String> = local.as_ref().err().map(|e| format!("{e:#}"));
        let all = self.all_gather_bytes(&serde_json::to_vec(&mine).expect("a string serialises"));
        let mut failed = vec![];
        for (rank, part) in all.iter().enumerate() {
            let m: Option<String> =
                serde_json::from_slice(part).map_err(|e| DistError::Decode { rank, message: e.to_string() })?;
            if let Some(m) = m {
                failed.push(if self.size() > 1 { format!("rank {rank}: {m}") } else { m });
            }
        }
        match local {
            Ok(v) if failed.is_empty() => Ok(v),
            _ => Err(DistError::Failed { message: failed.join("; ") }),
        }
    }
}

impl<C: Comm + ?Sized> CommExt for C {}

/// A decode error in words: JSON carries a NaN or infinity as null, the usual cause of
/// "invalid type: null, expected f64" (a bug: the sender must send such numbers as bits).
fn decode_hint(e: serde_json::Error) -> String {
    let m = e.to_string();
    if m.contains("invalid type: null") {
        format!("{m} (a NaN or infinite number sent as JSON null)")
    } else {
        m
    }
}

/// Install a panic hook that prints the rank and aborts the whole job, so a panic on one rank does
/// not leave the others waiting in a collective forever.
pub fn install_panic_abort(rank: usize, size: usize) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("tessera: rank {rank} of {size} panicked; aborting the job");
        default(info);
        if size > 1 {
            #[cfg(feature = "mpi")]
            mpi::abort_world(70);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_collectives_are_identities() {
        let c = SerialComm;
        let mut v = [1.5, 2.5];
        c.all_reduce_sum_f64_ordered(&mut v);
        assert_eq!(v, [1.5, 2.5]);
        let x: Vec<u32> = c.broadcast_value(0, Some(&vec![1u32, 2, 3])).unwrap();
        assert_eq!(x, vec![1, 2, 3]);
        assert_eq!(c.gather_values(0, &7u8).unwrap(), Some(vec![7u8]));
        let r = c.exchange(vec![(0, vec![1, 2]), (0, vec![3])]);
        assert_eq!(r, vec![(0, vec![1, 2, 3])]);
        let e = c.on_root_then_broadcast::<u8, String, _>(0, || Err("boom".to_string())).unwrap_err();
        assert!(e.to_string().contains("rank 0: boom"));
        assert_eq!(c.agree(Ok::<u8, String>(7)).unwrap(), 7);
        assert_eq!(c.agree(Err::<u8, _>("bad")).unwrap_err().to_string(), "bad");
        assert_eq!(c.split(3).size(), 1);
    }

    #[test]
    fn groups_are_contiguous_and_cover_every_rank() {
        // 7 ranks in 3 groups: 3 + 2 + 2
        let got: Vec<(usize, usize, usize)> = (0..7).map(|r| group_of(r, 7, 3)).collect();
        assert_eq!(got[0], (0, 0, 3));
        assert_eq!(got[2], (0, 0, 3));
        assert_eq!(got[3], (1, 3, 2));
        assert_eq!(got[6], (2, 5, 2));
        for size in 1..9 {
            for groups in 1..=size {
                let mut count = vec![0; groups];
                for r in 0..size {
                    let (g, first, n) = group_of(r, size, groups);
                    assert!(r >= first && r < first + n);
                    count[g] += 1;
                }
                assert!(count.iter().all(|&c| c == size / groups || c == size / groups + 1), "{count:?}");
            }
        }
    }
}
