//! Compiles every `bpf/*.bpf.c` with Debian's clang-19 into OUT_DIR, and
//! records a fingerprint of each object so a node can tell whether the
//! programs it has pinned are this build's.

use std::path::{Path, PathBuf};
use std::process::Command;

const CLANG: &str = "clang-19";

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = Path::new("bpf");
    let mut ids = String::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(src)
        .expect("ebpf/bpf exists")
        .map(|e| e.expect("readable dir entry").path())
        .collect();
    entries.sort();
    for path in &entries {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-changed=bpf");
    for path in entries
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
    {
        let stem = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".bpf.c")
            .to_string();
        let obj = out.join(format!("{stem}.bpf.o"));
        let status = Command::new(CLANG)
            // -mcpu=v3: 32-bit ALU and jumps (kernel >= 5.1) spare the
            // zero-extending shifts of every 32-bit compare, ~20% of a
            // policy rule's instructions.
            .args(["-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror"])
            .arg("-I/usr/include/x86_64-linux-gnu")
            .arg("-c")
            .arg(path)
            .arg("-o")
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| {
                panic!("{CLANG} could not be run ({e}): install it with `apt-get install clang-19 libbpf-dev`")
            });
        assert!(status.success(), "{CLANG} failed on {}", path.display());
        let bytes = std::fs::read(&obj).expect("object written");
        ids.push_str(&format!(
            "pub const {}_OBJECT_ID: u64 = {:#018x};\n",
            stem.to_uppercase(),
            fnv1a(&bytes)
        ));
    }
    std::fs::write(out.join("object_ids.rs"), ids).expect("OUT_DIR is writable");
}

/// FNV-1a, 64 bit: a fingerprint, not a defence against anyone.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
