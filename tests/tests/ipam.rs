//! `margay-ipam` driven from outside, exactly as a runtime or the main
//! plugin execs it. No root needed: the store lives in a temp dir.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use margay_conf::lock::FileLock;
use margay_tests::bins::bin;
use margay_tests::process::{self, Output};
use serde_json::{Value, json};
use tempfile::TempDir;

/// One test's IPAM: its own store directory and network name.
struct Ipam {
    dir: TempDir,
    conf: Value,
}

impl Ipam {
    fn new(pools: &[&str]) -> Ipam {
        Self::with(pools, json!({}))
    }

    /// `extra` is merged into the `ipam` section.
    fn with(pools: &[&str], extra: Value) -> Ipam {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = json!({"type": "margay-ipam", "pools": pools,
            "data_dir": dir.path().join("ipam")});
        ipam.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let conf = json!({"cniVersion": "1.1.0", "name": "ipamtest", "type": "margay",
            "nodename": "node-a", "ipam": ipam});
        Ipam { dir, conf }
    }

    fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("ipam")
    }

    fn call(&self, command: &str, cid: &str, args: &str, conf: &Value) -> Output {
        let stdin = serde_json::to_vec(conf).unwrap();
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", "/var/run/netns/unused-by-ipam"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/nonexistent"),
            ("CNI_ARGS", args),
        ];
        process::run(&bin("margay-ipam"), &env, &stdin)
    }

    fn add(&self, cid: &str) -> Output {
        self.call("ADD", cid, "", &self.conf)
    }

    fn add_ip(&self, cid: &str) -> String {
        let out = self.add(cid);
        assert!(out.success, "ADD {cid}: {}\n{}", out.stdout, out.stderr);
        out.json()["ips"][0]["address"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn del(&self, cid: &str) -> Output {
        self.call("DEL", cid, "", &self.conf)
    }

    fn gc(&self, valid: &[&str]) -> Output {
        let mut conf = self.conf.clone();
        conf["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|c| json!({"containerID": c, "ifname": "eth0"}))
            .collect();
        self.call("GC", "", "", &conf)
    }

    fn status(&self) -> Output {
        self.call("STATUS", "", "", &self.conf)
    }

    /// `margay-ipam allocations --json` on this store.
    fn allocations(&self) -> Vec<Value> {
        let out = Command::new(bin("margay-ipam"))
            .args(["--data-dir"])
            .arg(self.data_dir())
            .args(["allocations", "--json"])
            .env_remove("CNI_COMMAND")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    }
}

#[test]
fn add_returns_a_slash_32_from_the_pool_and_del_check_gc_status_print_nothing() {
    let ipam = Ipam::new(&["10.70.0.0/16"]);
    let out = ipam.call(
        "ADD",
        "c1",
        "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=pod1",
        &ipam.conf,
    );
    assert!(out.success, "{}", out.stdout);
    let result = out.json();
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["ips"].as_array().unwrap().len(), 1);
    let addr = result["ips"][0]["address"].as_str().unwrap();
    assert_eq!(addr, "10.70.0.1/32");
    assert!(
        result.get("interfaces").is_none(),
        "IPAM plugins do not report interfaces"
    );

    let mut check_conf = ipam.conf.clone();
    check_conf["prevResult"] = result.clone();
    let check = ipam.call("CHECK", "c1", "", &check_conf);
    assert!(check.success && check.stdout.is_empty(), "{check:?}");
    let status = ipam.status();
    assert!(status.success && status.stdout.is_empty(), "{status:?}");

    let allocs = ipam.allocations();
    assert_eq!(allocs.len(), 1);
    assert_eq!(allocs[0]["handle"], "ipamtest.c1.eth0");
    assert_eq!(allocs[0]["pod_namespace"], "ns1");
    assert_eq!(allocs[0]["pod_name"], "pod1");
    assert_eq!(allocs[0]["container_id"], "c1");
    assert_eq!(allocs[0]["node"], "node-a");
    assert!(allocs[0]["created"].as_u64().unwrap() > 1_700_000_000);

    let del = ipam.del("c1");
    assert!(del.success && del.stdout.is_empty(), "{del:?}");
    assert!(ipam.allocations().is_empty());
    let check_after = ipam.call("CHECK", "c1", "", &check_conf);
    assert_eq!(check_after.error_code(), 107);
    assert!(
        check_after.json()["msg"]
            .as_str()
            .unwrap()
            .contains("ipamtest.c1.eth0")
    );

    let gc = ipam.gc(&[]);
    assert!(gc.success && gc.stdout.is_empty(), "{gc:?}");
}

#[test]
fn repeated_add_returns_the_same_address_and_del_is_idempotent() {
    let ipam = Ipam::new(&["10.71.0.0/24"]);
    let first = ipam.add_ip("Upper-Case.ID_1");
    assert_eq!(ipam.add_ip("Upper-Case.ID_1"), first);
    assert_eq!(ipam.allocations().len(), 1);
    assert_ne!(ipam.add_ip("other"), first);
    for _ in 0..2 {
        assert!(ipam.del("Upper-Case.ID_1").success);
    }
    assert!(ipam.del("never-added").success);
    assert_eq!(ipam.allocations().len(), 1);
}

#[test]
fn del_gc_status_on_a_node_that_never_allocated_do_not_create_a_store() {
    let ipam = Ipam::new(&["10.72.0.0/24"]);
    assert!(ipam.del("c1").success);
    assert!(ipam.gc(&[]).success);
    assert!(ipam.status().success);
    assert!(!ipam.data_dir().join("store").exists());
}

#[test]
fn a_slash_30_pool_gives_two_addresses_then_exhausts_and_status_says_50() {
    let ipam = Ipam::new(&["10.73.0.0/30"]);
    let got: BTreeSet<String> = ["a", "b"].iter().map(|c| ipam.add_ip(c)).collect();
    assert_eq!(
        got,
        BTreeSet::from(["10.73.0.1/32".to_string(), "10.73.0.2/32".to_string()])
    );
    let third = ipam.add("c");
    assert_eq!(third.error_code(), 101);
    assert!(
        third.json()["msg"]
            .as_str()
            .unwrap()
            .contains("10.73.0.0/30")
    );
    assert_eq!(ipam.status().error_code(), 50);
    assert_eq!(ipam.allocations().len(), 2, "a failed ADD holds nothing");

    assert!(ipam.del("a").success);
    assert!(ipam.status().success);
    assert_eq!(ipam.add_ip("c"), "10.73.0.1/32");
}

#[test]
fn a_second_pool_is_used_when_the_first_is_full() {
    let ipam = Ipam::new(&["10.74.0.0/31", "10.74.1.0/30"]);
    let got: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|c| ipam.add_ip(c))
        .collect();
    assert_eq!(
        got,
        [
            "10.74.0.0/32",
            "10.74.0.1/32",
            "10.74.1.1/32",
            "10.74.1.2/32"
        ]
    );
    assert_eq!(ipam.add("e").error_code(), 101);
}

