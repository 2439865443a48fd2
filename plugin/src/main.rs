//! `margay`: the CNI plugin binary.

fn main() -> std::process::ExitCode {
    margay_conf::dispatch::run(&margay_plugin::MargayPlugin)
}
