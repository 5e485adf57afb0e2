//! The simulated device: device memory kept in host memory, with a hard capacity and faults.
//!
//! It is a real backend, not a mock: allocations really take memory and count against a fixed
//! capacity, writes and reads really copy, a flipped bit really changes what verification reads,
//! a lost device really refuses everything after. It lets the whole actor system — seal, verify,
//! fail-closed, release, supervision — run and be tested on machines without a GPU.
//!
//! Memory moves by ownership, as the backend trait describes: a fresh allocation's bytes are a
//! `Vec<u8>` that is lent to the uploader and given back; once sealed they are frozen in an
//! `Arc<Vec<u8>>` that readers share read-only (no lock anywhere). A reader that is still
//! hashing keeps the bytes alive even if the owner frees them (the `GpuActor` additionally
//! defers frees until in-flight verifications finish, which is what a real device needs).
//! Fault injection on sealed memory copies on write if a reader holds it, so a verification
//! already running keeps seeing the bytes it started with.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rayon::prelude::*;

use super::{
    AllocationId, BackendError, BackendKind, DeviceAddress, DeviceBackend, DeviceIdentity,
    DeviceReader, DeviceUpload,
};
use crate::seal::merkle::{Hash, chunk_range, leaf_hash};
use crate::types::Fault;

/// Base of the simulated device address space (never printed; exists so `execute` closures get
/// a stable, per-allocation address like they would on CUDA).
const SIM_ADDRESS_BASE: u64 = 0x7f00_0000_0000;

/// Faults shared between the device and the readers it handed out.
#[derive(Default)]
struct SharedFaults {
    lost: AtomicBool,
    millis_per_read: AtomicU64,
}

impl SharedFaults {
    fn check(&self) -> Result<(), BackendError> {
        if self.lost.load(Ordering::Acquire) {
            return Err(BackendError::DeviceLost);
        }
        let ms = self.millis_per_read.load(Ordering::Relaxed);
        if ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
        Ok(())
    }
}

/// Where one allocation's bytes are.
enum Memory {
    /// Allocated, not yet lent out or sealed.
    Fresh(Vec<u8>),
    /// Lent to an uploader ([`SimUpload`]); the bytes are with it.
    Lent,
    /// Sealed: read-only, shared with readers.
    Sealed(Arc<Vec<u8>>),
}

struct SimAllocation {
    /// Simulated address of the shard's first byte (the allocation's start plus `lead`).
    addr: u64,
    /// The shard's length: what `memory` holds.
    len: u64,
    /// Padding in front of the shard: counted as used device memory, never materialised.
    lead: u64,
    memory: Memory,
}

/// One simulated device.
pub struct SimDevice {
    index: u32,
    capacity: u64,
    used: u64,
    next_id: u64,
    next_addr: u64,
    allocations: HashMap<AllocationId, SimAllocation>,
    /// Freed buffers kept for reuse, like a device's caching allocator: once touched, simulated
    /// device memory stays resident, so a new allocation does not pay host page faults that a
    /// real device never would. Cached plus live buffers never exceed `capacity`.
    cached: Vec<Vec<u8>>,
    /// Freed sealed memory that a reader was still holding when it was freed, with the lead
    /// padding of its allocation. Like memory a real device frees only once the work queued
    /// on it is done, it still counts against the device's free memory (padding included)
    /// until the last reader lets go; then it is reclaimed into the cache.
    parked: Vec<(Arc<Vec<u8>>, u64)>,
    fail_next_alloc: bool,
    faults: Arc<SharedFaults>,
}

impl SimDevice {
    /// A device with `capacity` bytes of memory.
    pub fn new(index: u32, capacity: u64) -> Self {
        Self {
            index,
            capacity,
            used: 0,
            next_id: 1,
            next_addr: SIM_ADDRESS_BASE,
            allocations: HashMap::new(),
            cached: Vec::new(),
            parked: Vec::new(),
            fail_next_alloc: false,
            faults: Arc::new(SharedFaults::default()),
        }
    }

    fn live(&self) -> Result<(), BackendError> {
        if self.faults.lost.load(Ordering::Acquire) {
            Err(BackendError::DeviceLost)
        } else {
            Ok(())
        }
    }

