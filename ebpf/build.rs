//! Compiles every `bpf/*.bpf.c` with Debian's clang-19 into OUT_DIR, and
//! records a fingerprint of each object so a node can tell whether the
//! programs it has pinned are this build's. Writes the constants of
//! `bpf/abi.h` as Rust (abi_consts.rs, included by src/abi.rs): the header
//! is their one source, so a reason, flag or limit added there cannot be
//! missing or different on the Rust side.

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
            "/// Fingerprint of `bpf/{stem}.bpf.o` as this build compiled it: the\n\
             /// loader records it in map `config` and compares it with the\n\
             /// pinned one, to tell whether the pinned programs are this build's.\n\
             pub const {}_OBJECT_ID: u64 = {:#018x};\n",
            stem.to_uppercase(),
            fnv1a(&bytes)
        ));
    }
    std::fs::write(out.join("object_ids.rs"), ids).expect("OUT_DIR is writable");
    let abi_h = std::fs::read_to_string(src.join("abi.h")).expect("bpf/abi.h is readable");
    std::fs::write(out.join("abi_consts.rs"), abi_consts(&abi_h)).expect("OUT_DIR is writable");
}

/// The Rust type of abi.h constant `name`, by what Rust indexes or stores
/// with it (first matching prefix); u32 for the rest.
const RUST_TYPES: [(&str, &str); 12] = [
    ("DROP_", "usize"),
    ("REASON_", "usize"),
    ("MAX_POLICY_RULES", "usize"),
    ("SVC_FILTER_BITS", "usize"),
    ("CT_", "u8"),
    ("POLICY_", "u8"),
    ("RULE_F_", "u8"),
    ("NAT_FWD", "u8"),
    ("NAT_REV", "u8"),
    ("FLOW_EVENT_", "u8"),
    ("SVC_F_", "u16"),
    ("VNI_", "u64"),
];

/// One constant of abi.h: its name, its value (a C integer expression,
/// which is also Rust's), and its comment ([`line_docs`]).
struct Constant {
    name: String,
    value: String,
    doc: String,
}

