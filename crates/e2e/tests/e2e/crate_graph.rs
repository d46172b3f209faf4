//! ARCHITECTURE.md's crate rules, held against the real dependency graph (`cargo metadata`):
//! `proto` does no I/O; only `server` knows axum; `store` and `cluster` do not know each
//! other; `client` and `bench` never depend on `server` (except in tests); the test kit
//! (`natter-testkit`) is only ever a dev-dependency.
//!
//! Edges are normal and build dependencies (dev-dependencies are allowed to break the rules:
//! tests may start a server), followed transitively, with features as the workspace unifies
//! them, for the platform the test runs on.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Crates that do I/O (or exist to): `natter-proto` must reach none of them.
const IO_CRATES: &[&str] = &[
    "tokio",
    "tokio-util",
    "tokio-tungstenite",
    "tungstenite",
    "axum",
    "axum-core",
    "hyper",
    "hyper-util",
    "reqwest",
    "rusqlite",
    "libsqlite3-sys",
    "tokio-postgres",
    "postgres",
    "deadpool-postgres",
    "redis",
    "mio",
    "socket2",
    "async-std",
    "natter-store",
    "natter-cluster",
    "natter-server",
    "natter-client",
];

/// Workspace crates that exist to test the others and may depend on anything.
const TEST_CRATES: &[&str] = &["natter-testkit", "natter-e2e"];

/// The workspace's crate graph: package names, and each one's non-dev dependencies.
struct Graph {
    members: BTreeSet<String>,
    deps: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    fn load() -> Graph {
        let meta = cargo_metadata();
        let names: BTreeMap<&str, &str> = meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| (p["id"].as_str().expect("id"), p["name"].as_str().expect("name")))
            .collect();
        let name_of = |id: &Value| names[id.as_str().expect("package id")].to_owned();
        let members = meta["workspace_members"].as_array().expect("members").iter().map(name_of);
        let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for node in meta["resolve"]["nodes"].as_array().expect("resolve nodes") {
            let entry = deps.entry(name_of(&node["id"])).or_default();
            for dep in node["deps"].as_array().expect("deps") {
                let non_dev = dep["dep_kinds"]
                    .as_array()
                    .expect("dep_kinds")
                    .iter()
                    .any(|k| k["kind"].as_str() != Some("dev"));
                if non_dev {
                    entry.insert(name_of(&dep["pkg"]));
                }
            }
        }
        Graph { members: members.collect(), deps }
    }

    /// The shortest non-dev dependency path from `from` to any crate in `to`, if one exists.
    fn path(&self, from: &str, to: &[&str]) -> Option<Vec<String>> {
        let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([from]);
        while let Some(at) = queue.pop_front() {
            if at != from && to.contains(&at) {
                let mut path = vec![at.to_owned()];
                let mut cur = at;
                while let Some(&up) = parent.get(cur) {
                    path.push(up.to_owned());
                    cur = up;
                }
                path.reverse();
                return Some(path);
            }
            for next in self.deps.get(at).into_iter().flatten() {
                if next != from && !parent.contains_key(next.as_str()) {
                    parent.insert(next, at);
                    queue.push_back(next);
                }
            }
        }
        None
    }
}

/// `cargo metadata` for the host platform, offline first (everything the build needed is in
/// the local registry), then with the network.
fn cargo_metadata() -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let host = host_triple();
    let base = ["metadata", "--format-version", "1", "--locked", "--filter-platform", &host];
    let mut failures = Vec::new();
    for extra in [&["--offline"][..], &[]] {
        let out = Command::new(env!("CARGO"))
            .args(base)
            .args(extra)
            .current_dir(&root)
            .output()
            .expect("cargo runs");
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).expect("cargo metadata is JSON");
        }
        failures.push(format!("{extra:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    panic!("cargo metadata failed:\n{}", failures.join("\n"));
}

fn host_triple() -> String {
    // rustc sits next to cargo in a toolchain; fall back to the one on PATH.
    let beside = Path::new(env!("CARGO")).with_file_name("rustc");
    let rustc = if beside.exists() { beside.into_os_string() } else { "rustc".into() };
    let out = Command::new(rustc).arg("-vV").output().expect("rustc runs");
    let text = String::from_utf8(out.stdout).expect("rustc -vV is UTF-8");
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_owned()
}

#[test]
fn the_crate_graph_follows_architecture_md() {
    let graph = Graph::load();
    for name in [
        "natter-proto",
        "natter-store",
        "natter-cluster",
        "natter-server",
        "natter-client",
        "natter-bench",
        "natter-testkit",
        "natter-e2e",
    ] {
        assert!(graph.members.contains(name), "{name} is not a workspace member");
    }
    // The checks can see a path: without these, a renamed crate would make every rule pass.
    assert!(graph.path("natter-server", &["axum"]).is_some(), "server reaches axum");
    assert!(graph.path("natter-bench", &["natter-proto"]).is_some(), "bench reaches proto");

    let mut broken = Vec::new();
    let mut forbid = |rule: &str, from: &str, to: &[&str]| {
        if let Some(path) = graph.path(from, to) {
            broken.push(format!("{rule}: {}", path.join(" -> ")));
        }
    };
    forbid("proto does no I/O", "natter-proto", IO_CRATES);
    forbid("store does not know cluster", "natter-store", &["natter-cluster"]);
    forbid("cluster does not know store", "natter-cluster", &["natter-store"]);
    forbid("client never depends on server", "natter-client", &["natter-server"]);
    forbid("bench never depends on server", "natter-bench", &["natter-server"]);
    for member in &graph.members {
        if member != "natter-server" && !TEST_CRATES.contains(&member.as_str()) {
            forbid("only server knows axum", member, &["axum"]);
        }
        if !TEST_CRATES.contains(&member.as_str()) {
            forbid("the test kit is only a dev-dependency", member, &["natter-testkit"]);
        }
    }
    assert!(broken.is_empty(), "ARCHITECTURE.md rules broken:\n{}", broken.join("\n"));
}