    /// A cached buffer of exactly `n` bytes (the common case: the same shard sealed again). Its
    /// old contents are not cleared — device memory is not zeroed either — and every byte is
    /// overwritten by the upload before a seal is made. Without an exact fit the cache is
    /// emptied, so host memory never exceeds the device's capacity: cached plus live buffers
    /// were all live at once before, and fresh memory is only taken once the cache is empty.
    fn take_cached(&mut self, n: usize) -> Option<Vec<u8>> {
        match self.cached.iter().position(|b| b.len() == n) {
            Some(i) => Some(self.cached.swap_remove(i)),
            None => {
                self.cached.clear();
                None
            }
        }
    }

    /// Bytes freed by the owner but still held by a reader.
    fn parked_bytes(&self) -> u64 {
        self.parked
            .iter()
            .filter(|(b, _)| Arc::strong_count(b) > 1)
            .map(|(b, lead)| (b.len() as u64).saturating_add(*lead))
            .fold(0u64, u64::saturating_add)
    }

    /// Moves parked memory whose readers are all gone into the cache.
    fn reclaim_parked(&mut self) {
        for (bytes, lead) in std::mem::take(&mut self.parked) {
            match Arc::try_unwrap(bytes) {
                Ok(bytes) => self.cached.push(bytes),
                Err(still_read) => self.parked.push((still_read, lead)),
            }
        }
    }

    /// Device memory not held by live allocations or by readers of freed ones.
    fn unheld(&self) -> u64 {
        self.capacity
            .saturating_sub(self.used)
            .saturating_sub(self.parked_bytes())
    }

    fn allocation(&self, id: AllocationId) -> Result<&SimAllocation, BackendError> {
        self.allocations
            .get(&id)
            .ok_or(BackendError::UnknownAllocation)
    }

    fn allocation_mut(&mut self, id: AllocationId) -> Result<&mut SimAllocation, BackendError> {
        self.allocations
            .get_mut(&id)
            .ok_or(BackendError::UnknownAllocation)
    }
}

fn range(offset: u64, len: usize, size: usize) -> Result<std::ops::Range<usize>, BackendError> {
    let err = || BackendError::OutOfRange {
        offset,
        len: len as u64,
        size: size as u64,
    };
    let start = usize::try_from(offset).map_err(|_| err())?;
    let end = start.checked_add(len).ok_or_else(err)?;
    if end > size {
        return Err(err());
    }
    Ok(start..end)
}

impl DeviceBackend for SimDevice {
    fn identity(&self) -> DeviceIdentity {
        DeviceIdentity {
            index: self.index,
            name: format!("simulated device {}", self.index),
            uuid: None,
            backend: BackendKind::Simulated,
            total_bytes: self.capacity,
            integrated: false,
        }
    }

    fn free_bytes(&self) -> Result<u64, BackendError> {
        self.live()?;
        Ok(self.unheld())
    }

    fn allocate(&mut self, len: u64, lead: u64) -> Result<AllocationId, BackendError> {
        self.live()?;
        if std::mem::take(&mut self.fail_next_alloc) {
            return Err(BackendError::AllocationFailed(
                "injected allocation failure".into(),
            ));
        }
        self.reclaim_parked();
        let available = self.unheld();
        let total = len.checked_add(lead).ok_or(BackendError::OutOfMemory {
            needed: u64::MAX,
            available,
        })?;
        if total > available {
            return Err(BackendError::OutOfMemory {
                needed: total,
                available,
            });
        }
        let n = usize::try_from(len).map_err(|_| {
            BackendError::AllocationFailed("size exceeds host address space".into())
        })?;
        // `vec![0; n]` asks the allocator for zeroed memory (calloc/mmap), so the pages are
        // touched only when the shard is uploaded — like a device allocation, allocating costs
        // nothing per byte. Capacity was checked above, so this stays within the configured size.
        let bytes = self.take_cached(n).unwrap_or_else(|| vec![0u8; n]);
        let id = AllocationId(self.next_id);
        self.next_id = self.next_id.saturating_add(1);
        // Keep simulated allocations 256-byte aligned like cuMemAlloc's (the base and every
        // step are multiples of 256), each its own range with a gap before the next; the shard
        // starts `lead` bytes in.
        let start = self.next_addr;
        self.next_addr = start
            .saturating_add(total.div_ceil(256).saturating_mul(256))
            .saturating_add(256);
        self.used = self.used.saturating_add(total);
        let allocation = SimAllocation {
            addr: start.saturating_add(lead),
            len,
            lead,
            memory: Memory::Fresh(bytes),
        };
        self.allocations.insert(id, allocation);
        Ok(id)
    }