/// abi.h's `#define NAME value` constants and enum members as Rust
/// constants, plus the names userspace shows for two enums:
/// `DROP_REASONS` (each drop reason's comment begins `name:`) and
/// `CT_STATES` (the state's name, lower case, dashed).
fn abi_consts(abi_h: &str) -> String {
    let mut constants = Vec::new();
    let mut reasons = Vec::new();
    let mut states = Vec::new();
    let mut in_enum: Option<(String, u64)> = None;
    let docs = line_docs(abi_h);
    for (line, doc) in abi_h.lines().zip(docs) {
        let (code, comment) = match line.split_once("/*") {
            Some((code, rest)) => (code.trim(), rest.trim_end_matches("*/").trim()),
            None => (line.trim(), ""),
        };
        if let Some(name) = code.strip_prefix("enum ").and_then(|r| r.strip_suffix('{')) {
            in_enum = Some((name.trim().to_string(), 0));
            continue;
        }
        if let Some((enum_name, next)) = in_enum.as_mut() {
            if code.starts_with('}') {
                in_enum = None;
                continue;
            }
            let member = code.trim_end_matches(',');
            // A comment's continuation lines.
            if member.is_empty() || member.starts_with('*') {
                continue;
            }
            let (name, value) = match member.split_once('=') {
                Some((name, value)) => (name.trim(), parse_int(value.trim())),
                None => (member, *next),
            };
            assert_eq!(
                value, *next,
                "abi.h: enum {enum_name}: {name} is not numbered in order"
            );
            *next += 1;
            match enum_name.as_str() {
                "drop_reason" if name != "DROP_REASON_MAX" => {
                    let label = comment
                        .split_once(':')
                        .map(|(label, _)| label.trim())
                        .filter(|label| !label.is_empty() && !label.contains(' '))
                        .unwrap_or_else(|| panic!("abi.h: {name}'s comment must begin `name:`"));
                    reasons.push(label.to_string());
                }
                "ct_state" => {
                    let label = name
                        .trim_start_matches("CT_")
                        .to_lowercase()
                        .replace('_', "-");
                    states.push(label);
                }
                _ => {}
            }
            constants.push(Constant {
                name: name.to_string(),
                value: value.to_string(),
                doc,
            });
            continue;
        }
        let Some(define) = code.strip_prefix("#define ") else {
            continue;
        };
        let (name, value) = define
            .split_once(char::is_whitespace)
            .unwrap_or((define, ""));
        let value = value.trim();
        let value = value
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .unwrap_or(value);
        // Function-like macros and values that are not integer expressions
        // (of numbers and earlier constants) are C's alone.
        let integral = !value.is_empty()
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " _+-*()x".contains(c))
            && value
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .all(|word| {
                    word.is_empty()
                        || word.starts_with(|c: char| c.is_ascii_digit())
                        || constants.iter().any(|k: &Constant| k.name == word)
                });
        if name.contains('(') || !integral {
            continue;
        }
        constants.push(Constant {
            name: name.to_string(),
            value: value.to_string(),
            doc,
        });
    }
    assert!(
        !reasons.is_empty() && !states.is_empty(),
        "abi.h: enums drop_reason and ct_state"
    );
    let mut rust = String::from("// Generated by build.rs from bpf/abi.h: edit that.\n");
    for k in &constants {
        let ty = RUST_TYPES
            .iter()
            .find(|(prefix, _)| k.name.starts_with(prefix))
            .map_or("u32", |(_, ty)| ty);
        let doc = if k.doc.is_empty() {
            format!("abi.h `{}`.", k.name)
        } else {
            format!("abi.h `{}`: {}", k.name, k.doc)
        };
        rust.push_str(&format!(
            "#[doc = {doc:?}]\npub const {}: {ty} = {};\n",
            k.name, k.value
        ));
    }
    rust.push_str(&format!(
        "/// Why a packet was dropped, by `enum drop_reason` (abi.h).\npub const DROP_REASONS: [&str; DROP_REASON_MAX] = {reasons:?};\n"
    ));
    rust.push_str(&format!(
        "/// TCP states of a conntrack entry, by `enum ct_state` (abi.h).\npub const CT_STATES: [&str; {}] = {states:?};\n",
        states.len()
    ));
    rust
}

/// The comment that documents each line of `c`: its own (from `/*` on
/// that line to the `*/` that closes it, lines later maybe), else a comment
/// standing alone that ends on the line just above; "" for neither. Its
/// lines are joined, without their leading `*`.
fn line_docs(c: &str) -> Vec<String> {
    let lines: Vec<&str> = c.lines().collect();
    let mut docs = vec![String::new(); lines.len()];
    // A comment alone on its lines, which documents the next line.
    let mut above = String::new();
    let mut i = 0;
    while i < lines.len() {
        let Some((code, mut rest)) = lines[i].split_once("/*") else {
            docs[i] = std::mem::take(&mut above);
            i += 1;
            continue;
        };
        let mut words = Vec::new();
        let mut end = i;
        loop {
            let (text, closed) = match rest.split_once("*/") {
                Some((text, _)) => (text, true),
                None => (rest, false),
            };
            let text = text.trim_start();
            words.extend(text.strip_prefix('*').unwrap_or(text).split_whitespace());
            if closed || end + 1 == lines.len() {
                break;
            }
            end += 1;
            rest = lines[end];
        }
        let text = words.join(" ");
        if code.trim().is_empty() {
            above = text;
        } else {
            docs[i] = text;
            above.clear();
        }
        i = end + 1;
    }
    docs
}

fn parse_int(text: &str) -> u64 {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .unwrap_or_else(|e| panic!("abi.h: {text}: {e}"))
}

/// FNV-1a, 64 bit: a fingerprint, not a defence against anyone.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
