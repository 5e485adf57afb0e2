//! [`DeviceView`]: what an `execute` closure sees of one shard's device memory.
//!
//! The device actor builds a view for the length of one closure call, after the shard was
//! verified, and the closure reaches the weights only through it: their address, for launching
//! work on them, and reads back to the host.

use std::fmt;
use std::sync::Arc;

use super::{DeviceAddress, DevicePtr, DeviceReader};
use crate::error::VramError;

/// What an `execute` closure sees: the shard's device memory, verified just before the call.
pub struct DeviceView {
    pub(crate) gpu_device: u32,
    pub(crate) shard_id: String,
    pub(crate) len: u64,
    pub(crate) address: DeviceAddress,
    pub(crate) reader: Arc<dyn DeviceReader>,
}

impl DeviceView {
    /// Size of the shard in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the shard is empty (never, for a sealed shard).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device index.
    pub fn gpu_device(&self) -> u32 {
        self.gpu_device
    }

    /// The shard id.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The weights' device address, for kernel launches. Never log it. It borrows this view,
    /// so it cannot outlive the closure call: after it returns the shard may be released or
    /// quarantined. Work launched on it must finish before the closure returns (synchronise
    /// your stream); a release waits for the device to finish queued work before freeing.
    pub fn device_ptr(&self) -> DevicePtr<'_> {
        DevicePtr::new(self.address)
    }

    /// Copies `buf.len()` bytes at `offset` from device memory into `buf`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VramError> {
        self.reader
            .read(offset, buf)
            .map_err(|e| e.into_vram(self.gpu_device))
    }
}

impl fmt::Debug for DeviceView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceView")
            .field("gpu_device", &self.gpu_device)
            .field("shard_id", &self.shard_id)
            .field("len", &self.len)
            .field("ptr", &self.address)
            .finish()
    }
}
