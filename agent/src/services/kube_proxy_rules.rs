//! kube-proxy's rules left on a node that Margay now balances, found in the
//! node's nftables ruleset (`nft -j list ruleset`) and removed in one
//! transaction, as `kube-proxy --cleanup` would: its tables in nftables
//! mode, and in iptables mode (iptables-nft, Debian's default) its chains
//! and the rules of the built-in chains that jump to them. kubelet's own
//! chains (`KUBE-FIREWALL`, `KUBE-KUBELET-CANARY`, `KUBE-MARK-DROP`) stay.
//!
//! Finding them ([`leftovers`]) and writing the transaction
//! ([`Leftovers::script`]) are pure; [`Watch`] runs `nft` every interval.
//!
//! A kube-proxy still running would put its rules back: the agent says so
//! loudly (an error, and `margay_kube_proxy_running` 1) and leaves them
//! alone rather than flap with it.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::metrics::Metrics;

/// How long kube-proxy's health address has to answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Leftovers found again this many times soon after a removal: kube-proxy
/// runs.
const REWRITES: u32 = 3;
const REWRITE_WINDOW: Duration = Duration::from_secs(600);

/// The tables kube-proxy's nftables mode owns whole.
const NFT_TABLE: &str = "kube-proxy";
/// kube-proxy's iptables chains: these names, and these prefixes followed
/// by a hash.
const CHAINS: [&str; 8] = [
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
    "KUBE-FORWARD",
    "KUBE-PROXY-FIREWALL",
    "KUBE-PROXY-CANARY",
];
const CHAIN_PREFIXES: [&str; 6] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-SEP-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-XLB-",
];

/// Whether `name` is one of kube-proxy's iptables chains.
pub fn is_kube_proxy_chain(name: &str) -> bool {
    CHAINS.contains(&name) || CHAIN_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// A table, chain or rule, as `nft` names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Table {
    pub family: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Chain {
    pub table: Table,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    pub chain: Chain,
    pub handle: u64,
}

/// What kube-proxy left.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    pub tables: Vec<Table>,
    pub chains: Vec<Chain>,
    /// Rules outside kube-proxy's chains that jump into them.
    pub jumps: Vec<Rule>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.chains.is_empty() && self.jumps.is_empty()
    }

    /// An `nft -f` script removing them all in one transaction: the jumps,
    /// then every chain flushed before any is deleted (they jump to each
    /// other), then the tables.
    pub fn script(&self) -> String {
        let mut out = String::new();
        let table = |t: &Table| format!("{} {}", t.family, t.name);
        for r in &self.jumps {
            out += &format!(
                "delete rule {} {} handle {}\n",
                table(&r.chain.table),
                r.chain.name,
                r.handle
            );
        }
        for c in &self.chains {
            out += &format!("flush chain {} {}\n", table(&c.table), c.name);
        }
        for c in &self.chains {
            out += &format!("delete chain {} {}\n", table(&c.table), c.name);
        }
        for t in &self.tables {
            out += &format!("delete table {}\n", table(t));
        }
        out
    }

    /// For the log: how much of each.
    pub fn summary(&self) -> String {
        format!(
            "{} tables, {} chains, {} jumps",
            self.tables.len(),
            self.chains.len(),
            self.jumps.len()
        )
    }
}

fn table_of(o: &Value, key: &str) -> Option<Table> {
    Some(Table {
        family: o.get("family")?.as_str()?.to_string(),
        name: o.get(key)?.as_str()?.to_string(),
    })
}

/// kube-proxy's leftovers in `ruleset`, the JSON of `nft -j list ruleset`.
pub fn leftovers(ruleset: &Value) -> Leftovers {
    let objects = ruleset
        .get("nftables")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut found = Leftovers::default();
    for object in objects {
        if let Some(t) = object.get("table").and_then(|t| table_of(t, "name"))
            && t.name == NFT_TABLE
        {
            found.tables.push(t);
        }
    }
    let in_own_table = |t: &Table| found.tables.contains(t);
    let mut chains = Vec::new();
    let mut jumps = Vec::new();
    for object in objects {
        if let Some(c) = object.get("chain")
            && let (Some(table), Some(name)) =
                (table_of(c, "table"), c.get("name").and_then(Value::as_str))
            && !in_own_table(&table)
            && is_kube_proxy_chain(name)
        {
            chains.push(Chain {
                table,
                name: name.to_string(),
            });
        }
        if let Some(r) = object.get("rule")
            && let (Some(table), Some(chain), Some(handle)) = (
                table_of(r, "table"),
                r.get("chain").and_then(Value::as_str),
                r.get("handle").and_then(Value::as_u64),
            )
            && !in_own_table(&table)
            && !is_kube_proxy_chain(chain)
            && r.get("expr")
                .and_then(Value::as_array)
                .is_some_and(|e| e.iter().any(jumps_to_kube_proxy))
        {
            jumps.push(Rule {
                chain: Chain {
                    table,
                    name: chain.to_string(),
                },
                handle,
            });
        }
    }
    chains.sort();
    jumps.sort();
    found.chains = chains;
    found.jumps = jumps;
    found
}