#[test]
fn blocks_are_claimed_per_node_and_a_new_one_when_full() {
    let ipam = Ipam::with(&["10.75.0.0/24"], json!({"block_size": 30}));
    for c in ["a", "b", "c", "d", "e"] {
        ipam.add_ip(c);
    }
    let out = Command::new(bin("margay-ipam"))
        .arg("--data-dir")
        .arg(ipam.data_dir())
        .args(["blocks", "--json"])
        .output()
        .unwrap();
    let blocks: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let cidrs: Vec<&str> = blocks.iter().map(|b| b["cidr"].as_str().unwrap()).collect();
    assert_eq!(cidrs, ["10.75.0.0/30", "10.75.0.4/30"]);
    assert!(blocks.iter().all(|b| b["node"] == "node-a"));
    assert_eq!(
        blocks[0]["used"], 3,
        "the pool's network address is reserved"
    );
    assert_eq!(blocks[1]["used"], 2);
}

#[test]
fn dual_stack_pools_give_one_address_per_family() {
    let ipam = Ipam::new(&["10.76.0.0/24", "fd76::/64"]);
    let result = ipam.add("c1").json();
    let ips: Vec<&str> = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap())
        .collect();
    assert_eq!(ips, ["10.76.0.1/32", "fd76::1/128"]);
}

