//! The compiled programs, embedded in the binary (built by build.rs from
//! `bpf/*.bpf.c`; nothing prebuilt is committed).

include!(concat!(env!("OUT_DIR"), "/object_ids.rs"));

/// `bpf/endpoint.bpf.c`: `from_pod` and `to_pod` and their maps.
pub static ENDPOINT_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/endpoint.bpf.o"));