fn jumps_to_kube_proxy(expr: &Value) -> bool {
    ["jump", "goto"].iter().any(|verdict| {
        expr.get(verdict)
            .and_then(|v| v.get("target"))
            .and_then(Value::as_str)
            .is_some_and(is_kube_proxy_chain)
    })
}

/// Whether kube-proxy's rules are removed or only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Remove,
    Report,
}

/// Looks at the node's ruleset every `interval` for kube-proxy's rules.
///
/// A kube-proxy that answers on its health address runs: its rules are left
/// alone however the action says (removing them would only make it write
/// them again). One that does not answer is switched off, and its rules are
/// removed; should they come back anyway (a kube-proxy without a health
/// address), [`REWRITES`] times within [`REWRITE_WINDOW`], removal stops for
/// a window and the agent says why.
pub struct Watch {
    pub action: Action,
    pub interval: Duration,
    /// kube-proxy's `healthzBindAddress` on this node.
    pub kube_proxy_health: SocketAddr,
    pub metrics: Arc<Metrics>,
}

/// What the watch last said, so it speaks on changes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Said {
    Nothing,
    Clean,
    LeftAlone,
    KubeProxyRuns,
    Flapping,
}

impl Watch {
    pub async fn run(self) {
        let mut removals: Vec<Instant> = Vec::new();
        let mut said = Said::Nothing;
        loop {
            let running = kube_proxy_answers(self.kube_proxy_health).await;
            let ruleset = match list_ruleset().await {
                Ok(ruleset) => ruleset,
                Err(e) => {
                    tracing::warn!("kube-proxy's rules are not checked: {e}");
                    return;
                }
            };
            let found = leftovers(&ruleset);
            self.metrics
                .kube_proxy_rules
                .set(i64::from(!found.is_empty()));
            removals.retain(|at| at.elapsed() < REWRITE_WINDOW);
            let flapping = removals.len() as u32 >= REWRITES;
            self.metrics
                .kube_proxy_running
                .set(i64::from(running || flapping));
            if found.is_empty() {
                if changed(&mut said, Said::Clean) {
                    tracing::info!("no kube-proxy rules on this node");
                }
            } else if self.action == Action::Report {
                if changed(&mut said, Said::LeftAlone) {
                    tracing::info!(
                        found = %found.summary(),
                        "kube-proxy's rules are here and left alone (services: beside-kube-proxy)"
                    )
                }
            } else if running {
                if changed(&mut said, Said::KubeProxyRuns) {
                    tracing::error!(
                        health = %self.kube_proxy_health,
                        found = %found.summary(),
                        "kube-proxy runs on this node while Margay balances Services: its rules are \
                         left alone until it stops. Switch it off (a nodeSelector on its DaemonSet \
                         that matches no node) or set services: beside-kube-proxy"
                    )
                }
            } else if flapping {
                if changed(&mut said, Said::Flapping) {
                    tracing::error!(
                        "kube-proxy's rules came back {REWRITES} times within {} min of their removal: \
                         something runs kube-proxy here without a health address ({}). Its rules are \
                         left alone for now; switch it off, or set services: beside-kube-proxy",
                        REWRITE_WINDOW.as_secs() / 60,
                        self.kube_proxy_health
                    )
                }
            } else {
                match run_script(&found.script()).await {
                    Ok(()) => {
                        tracing::info!(removed = %found.summary(), "removed kube-proxy's leftover rules");
                        removals.push(Instant::now());
                        self.metrics.kube_proxy_rules.set(0);
                        said = Said::Clean;
                    }
                    Err(e) => tracing::error!("removing kube-proxy's leftover rules: {e}"),
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}

/// Sets `said` to `now`; whether that changed it (and so is worth a line).
fn changed(said: &mut Said, now: Said) -> bool {
    std::mem::replace(said, now) != now
}

/// Whether something answers HTTP on kube-proxy's health address: any
/// status will do (kube-proxy says 503 while it catches up, and runs).
async fn kube_proxy_answers(addr: SocketAddr) -> bool {
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 8];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1."))
    };
    tokio::time::timeout(HEALTH_TIMEOUT, ask)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

async fn list_ruleset() -> Result<Value, String> {
    let out = tokio::process::Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .output()
        .await
        .map_err(|e| format!("running nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft -j list ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("nft's JSON: {e}"))
}

async fn run_script(script: &str) -> Result<(), String> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(script.as_bytes())
        .await
        .map_err(|e| format!("writing to nft: {e}"))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft -f: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(table: &str, chain: &str, handle: u64, target: &str) -> Value {
        json!({"rule": {"family": "ip", "table": table, "chain": chain, "handle": handle,
                        "expr": [{"xt": {"type": "match", "name": "comment"}},
                                 {"jump": {"target": target}}]}})
    }

    fn chain(table: &str, name: &str) -> Value {
        json!({"chain": {"family": "ip", "table": table, "name": name, "handle": 1}})
    }

    #[test]
    fn kube_proxys_tables_chains_and_jumps_are_found_and_kubelets_are_not() {
        let ruleset = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "nat", "handle": 1}},
            {"table": {"family": "ip", "name": "filter", "handle": 2}},
            {"table": {"family": "ip", "name": "kube-proxy", "handle": 3}},
            {"table": {"family": "ip6", "name": "kube-proxy", "handle": 4}},
            chain("nat", "PREROUTING"),
            chain("nat", "KUBE-SERVICES"),
            chain("nat", "KUBE-SVC-ABCDEF0123456789"),
            chain("nat", "KUBE-MARK-DROP"),
            chain("filter", "KUBE-FIREWALL"),
            chain("filter", "KUBE-KUBELET-CANARY"),
            chain("filter", "KUBE-PROXY-CANARY"),
            {"chain": {"family": "ip", "table": "kube-proxy", "name": "services", "handle": 9}},
            rule("nat", "PREROUTING", 7, "KUBE-SERVICES"),
            rule("nat", "KUBE-SERVICES", 8, "KUBE-SVC-ABCDEF0123456789"),
            rule("filter", "INPUT", 10, "KUBE-FIREWALL"),
            rule("filter", "FORWARD", 11, "CALICO-FORWARD"),
            {"rule": {"family": "ip", "table": "nat", "chain": "OUTPUT", "handle": 12,
                      "expr": [{"goto": {"target": "KUBE-SERVICES"}}]}},
        ]});
        let found = leftovers(&ruleset);
        let names = |cs: &[Chain]| cs.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&found.chains),
            [
                "KUBE-PROXY-CANARY",
                "KUBE-SERVICES",
                "KUBE-SVC-ABCDEF0123456789"
            ],
            "kube-proxy's chains; kubelet's stay"
        );
        assert_eq!(
            found
                .jumps
                .iter()
                .map(|r| (r.chain.name.as_str(), r.handle))
                .collect::<Vec<_>>(),
            [("OUTPUT", 12), ("PREROUTING", 7)],
            "the built-in chains' jumps into them; jumps between them go with the chains"
        );
        assert_eq!(
            found
                .tables
                .iter()
                .map(|t| t.family.as_str())
                .collect::<Vec<_>>(),
            ["ip", "ip6"]
        );
        let script = found.script();
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines[0], "delete rule ip nat OUTPUT handle 12");
        assert_eq!(lines[2], "flush chain ip filter KUBE-PROXY-CANARY");
        assert_eq!(lines[5], "delete chain ip filter KUBE-PROXY-CANARY");
        assert_eq!(
            lines[8..],
            ["delete table ip kube-proxy", "delete table ip6 kube-proxy"]
        );
    }

    #[test]
    fn a_clean_node_has_nothing_to_remove() {
        let ruleset = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "filter", "handle": 1}},
            chain("filter", "KUBE-FIREWALL"),
            rule("filter", "INPUT", 3, "KUBE-FIREWALL"),
        ]});
        let found = leftovers(&ruleset);
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(found.script(), "");
    }
}