#[test]
fn requested_addresses_are_honoured_or_refused_clearly() {
    let ipam = Ipam::new(&["10.77.0.0/24"]);
    let by_args = ipam.call("ADD", "c1", "IgnoreUnknown=1;IP=10.77.0.50", &ipam.conf);
    assert_eq!(by_args.json()["ips"][0]["address"], "10.77.0.50/32");

    let mut rc = ipam.conf.clone();
    rc["runtimeConfig"] = json!({"ips": ["10.77.0.60/24"]});
    assert_eq!(
        ipam.call("ADD", "c2", "", &rc).json()["ips"][0]["address"],
        "10.77.0.60/32"
    );

    let taken = ipam.call("ADD", "c3", "IP=10.77.0.50", &ipam.conf);
    assert_eq!(taken.error_code(), 102);
    assert!(
        taken.json()["msg"]
            .as_str()
            .unwrap()
            .contains("ipamtest.c1.eth0"),
        "{}",
        taken.stdout
    );

    let outside = ipam.call("ADD", "c4", "IP=192.168.9.9", &ipam.conf);
    assert_eq!(outside.error_code(), 103);
    assert!(
        outside.json()["msg"]
            .as_str()
            .unwrap()
            .contains("10.77.0.0/24")
    );

    let reserved = ipam.call("ADD", "c5", "IP=10.77.0.0", &ipam.conf);
    assert_eq!(reserved.error_code(), 102);

    let garbage = ipam.call("ADD", "c6", "IP=ten.0.0.1", &ipam.conf);
    assert_eq!(garbage.error_code(), 4);
    assert!(
        garbage.json()["msg"]
            .as_str()
            .unwrap()
            .contains("CNI_ARGS IP")
    );
    let mut bad_rc = ipam.conf.clone();
    bad_rc["runtimeConfig"] = json!({"ips": ["nope"]});
    let garbage_rc = ipam.call("ADD", "c7", "", &bad_rc);
    assert_eq!(garbage_rc.error_code(), 7);
    assert!(
        garbage_rc.json()["msg"]
            .as_str()
            .unwrap()
            .contains("runtimeConfig.ips")
    );

    assert_eq!(ipam.allocations().len(), 2, "refused requests hold nothing");
    assert_eq!(
        ipam.add_ip("c8"),
        "10.77.0.1/32",
        "automatic allocation skips nothing it need not"
    );
}

#[test]
fn gc_releases_what_is_not_valid_and_keeps_other_networks() {
    let ipam = Ipam::new(&["10.78.0.0/24"]);
    for c in ["keep1", "drop1", "keep2", "drop2"] {
        ipam.add_ip(c);
    }
    let mut other_net = ipam.conf.clone();
    other_net["name"] = "othernet".into();
    assert!(ipam.call("ADD", "drop3", "", &other_net).success);

    let gc = ipam.gc(&["keep1", "keep2"]);
    assert!(gc.success, "{}", gc.stdout);
    let mut left: Vec<String> = ipam
        .allocations()
        .iter()
        .map(|a| a["handle"].as_str().unwrap().to_string())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "ipamtest.keep1.eth0",
            "ipamtest.keep2.eth0",
            "othernet.drop3.eth0"
        ]
    );

    let mut no_list = ipam.conf.clone();
    no_list
        .as_object_mut()
        .unwrap()
        .remove("cni.dev/valid-attachments");
    assert_eq!(
        ipam.call("GC", "", "", &no_list).error_code(),
        7,
        "absent list is not 'nothing valid'"
    );
    let mut old = ipam.conf.clone();
    old["cniVersion"] = "1.0.0".into();
    old["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(
        ipam.call("GC", "", "", &old).error_code(),
        1,
        "GC needs 1.1.0"
    );
    assert_eq!(ipam.allocations().len(), 3);
}

