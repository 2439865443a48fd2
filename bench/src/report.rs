//! Rendering results: plain-text tables and the run's header facts. Returns
//! strings; the binary prints them.

use std::fmt::Write as _;

use serde::Serialize;

/// Facts about the run printed above every report.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// `uname -r`.
    pub kernel: String,
    /// The command line, shell-quoted where needed.
    pub command: String,
}

impl RunInfo {
    /// Facts about this process and machine.
    pub fn current() -> Self {
        Self {
            kernel: kernel_release(),
            command: command_line(std::env::args()),
        }
    }

    /// `bench: <what>, kernel <release>, command: <command line>`.
    pub fn header(&self, what: &str) -> String {
        format!(
            "bench: {what}, kernel {}, command: {}",
            self.kernel, self.command
        )
    }
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        return s.trim().to_owned();
    }
    std::process::Command::new("uname")
        .arg("-r")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Joins arguments into one line a shell would split back the same way.
pub fn command_line(args: impl IntoIterator<Item = String>) -> String {
    args.into_iter()
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Milliseconds with 3 decimals.
pub fn fmt_ms(ms: f64) -> String {
    format!("{ms:.3}")
}

/// A factor such as `0.62x`.
pub fn fmt_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}x")
    } else {
        "n/a".to_owned()
    }
}

/// A plain-text table: first column left-aligned (row labels), the others
/// right-aligned (numbers).
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// The table as lines separated (and terminated) by `\n`, columns two
    /// spaces apart, without trailing spaces.
    pub fn render(&self) -> String {
        let ncols = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; ncols];
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = line.get(i).map(String::as_str).unwrap_or("");
                if i > 0 {
                    text.push_str("  ");
                }
                if i == 0 {
                    let _ = write!(text, "{cell:<w$}");
                } else {
                    let _ = write!(text, "{cell:>w$}");
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(["op", "a p50", "b"]);
        t.row(["ADD", "1.000", "12.345"]);
        t.row(["ADD+DEL", "10.500", "0.100"]);
        assert_eq!(
            t.render(),
            "op        a p50       b\n\
             ADD       1.000  12.345\n\
             ADD+DEL  10.500   0.100\n"
        );
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_ms(1.23456), "1.235");
        assert_eq!(fmt_ms(0.0), "0.000");
        assert_eq!(fmt_ratio(0.6249), "0.62x");
        assert_eq!(fmt_ratio(f64::INFINITY), "n/a");
        assert_eq!(fmt_ratio(f64::NAN), "n/a");
    }

    #[test]
    fn command_line_quotes_only_when_needed() {
        let args = ["./bench", "ipam", "--bin-dir", "/a b", "it's", ""].map(String::from);
        assert_eq!(
            command_line(args),
            r#"./bench ipam --bin-dir '/a b' 'it'\''s' ''"#
        );
    }

    #[test]
    fn kernel_release_is_not_empty() {
        assert!(!kernel_release().is_empty());
    }
}
