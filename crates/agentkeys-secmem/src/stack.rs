//! Scrubbing the stack after a key operation.
//!
//! Moving a value in Rust copies its bytes and leaves the old copy where it was: a key
//! expanded on the stack (an Ed25519 `SigningKey`, a cipher's key schedule) is zeroized on
//! drop where it ends up, but copies of it stay in the dead frames below the caller until
//! something overwrites them. That something can be a future built in the same place:
//! its unused state is uninitialized, and `tokio::spawn` copies the whole future into the
//! heap, stale key bytes included, for as long as the task lives (found in the server's
//! memory by `tests/server/e2e.rs`, a task spawned right after a signature).

/// How much stack below the caller is overwritten: more than any key operation of this
/// project uses, in a debug build.
const SCRUB: usize = 32 * 1024;

/// Runs `f`, then overwrites the stack `f` and its callees used (the frames below this
/// one), so no copy of a key they expanded outlives the call there.
#[inline(never)]
pub fn scrubbed<R>(f: impl FnOnce() -> R) -> R {
    let out = beneath_a_cushion(f);
    wipe_below();
    out
}

/// Runs `f` one cushion deeper: the few bytes at the top of [`wipe_below`]'s frame that
/// it cannot write (saved registers, alignment) then face the cushion, not `f`'s frames.
#[inline(never)]
fn beneath_a_cushion<R>(f: impl FnOnce() -> R) -> R {
    let mut cushion = [0u8; 512];
    std::hint::black_box(&mut cushion);
    f()
}

/// A frame as deep as [`SCRUB`], written with volatile stores the compiler cannot drop.
#[inline(never)]
fn wipe_below() {
    let mut area = [0u64; SCRUB / 8];
    zeroize::Zeroize::zeroize(&mut area[..]);
    std::hint::black_box(&mut area);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leaves a marker in a dead frame, as a moved key would.
    #[inline(never)]
    fn leave_marker() -> usize {
        let mut a = [0x5au8; 4096];
        std::hint::black_box(&mut a);
        a.as_ptr() as usize
    }

    /// Reads the dead frame back through /proc/self/mem (no undefined behaviour).
    fn read_at(addr: usize, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt as _;
        let mem = std::fs::File::open("/proc/self/mem").expect("open /proc/self/mem");
        let mut out = vec![0u8; len];
        mem.read_exact_at(&mut out, addr as u64).expect("read");
        out
    }

    #[test]
    fn the_frames_below_are_overwritten() {
        let addr = leave_marker();
        assert!(
            read_at(addr, 4096).iter().filter(|&&b| b == 0x5a).count() > 2048,
            "control: the dead frame still holds the marker"
        );
        let addr = scrubbed(leave_marker);
        // Frames used after the scrub (this test's own calls) write other data there, and
        // an address or length in it can hold a 0x5a byte: what must be gone is the
        // marker, i.e. any run of it.
        let after = read_at(addr, 4096);
        assert!(
            !after.windows(8).any(|w| w.iter().all(|&b| b == 0x5a)),
            "the marker survived the scrub"
        );
    }
}