#[test]
fn sixty_four_concurrent_adds_get_distinct_addresses_and_dels_free_them_all() {
    let ipam = Ipam::new(&["10.79.0.0/16"]);
    let run_all = |command: &str| -> Vec<Output> {
        let stdin = serde_json::to_vec(&ipam.conf).unwrap();
        let handles: Vec<_> = (0..64)
            .map(|i| {
                let stdin = stdin.clone();
                let command = command.to_string();
                std::thread::spawn(move || {
                    let cid = format!("conc{i}");
                    let env = [
                        ("CNI_COMMAND", command.as_str()),
                        ("CNI_CONTAINERID", cid.as_str()),
                        ("CNI_NETNS", "/x"),
                        ("CNI_IFNAME", "eth0"),
                        ("CNI_PATH", "/x"),
                    ];
                    process::run(&bin("margay-ipam"), &env, &stdin)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    };
    let adds = run_all("ADD");
    let addrs: BTreeSet<String> = adds
        .iter()
        .map(|o| {
            assert!(o.success, "{} {}", o.stdout, o.stderr);
            o.json()["ips"][0]["address"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(addrs.len(), 64, "64 distinct addresses");
    assert_eq!(ipam.allocations().len(), 64);
    for o in run_all("DEL") {
        assert!(o.success, "{}", o.stdout);
    }
    assert!(ipam.allocations().is_empty());
}

#[test]
fn kill_9_during_adds_then_gc_leaves_no_allocation() {
    let ipam = Ipam::new(&["10.80.0.0/16"]);
    ipam.add_ip("survivor");
    let stdin = serde_json::to_vec(&ipam.conf).unwrap();
    for round in 0..4 {
        let mut children: Vec<_> = (0..16)
            .map(|i| {
                let mut child = Command::new(bin("margay-ipam"))
                    .env("CNI_COMMAND", "ADD")
                    .env("CNI_CONTAINERID", format!("victim{round}x{i}"))
                    .env("CNI_NETNS", "/x")
                    .env("CNI_IFNAME", "eth0")
                    .env("CNI_PATH", "/x")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                use std::io::Write;
                child.stdin.take().unwrap().write_all(&stdin).unwrap();
                child
            })
            .collect();
        // Staggered kills land before, inside and after the critical section.
        std::thread::sleep(Duration::from_millis(2 * round));
        for c in &mut children {
            let _ = c.kill();
        }
        for mut c in children {
            let _ = c.wait();
        }
    }
    let gc = ipam.gc(&["survivor"]);
    assert!(gc.success, "GC after kill -9: {} {}", gc.stdout, gc.stderr);
    let left = ipam.allocations();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["handle"], "ipamtest.survivor.eth0");
    assert!(ipam.status().success, "the store is still healthy");
}

#[test]
fn a_held_lock_makes_add_answer_try_again_later() {
    let ipam = Ipam::with(&["10.81.0.0/24"], json!({"lock_timeout_ms": 300}));
    let _held =
        FileLock::acquire(&ipam.data_dir().join("ipam.lock"), Duration::from_secs(1)).unwrap();
    let start = std::time::Instant::now();
    let out = ipam.add("c1");
    assert_eq!(out.error_code(), 11);
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(start.elapsed() < Duration::from_secs(5));
}

fn assert_store_error(ipam: &Ipam, what: &str) {
    let out = ipam.add("after-damage");
    let code = out.error_code();
    assert!(
        code == 100 || code == 5,
        "{what}: code {code}: {}",
        out.stdout
    );
    assert!(
        out.json()["msg"].as_str().unwrap().contains("store"),
        "{what}: {}",
        out.stdout
    );
    assert!(
        !out.stderr.contains("panicked at") || code == 100,
        "{what}: a panic must not escape"
    );
    let status = ipam.status();
    assert_eq!(
        status.error_code(),
        50,
        "{what}: STATUS reports not available"
    );
}

#[test]
fn a_corrupted_store_gives_a_clear_error_and_is_not_replaced() {
    for damage in ["garbage", "truncate", "remove-db", "store-is-a-file"] {
        let ipam = Ipam::new(&["10.82.0.0/24"]);
        ipam.add_ip("before");
        let store = ipam.data_dir().join("store");
        match damage {
            "garbage" => {
                let db = store.join("db");
                let len = std::fs::metadata(&db).unwrap().len() as usize;
                std::fs::write(&db, vec![0xA5u8; len]).unwrap();
            }
            "truncate" => std::fs::write(store.join("db"), b"").unwrap(),
            "remove-db" => std::fs::remove_file(store.join("db")).unwrap(),
            "store-is-a-file" => {
                std::fs::remove_dir_all(&store).unwrap();
                std::fs::write(&store, b"not a directory").unwrap();
            }
            _ => unreachable!(),
        }
        let before = snapshot(&store);
        assert_store_error(&ipam, damage);
        assert_eq!(
            snapshot(&store),
            before,
            "{damage}: the damaged store is left for the operator"
        );
    }
}

/// Names and sizes of what is at `path`, to show nothing was rebuilt.
fn snapshot(path: &Path) -> Vec<(String, u64)> {
    if path.is_file() {
        return vec![(String::new(), std::fs::metadata(path).unwrap().len())];
    }
    let mut entries: Vec<_> = std::fs::read_dir(path)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    entries.sort();
    entries
}

#[test]
fn inspection_commands_list_pools_blocks_allocations_and_release_a_handle() {
    let ipam = Ipam::new(&["10.83.0.0/24"]);
    ipam.add_ip("c1");
    ipam.add_ip("c2");
    let conf_file = ipam.dir.path().join("net.conflist");
    let list = json!({"cniVersion": "1.1.0", "name": "ipamtest", "plugins": [ipam.conf.clone()]});
    std::fs::write(&conf_file, serde_json::to_vec(&list).unwrap()).unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(bin("margay-ipam"))
            .arg("--conf")
            .arg(&conf_file)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, table, _) = cli(&["pools"]);
    assert!(ok);
    assert!(table.starts_with("POOL"), "{table}");
    assert!(
        table.contains("10.83.0.0/24") && table.contains("/26"),
        "{table}"
    );
    let (_, json_pools, _) = cli(&["pools", "--json"]);
    let pools: Value = serde_json::from_str(&json_pools).unwrap();
    assert_eq!(pools[0]["addresses_used"], 2);
    assert_eq!(pools[0]["blocks_claimed"], 1);
    let (_, blocks, _) = cli(&["blocks"]);
    assert!(
        blocks.contains("10.83.0.0/26") && blocks.contains("2/63"),
        "{blocks}"
    );
    let (_, allocs, _) = cli(&["allocations"]);
    assert!(
        allocs.contains("ipamtest.c1.eth0") && allocs.contains("10.83.0.1"),
        "{allocs}"
    );

    let (ok, msg, _) = cli(&["release", "ipamtest.c1.eth0"]);
    assert!(ok && msg.contains("10.83.0.1"), "{msg}");
    let (ok, _, err) = cli(&["release", "ipamtest.c1.eth0"]);
    assert!(!ok && err.contains("no such handle"), "{err}");
    assert_eq!(ipam.allocations().len(), 1);
}

#[test]
fn dotted_names_that_make_the_same_handle_never_share_an_allocation() {
    // Network "a.b" with container "c" and network "a" with container
    // "b.c" both make the handle "a.b.c.eth0".
    let ipam = Ipam::new(&["10.233.1.0/24"]);
    let mut net_ab = ipam.conf.clone();
    net_ab["name"] = "a.b".into();
    let mut net_a = ipam.conf.clone();
    net_a["name"] = "a".into();

    let first = ipam.call("ADD", "c", "", &net_ab);
    assert!(first.success, "{}", first.stdout);
    let first = first.json();

    let clash = ipam.call("ADD", "b.c", "", &net_a);
    assert_eq!(clash.error_code(), 4, "{}", clash.stdout);
    let msg = clash.json()["msg"].as_str().unwrap().to_string();
    for part in [
        "a.b.c.eth0",
        r#"network "a.b", container "c""#,
        r#"network "a", container "b.c""#,
    ] {
        assert!(msg.contains(part), "{part} in {msg}");
    }
    let allocs = ipam.allocations();
    assert_eq!(allocs.len(), 1);
    assert_eq!(
        (&allocs[0]["network"], &allocs[0]["container_id"]),
        (&json!("a.b"), &json!("c"))
    );

    // The other attachment holds nothing, so its DEL releases nothing and
    // its CHECK fails.
    assert!(ipam.call("DEL", "b.c", "", &net_a).success);
    assert_eq!(ipam.allocations().len(), 1, "a.b/c keeps its address");
    let mut check = net_a.clone();
    check["prevResult"] = first.clone();
    let checked = ipam.call("CHECK", "b.c", "", &check);
    assert_eq!(checked.error_code(), 107);
    assert!(
        checked.json()["msg"]
            .as_str()
            .unwrap()
            .contains("belongs to"),
        "{}",
        checked.stdout
    );

    let again = ipam.call("ADD", "c", "", &net_ab).json();
    assert_eq!(again["ips"], first["ips"], "a retried ADD still gets it");
    assert!(ipam.call("DEL", "c", "", &net_ab).success);
    assert!(ipam.allocations().is_empty());
    assert!(
        ipam.call("ADD", "b.c", "", &net_a).success,
        "free once the holder is gone"
    );
}

#[test]
fn two_nodes_on_one_store_never_allocate_from_each_others_blocks() {
    // Two /28 blocks in the pool: each node claims one.
    let ipam = Ipam::with(&["10.233.2.0/27"], json!({"block_size": 28}));
    let mut node_b = ipam.conf.clone();
    node_b["nodename"] = "node-b".into();
    let add_b = |cid: &str| ipam.call("ADD", cid, "", &node_b);
    let ip_of = |out: &Output| -> String {
        assert!(out.success, "{} {}", out.stdout, out.stderr);
        out.json()["ips"][0]["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let in_block = |ip: &str, last_octets: std::ops::Range<u8>| {
        let last: u8 = ip
            .trim_end_matches("/32")
            .rsplit('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        last_octets.contains(&last)
    };

    assert_eq!(ipam.add_ip("a0"), "10.233.2.1/32");
    assert_eq!(ip_of(&add_b("b0")), "10.233.2.16/32");
    // node-a fills its block (.0 is the pool's network address).
    for i in 1..15 {
        let ip = ipam.add_ip(&format!("a{i}"));
        assert!(in_block(&ip, 1..16), "node-a got {ip}");
    }
    // node-b's block has 14 free addresses; node-a takes none of them.
    assert_eq!(ipam.add("a15").error_code(), 101);
    assert_eq!(ipam.status().error_code(), 50);
    assert!(ipam.call("STATUS", "", "", &node_b).success);
    let asked = ipam.call("ADD", "a16", "IP=10.233.2.20", &ipam.conf);
    assert_eq!(asked.error_code(), 102);
    assert!(
        asked.json()["msg"].as_str().unwrap().contains("node-b"),
        "{}",
        asked.stdout
    );

    // Addresses node-a frees stay node-a's: node-b fills its own block
    // (.31 is the pool's broadcast address) and then has nothing.
    assert!(ipam.del("a3").success);
    for i in 1..15 {
        let ip = ip_of(&add_b(&format!("b{i}")));
        assert!(in_block(&ip, 16..31), "node-b got {ip}");
    }
    assert_eq!(add_b("b15").error_code(), 101);
    assert_eq!(ipam.add_ip("a3"), "10.233.2.4/32", "node-a's freed address");

    let out = Command::new(bin("margay-ipam"))
        .arg("--data-dir")
        .arg(ipam.data_dir())
        .args(["blocks", "--json"])
        .output()
        .unwrap();
    let blocks: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let owners: Vec<(&str, &str)> = blocks
        .iter()
        .map(|b| (b["cidr"].as_str().unwrap(), b["node"].as_str().unwrap()))
        .collect();
    assert_eq!(
        owners,
        [("10.233.2.0/28", "node-a"), ("10.233.2.16/28", "node-b")]
    );
    for a in ipam.allocations() {
        let ip = a["addresses"][0].as_str().unwrap();
        let range = if a["node"] == "node-a" { 1..16 } else { 16..31 };
        assert!(in_block(ip, range), "{a}");
    }
}