    fn begin_upload(&mut self, id: AllocationId) -> Result<Box<dyn DeviceUpload>, BackendError> {
        self.live()?;
        let faults = Arc::clone(&self.faults);
        let a = self.allocation_mut(id)?;
        match std::mem::replace(&mut a.memory, Memory::Lent) {
            Memory::Fresh(bytes) => Ok(Box::new(SimUpload { bytes, faults })),
            other => {
                a.memory = other;
                Err(BackendError::Unsupported(
                    "only a fresh allocation can be uploaded to".into(),
                ))
            }
        }
    }

    fn finish_upload(
        &mut self,
        id: AllocationId,
        upload: Box<dyn DeviceUpload>,
    ) -> Result<(), BackendError> {
        self.live()?;
        let upload = upload
            .into_any()
            .downcast::<SimUpload>()
            .map_err(|_| BackendError::Unsupported("an upload from another backend".into()))?;
        let a = self.allocation_mut(id)?;
        if !matches!(a.memory, Memory::Lent) || upload.bytes.len() as u64 != a.len {
            return Err(BackendError::Unsupported(
                "this upload does not belong to this allocation".into(),
            ));
        }
        a.memory = Memory::Sealed(Arc::new(upload.bytes));
        Ok(())
    }

    fn reader(&self, id: AllocationId) -> Result<Arc<dyn DeviceReader>, BackendError> {
        self.live()?;
        match &self.allocation(id)?.memory {
            Memory::Sealed(bytes) => Ok(Arc::new(SimReader {
                bytes: Arc::clone(bytes),
                faults: Arc::clone(&self.faults),
            })),
            Memory::Fresh(_) | Memory::Lent => Err(BackendError::Unsupported(
                "the allocation is not sealed yet".into(),
            )),
        }
    }

    fn device_address(&self, id: AllocationId) -> Result<DeviceAddress, BackendError> {
        self.live()?;
        Ok(DeviceAddress::new(self.allocation(id)?.addr))
    }

    fn free(&mut self, id: AllocationId) -> Result<u64, BackendError> {
        // Freeing works even on a lost device: the memory is gone either way, and the
        // accounting must return to its starting value.
        let a = self
            .allocations
            .remove(&id)
            .ok_or(BackendError::UnknownAllocation)?;
        let total = a.len.saturating_add(a.lead);
        self.used = self.used.saturating_sub(total);
        // Keep the memory for reuse; if a reader still holds it, park it (still counted as
        // held) until the reader lets go. An uploader's memory is dropped with its handle.
        match a.memory {
            Memory::Fresh(bytes) => self.cached.push(bytes),
            Memory::Sealed(bytes) => match Arc::try_unwrap(bytes) {
                Ok(bytes) => self.cached.push(bytes),
                Err(still_read) => self.parked.push((still_read, a.lead)),
            },
            Memory::Lent => {}
        }
        Ok(total)
    }

    fn inject_fault(
        &mut self,
        fault: &Fault,
        target: Option<AllocationId>,
    ) -> Result<(), BackendError> {
        match *fault {
            Fault::FlipBits { offset, mask, .. } => {
                self.live()?;
                let allocation = target.ok_or(BackendError::UnknownAllocation)?;
                let bytes: &mut Vec<u8> = match &mut self.allocation_mut(allocation)?.memory {
                    Memory::Fresh(bytes) => bytes,
                    // Copy on write if a reader still holds the sealed bytes.
                    Memory::Sealed(bytes) => Arc::make_mut(bytes),
                    Memory::Lent => {
                        return Err(BackendError::Unsupported(
                            "the allocation is being uploaded".into(),
                        ));
                    }
                };
                let r = range(offset, 1, bytes.len())?;
                if let Some(b) = bytes.get_mut(r.start) {
                    *b ^= mask;
                }
                Ok(())
            }
            Fault::FailNextAlloc => {
                self.fail_next_alloc = true;
                Ok(())
            }
            Fault::LoseDevice => {
                self.faults.lost.store(true, Ordering::Release);
                Ok(())
            }
            Fault::SlowDevice { millis_per_read } => {
                self.faults
                    .millis_per_read
                    .store(millis_per_read, Ordering::Relaxed);
                Ok(())
            }
            // The device actor crashes itself; the memory has nothing to do.
            Fault::CrashActor => Err(BackendError::Unsupported(
                "an actor crash is injected by the device actor, not its memory".into(),
            )),
        }
    }
}

