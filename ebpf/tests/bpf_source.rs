//! A rule of the programs' C source that no packet test can see whole:
//! every drop is counted with a reason (paths TestRun can force are
//! tested in tests/tests/programs.rs; this covers the rest).

use std::path::PathBuf;

fn bpf_sources() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bpf");
    let mut sources: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "h" || ext == "c"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    sources.sort();
    assert!(sources.len() > 5, "no sources in {}", dir.display());
    sources
}

/// The function a line at the start of a line of C begins, if it begins
/// one: the first name called there that is not an attribute or a section.
fn function_begun(line: &str) -> Option<&str> {
    if line.starts_with(|c: char| c.is_whitespace() || c == '#' || c == '/' || c == '}') {
        return None;
    }
    line.match_indices('(').find_map(|(at, _)| {
        let before = &line[..at];
        let name_at = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        let name = &before[name_at..];
        (!name.is_empty() && !matches!(name, "SEC" | "__attribute__")).then_some(name)
    })
}

#[test]
fn every_program_drop_is_counted_with_a_reason() {
    // Only these return TC_ACT_SHOT themselves, having counted the packet
    // and reported it with its reason (events.h); everything else that
    // cannot send a packet on returns SEND_FAILED(reason) for its caller
    // to count, or returns what one of these returned.
    const DROPPERS: [&str; 2] = ["drop", "drop_denied"];
    let mut silent = Vec::new();
    for (file, text) in bpf_sources() {
        let mut function = None;
        for (number, line) in text.lines().enumerate() {
            if let Some(name) = function_begun(line) {
                function = Some(name.to_string());
            }
            let code = line.split("/*").next().unwrap_or_default();
            if code.contains("return TC_ACT_SHOT")
                && !(file == "events.h" && DROPPERS.contains(&function.as_deref().unwrap_or("")))
            {
                silent.push(format!(
                    "{file}:{}: in {function:?}: {}",
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        silent.is_empty(),
        "drops without a reason (use drop(), or return SEND_FAILED(reason)):\n{}",
        silent.join("\n")
    );
}

#[test]
fn the_check_finds_functions_as_c_begins_them() {
    assert_eq!(
        function_begun(
            "static __always_inline int tunnel_send(struct __sk_buff *skb, __be32 node,"
        ),
        Some("tunnel_send")
    );
    assert_eq!(
        function_begun("__attribute__((noinline)) int reject6(struct __sk_buff *skb,"),
        Some("reject6")
    );
    assert_eq!(function_begun("SEC(\"classifier\")"), None);
    assert_eq!(
        function_begun("\treturn drop(p, 0, 0, DIR_EGRESS, DROP_NAT);"),
        None
    );
}
