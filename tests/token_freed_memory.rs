//! The worker token must not linger in freed heap memory. Reading the token file with
//! `read_to_end` grew a `Vec` step by step and left copies of the token in the blocks it let go
//! (an allocator that inspects freed memory found three). This binary installs such an
//! allocator: every block freed while it is armed is scanned for pieces of the token before it
//! goes back to the system. Reading the token file, starting a worker from it and shutting the
//! worker down must free no block that still holds any 16-byte piece of the token.
//!
//! It is its own test binary because a global allocator is per binary.
#![allow(unsafe_code)] // a global allocator is an unsafe impl, and it reads the blocks it frees
#![allow(clippy::unwrap_used, clippy::indexing_slicing)] // test code fails loudly

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A 64-character token, as `openssl rand -hex 32` writes one.
const TOKEN: &[u8; 64] = b"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
/// Length of the pieces looked for: any copy of a quarter of the token counts.
const PIECE: usize = 16;

static ARMED: AtomicBool = AtomicBool::new(false);
static HITS: AtomicUsize = AtomicUsize::new(0);

/// Forwards to the system allocator and, while armed, checks each freed block for the token.
struct FreedMemoryWatch;

fn holds_token_piece(block: &[u8]) -> bool {
    block
        .windows(PIECE)
        .any(|w| TOKEN.chunks_exact(PIECE).any(|piece| piece == w))
}

// SAFETY: every call forwards to `System` with the caller's arguments unchanged; `dealloc` reads
// the block it is handed (`layout.size()` bytes at `ptr`, still allocated and initialised or
// not) only before giving it back. `realloc` is left to the trait's default (alloc, copy,
// dealloc), so every block a reallocation lets go passes through `dealloc` too.
unsafe impl GlobalAlloc for FreedMemoryWatch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ARMED.load(Ordering::Relaxed) && layout.size() >= PIECE {
            // SAFETY: `ptr` is a live block of `layout.size()` bytes that this allocator handed
            // out (the caller's contract); it is only read, and freed right after. Bytes never
            // written hold whatever the system left there, which is what is being checked.
            let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            if holds_token_piece(block) {
                HITS.fetch_add(1, Ordering::Relaxed);
            }
        }
        // SAFETY: forwarded unchanged; the block came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static WATCH: FreedMemoryWatch = FreedMemoryWatch;

fn token_file(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("worker.token");
    // Wiped before it is freed: the test's own copy must not be what the watch finds later
    // (a freed block is handed out again with its old bytes in whatever the new owner does
    // not overwrite).
    let mut text = zeroize::Zeroizing::new(TOKEN.to_vec());
    text.push(b'\n');
    std::fs::write(&path, text.as_slice()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn the_token_leaves_no_copy_in_freed_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = token_file(dir.path());

    // Reading the file, as `Config::worker_token_file` and the CLI's `--token-file` do.
    ARMED.store(true, Ordering::SeqCst);
    let token = vram_residency::config::read_token_file(&path).unwrap();
    drop(token);
    ARMED.store(false, Ordering::SeqCst);
    assert_eq!(
        HITS.load(Ordering::SeqCst),
        0,
        "reading the token file left copies of the token in freed memory"
    );

    // A whole worker from that file: start, seal, shut down (keys derived, actors started and
    // stopped, the token wiped everywhere it went).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    ARMED.store(true, Ordering::SeqCst);
    rt.block_on(async {
        let system = vram_residency::VramResidency::start(
            vram_residency::Config::simulated(1, 1 << 20)
                .worker_id("worker-freed")
                .chunk_size(4096)
                .worker_token_file(&path),
        )
        .await
        .unwrap();
        let shard = system
            .seal(vram_residency::SealRequest::new(
                "s",
                "m",
                0,
                vec![3u8; 8192],
            ))
            .await
            .unwrap();
        system.release(shard).await.unwrap();
        system.shutdown().await.unwrap();
    });
    drop(rt);
    ARMED.store(false, Ordering::SeqCst);
    assert_eq!(
        HITS.load(Ordering::SeqCst),
        0,
        "a worker started from the token file left copies of the token in freed memory"
    );

    // The check itself sees a copy: a freed block holding the token is counted. (Last, so the
    // block it leaves behind cannot show up in the checks above.)
    let probe = TOKEN.to_vec();
    ARMED.store(true, Ordering::SeqCst);
    drop(std::hint::black_box(probe));
    ARMED.store(false, Ordering::SeqCst);
    assert_eq!(
        HITS.load(Ordering::SeqCst),
        1,
        "the watch must catch a copy"
    );
}
