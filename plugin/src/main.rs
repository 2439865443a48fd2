//! `margay`: the CNI plugin binary.
#![no_main]

/// Entered without Rust's runtime start, which costs every call time
/// (see `margay_conf::entry`).
#[unsafe(no_mangle)]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    margay_conf::entry::run(|| margay_conf::dispatch::run(&margay_plugin::MargayPlugin))
}
