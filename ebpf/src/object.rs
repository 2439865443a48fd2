//! The compiled programs, embedded in the binary (built by build.rs from
//! `bpf/*.bpf.c`; nothing prebuilt is committed).

include!(concat!(env!("OUT_DIR"), "/object_ids.rs"));

/// `bpf/dataplane.bpf.c`: `from_pod` and `to_pod` (every pod's host veth),
/// `from_net` (the node's data interfaces) and their maps.
pub static DATAPLANE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane.bpf.o"));