/// The memory of one simulated allocation, lent out for its upload (see
/// [`DeviceBackend::begin_upload`]).
struct SimUpload {
    bytes: Vec<u8>,
    faults: Arc<SharedFaults>,
}

impl DeviceUpload for SimUpload {
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        if self.faults.lost.load(Ordering::Acquire) {
            return Err(BackendError::DeviceLost);
        }
        let r = range(offset, data.len(), self.bytes.len())?;
        self.bytes
            .get_mut(r)
            .ok_or(BackendError::UnknownAllocation)?
            .copy_from_slice(data);
        Ok(())
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

/// A read-only view of one sealed simulated allocation. Hashes in place (no copy back), the
/// way a device-side hashing kernel would on CUDA.
struct SimReader {
    bytes: Arc<Vec<u8>>,
    faults: Arc<SharedFaults>,
}

impl SimReader {
    /// Every read of device memory goes through here, once per read operation: it applies the
    /// read-side faults (a lost device refuses, a slow one sleeps) and hands out the bytes
    /// `offset .. offset + len`.
    fn device_read(&self, offset: u64, len: usize) -> Result<&[u8], BackendError> {
        self.faults.check()?;
        let r = range(offset, len, self.bytes.len())?;
        self.bytes.get(r).ok_or(BackendError::UnknownAllocation)
    }

    /// The whole allocation, read once (see [`SimReader::device_read`]).
    fn device_read_all(&self) -> Result<&[u8], BackendError> {
        self.device_read(0, self.bytes.len())
    }
}

impl DeviceReader for SimReader {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        out.copy_from_slice(self.device_read(offset, out.len())?);
        Ok(())
    }

    fn leaf_hashes(&self, chunk_size: u64, indices: &[u64]) -> Result<Vec<Hash>, BackendError> {
        let bytes = self.device_read_all()?;
        let size = self.len();
        indices
            .par_iter()
            .map(|&i| {
                let (off, n) =
                    chunk_range(i, chunk_size, size).ok_or(BackendError::OutOfRange {
                        offset: i.saturating_mul(chunk_size),
                        len: chunk_size,
                        size,
                    })?;
                let r = range(off, usize::try_from(n).unwrap_or(usize::MAX), bytes.len())?;
                Ok(leaf_hash(
                    bytes.get(r).ok_or(BackendError::UnknownAllocation)?,
                ))
            })
            .collect()
    }

