//! NetworkPolicy from the API, enforced by the node's programs.

pub mod translate;
