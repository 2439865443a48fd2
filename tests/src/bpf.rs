//! Private BPF roots for tests, and running the pinned programs on crafted
//! frames with BPF_PROG_TEST_RUN.

use std::path::{Path, PathBuf};

use aya::programs::{TestRun, TestRunOptions};
use margay_ebpf::node::Node;

use crate::netns::unique_name;

/// A BPF root of the test's own under /sys/fs/bpf, removed with all its
/// pins and its lock files when dropped (which also detaches the programs it pinned links for).
pub struct BpfRoot {
    path: PathBuf,
}

impl BpfRoot {
    pub fn new() -> BpfRoot {
        BpfRoot {
            path: PathBuf::from("/sys/fs/bpf").join(unique_name("mgt-")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for BpfRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BpfRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        let _ = margay_ebpf::paths::remove_run_files(&self.path);
    }
}

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// `struct __sk_buff` as BPF_PROG_TEST_RUN takes it; only the fields tests
/// set are named.
pub fn skb_context(ingress_ifindex: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; 192];
    ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes()); // ingress_ifindex
    ctx
}

/// Runs program `name` of `node` once on `frame` and returns its verdict.
/// The packet is on the loopback device (ifindex 1), so tests register
/// their endpoint at ifindex 1. `ingress_ifindex` 0 means "sent by the node".
pub fn run(node: &Node, name: &str, frame: &[u8], ingress_ifindex: u32) -> u32 {
    run_repeat(node, name, frame, ingress_ifindex, 1).0
}

/// Runs `repeat` times; returns the verdict and the kernel's mean ns per run.
pub fn run_repeat(
    node: &Node,
    name: &str,
    frame: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
) -> (u32, f64) {
    let (verdict, ns, _) = test_run(node, name, frame, ingress_ifindex, repeat);
    (verdict, ns)
}

/// Runs once; returns the verdict and the frame as the program left it.
pub fn run_output(node: &Node, name: &str, frame: &[u8], ingress_ifindex: u32) -> (u32, Vec<u8>) {
    let (verdict, _, out) = test_run(node, name, frame, ingress_ifindex, 1);
    (verdict, out)
}

fn test_run(
    node: &Node,
    name: &str,
    frame: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
) -> (u32, f64, Vec<u8>) {
    let prog = node
        .program(name)
        .unwrap_or_else(|| panic!("no program {name}"));
    let ctx = skb_context(ingress_ifindex);
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        repeat,
        ..TestRunOptions::default()
    };
    let r = prog
        .test_run(opts)
        .unwrap_or_else(|e| panic!("test run of {name}: {e}"));
    out.truncate(r.data_size_out as usize);
    (r.return_value, r.duration.as_nanos() as f64, out)
}

/// Makes the programs pinned at `root` read as another build's: the next
/// `Node::open` loads this build's over them, as after an upgrade.
pub fn pretend_another_build_is_pinned(root: &Path) {
    let mut config = margay_ebpf::maps::config(root).unwrap();
    let current = config.get(&0, 0).unwrap();
    config
        .set(
            0,
            margay_ebpf::abi::Config {
                object_id: 0xdead_beef,
                ..current
            },
            0,
        )
        .unwrap();
}

/// BPF_MAP_TYPE_HASH and BPF_MAP_TYPE_LRU_HASH, for [`pin_hash_map`].
pub const HASH: u32 = 1;
pub const LRU_HASH: u32 = 9;

/// Creates a BPF hash map of `map_type` ([`HASH`], [`LRU_HASH`]) and pins
/// it at `path`: a stand-in for a map some other build of Margay left
/// behind.
pub fn pin_hash_map(path: &Path, map_type: u32, key_size: u32, value_size: u32, max_entries: u32) {
    use std::os::unix::ffi::OsStrExt;
    // union bpf_attr, the prefixes BPF_MAP_CREATE and BPF_OBJ_PIN read.
    let mut create = [0u8; 128];
    create[0..4].copy_from_slice(&map_type.to_ne_bytes());
    create[4..8].copy_from_slice(&key_size.to_ne_bytes());
    create[8..12].copy_from_slice(&value_size.to_ne_bytes());
    create[12..16].copy_from_slice(&max_entries.to_ne_bytes());
    // SAFETY: the bpf syscall reads `size` bytes of the attribute buffer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0, /* BPF_MAP_CREATE */
            create.as_ptr(),
            create.len(),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut pin = [0u8; 128];
    pin[0..8].copy_from_slice(&(cpath.as_ptr() as u64).to_ne_bytes());
    pin[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    // SAFETY: as above; `cpath` outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            6, /* BPF_OBJ_PIN */
            pin.as_ptr(),
            pin.len(),
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_OBJ_PIN {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: closing the descriptor we created; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

/// What TestRun itself costs a repetition on `frame` (the syscall's loop,
/// the call into the program, its return): the mean ns per run of a
/// classifier that returns at once, loaded here by hand (two
/// instructions), so benchmarks can show a program's own cost beside it.
pub fn harness_ns(frame: &[u8], repeat: u32) -> f64 {
    // r0 = 0; exit
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = c"GPL";
    let mut load = [0u8; 128];
    load[0..4].copy_from_slice(&3u32.to_ne_bytes()); // BPF_PROG_TYPE_SCHED_CLS
    load[4..8].copy_from_slice(&2u32.to_ne_bytes()); // insn_cnt
    load[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    load[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: the bpf syscall reads `size` bytes of the attribute buffer,
    // whose pointers outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            5, /* BPF_PROG_LOAD */
            load.as_ptr(),
            load.len(),
        )
    };
    assert!(
        fd >= 0,
        "BPF_PROG_LOAD: {}",
        std::io::Error::last_os_error()
    );
    let ctx = skb_context(0);
    let mut test = [0u8; 128];
    test[0..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    test[8..12].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    test[16..24].copy_from_slice(&(frame.as_ptr() as u64).to_ne_bytes());
    test[32..36].copy_from_slice(&repeat.to_ne_bytes());
    test[40..44].copy_from_slice(&(ctx.len() as u32).to_ne_bytes());
    test[48..56].copy_from_slice(&(ctx.as_ptr() as u64).to_ne_bytes());
    // SAFETY: as above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            10, /* BPF_PROG_TEST_RUN */
            test.as_mut_ptr(),
            test.len(),
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the descriptor we created.
    unsafe { libc::close(fd as i32) };
    assert_eq!(rc, 0, "BPF_PROG_TEST_RUN: {err}");
    f64::from(u32::from_ne_bytes(test[36..40].try_into().unwrap()))
}