    fn all_leaf_hashes(&self, chunk_size: u64) -> Result<Vec<Hash>, BackendError> {
        let bytes = self.device_read_all()?;
        let chunk = usize::try_from(chunk_size)
            .map_err(|_| BackendError::Unsupported("chunk too large".into()))?;
        if chunk == 0 {
            return Ok(Vec::new());
        }
        Ok(bytes.par_chunks(chunk).map(leaf_hash).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::merkle::leaf_hashes_sequential;

    fn upload(d: &mut SimDevice, a: AllocationId, data: &[u8]) {
        let mut up = d.begin_upload(a).unwrap();
        up.write(0, data).unwrap();
        d.finish_upload(a, up).unwrap();
    }

    #[test]
    fn capacity_is_enforced_and_returned() {
        let mut d = SimDevice::new(0, 10_000);
        let a = d.allocate(6_000, 0).unwrap();
        assert_eq!(d.free_bytes().unwrap(), 4_000);
        assert_eq!(
            d.allocate(5_000, 0),
            Err(BackendError::OutOfMemory {
                needed: 5_000,
                available: 4_000
            })
        );
        assert_eq!(d.free(a).unwrap(), 6_000);
        assert_eq!(d.free_bytes().unwrap(), 10_000);
        assert_eq!(d.free(a), Err(BackendError::UnknownAllocation));
    }

    #[test]
    fn freed_memory_is_reused_only_when_it_fits_exactly() {
        let mut d = SimDevice::new(0, 10_000);
        let a = d.allocate(6_000, 0).unwrap();
        upload(&mut d, a, &[7u8; 6_000]);
        d.free(a).unwrap();
        assert_eq!(d.cached.len(), 1);
        let b = d.allocate(6_000, 0).unwrap(); // reused
        assert!(d.cached.is_empty());
        d.free(b).unwrap();
        let _c = d.allocate(3_000, 0).unwrap(); // no exact fit: the cache is emptied first
        assert!(d.cached.is_empty());
        assert_eq!(d.free_bytes().unwrap(), 7_000);
    }

    #[test]
    fn write_read_flip_and_hash() {
        let mut d = SimDevice::new(0, 1 << 20);
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let a = d.allocate(data.len() as u64, 0).unwrap();
        assert!(d.reader(a).is_err(), "not readable before it is sealed");
        let mut up = d.begin_upload(a).unwrap();
        assert!(d.begin_upload(a).is_err(), "lent once");
        up.write(0, &data).unwrap();
        assert!(matches!(
            up.write(19_999, &[1, 2]),
            Err(BackendError::OutOfRange { .. })
        ));
        d.finish_upload(a, up).unwrap();
        let r = d.reader(a).unwrap();
        let mut back = vec![0u8; 100];
        r.read(4_000, &mut back).unwrap();
        assert_eq!(&back[..], &data[4_000..4_100]);
        assert_eq!(
            r.all_leaf_hashes(4096).unwrap(),
            leaf_hashes_sequential(&data, 4096)
        );
        d.inject_fault(
            &Fault::FlipBits {
                shard_id: "s".into(),
                offset: 9_000,
                mask: 4,
            },
            Some(a),
        )
        .unwrap();
        // A reader that was already hashing keeps the bytes it started with (copy on write);
        // a new reader sees the flip.
        let before = r.leaf_hashes(4096, &[2]).unwrap();
        assert_eq!(before[0], leaf_hashes_sequential(&data, 4096)[2]);
        let h = d.reader(a).unwrap().leaf_hashes(4096, &[2, 4]).unwrap();
        assert_ne!(h[0], leaf_hashes_sequential(&data, 4096)[2]);
        assert_eq!(h[1], leaf_hashes_sequential(&data, 4096)[4]);
    }

    #[test]
    fn faults_fail_alloc_and_lose_device() {
        let mut d = SimDevice::new(0, 1 << 20);
        d.inject_fault(&Fault::FailNextAlloc, None).unwrap();
        assert!(matches!(
            d.allocate(10, 0),
            Err(BackendError::AllocationFailed(_))
        ));
        let a = d.allocate(10, 0).unwrap();
        upload(&mut d, a, &[1; 10]);
        let r = d.reader(a).unwrap();
        d.inject_fault(&Fault::LoseDevice, None).unwrap();
        assert_eq!(d.allocate(10, 0), Err(BackendError::DeviceLost));
        assert_eq!(r.all_leaf_hashes(4096), Err(BackendError::DeviceLost));
        assert_eq!(d.free(a).unwrap(), 10);
        assert_eq!(d.capacity, 1 << 20);
        assert_eq!(d.used, 0);
    }

    /// The reader/free contract: freeing memory a verification is still reading never pulls it
    /// from under the reader; the memory stays held (and counted as held by the device) until
    /// the reader lets go, as on a real device whose free waits for queued work.
    #[test]
    fn a_freed_allocation_stays_held_until_its_last_reader_lets_go() {
        let mut d = SimDevice::new(0, 1 << 16);
        let a = d.allocate(1 << 15, 0).unwrap();
        let data: Vec<u8> = (0..1u32 << 15).map(|i| (i % 251) as u8).collect();
        upload(&mut d, a, &data);
        let reader = d.reader(a).unwrap();
        assert_eq!(d.free(a).unwrap(), 1 << 15);
        // The owner's books are back, but the device still holds the reader's bytes.
        assert_eq!(d.used, 0);
        assert_eq!(d.free_bytes().unwrap(), 1 << 15);
        assert!(matches!(
            d.allocate(1 << 16, 0),
            Err(BackendError::OutOfMemory { .. })
        ));
        // The reader still sees exactly what was sealed.
        let mut back = vec![0u8; 1 << 15];
        reader.read(0, &mut back).unwrap();
        assert_eq!(back, data);
        drop(reader);
        assert_eq!(d.free_bytes().unwrap(), 1 << 16);
        let b = d.allocate(1 << 16, 0).unwrap();
        assert_eq!(d.free(b).unwrap(), 1 << 16);
    }

    /// A device dropped (its actor crashed or shut down) while a reader is hashing: the reader
    /// keeps working on the bytes it was given.
    #[test]
    fn a_reader_outlives_the_device_that_handed_it_out() {
        let mut d = SimDevice::new(0, 1 << 16);
        let a = d.allocate(4096, 0).unwrap();
        upload(&mut d, a, &[7u8; 4096]);
        let reader = d.reader(a).unwrap();
        drop(d);
        let mut back = [0u8; 4096];
        reader.read(0, &mut back).unwrap();
        assert_eq!(back, [7u8; 4096]);
        assert_eq!(
            reader.all_leaf_hashes(4096).unwrap(),
            vec![crate::seal::merkle::leaf_hash(&[7u8; 4096])]
        );
    }

    /// Lead padding: counted as used (also while a reader holds freed memory), never seen by
    /// the shard's offsets; the shard starts `lead` bytes into a 256-byte aligned allocation.
    #[test]
    fn lead_padding_is_counted_but_invisible() {
        let mut d = SimDevice::new(0, 1 << 16);
        let data: Vec<u8> = (0..5_000u32).map(|i| (i % 251) as u8).collect();
        let a = d.allocate(5_000, 96).unwrap();
        assert_eq!(d.free_bytes().unwrap(), (1 << 16) - 5_096);
        assert_eq!(d.device_address(a).unwrap().raw() % 256, 96);
        upload(&mut d, a, &data);
        let r = d.reader(a).unwrap();
        assert_eq!(r.len(), 5_000);
        let mut first = [0u8; 4];
        r.read(0, &mut first).unwrap();
        assert_eq!(first, data[..4]);
        assert!(r.read(4_999, &mut first).is_err());
        d.inject_fault(
            &Fault::FlipBits {
                shard_id: "s".into(),
                offset: 0,
                mask: 1,
            },
            Some(a),
        )
        .unwrap();
        // (The old reader keeps the bytes it had: copy on write.)
        let r = d.reader(a).unwrap();
        let mut flipped = [0u8; 1];
        r.read(0, &mut flipped).unwrap();
        assert_eq!(flipped[0], data[0] ^ 1);
        // Another allocation starts on the next 256-byte boundary past this one.
        let b = d.allocate(10, 0).unwrap();
        let (pa, pb) = (
            d.device_address(a).unwrap().raw(),
            d.device_address(b).unwrap().raw(),
        );
        assert_eq!(pb % 256, 0);
        assert!(pb >= pa + 5_000);
        assert_eq!(d.free(b).unwrap(), 10);
        // Freed while read: the padding stays held with the bytes.
        assert_eq!(d.free(a).unwrap(), 5_096);
        assert_eq!(d.free_bytes().unwrap(), (1 << 16) - 5_096);
        drop(r);
        assert_eq!(d.free_bytes().unwrap(), 1 << 16);
        assert!(matches!(
            d.allocate(1 << 16, 1),
            Err(BackendError::OutOfMemory { needed, .. }) if needed == (1 << 16) + 1
        ));
        assert!(matches!(
            d.allocate(u64::MAX, 1),
            Err(BackendError::OutOfMemory { .. })
        ));
    }

    #[test]
    fn pointers_are_not_printed() {
        let mut d = SimDevice::new(0, 1 << 20);
        let a = d.allocate(10, 0).unwrap();
        let p = d.device_address(a).unwrap();
        let dbg = format!("{p:?}");
        assert!(!dbg.contains(&format!("{:x}", p.raw())));
        assert!(!dbg.contains(&p.raw().to_string()));
    }
}
