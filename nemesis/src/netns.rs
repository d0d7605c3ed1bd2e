//! The netns backend's network: a bridge in the root namespace, one namespace per node, veth
//! pairs, and iptables rules inside the namespaces for partitions.
//!
//! ```text
//!   root ns: kvbr0 10.77.0.254/24 ── kvv1 ══ eth0 10.77.0.1 (ns kv-n1)
//!                                 ── kvv2 ══ eth0 10.77.0.2 (ns kv-n2) ...
//! ```
//! Traffic stays inside the /24: the namespaces get no default route, we never enable
//! forwarding or NAT, so nothing reaches another interface. Clients in the root namespace reach
//! the nodes through the bridge's address.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use crate::spec::NetnsLayout;
use crate::NodeId;

/// How long removed links may take to disappear (veth removal is asynchronous).
pub const LINK_GONE_TIMEOUT_MS: u64 = 2000;
const LINK_POLL_MS: u64 = 10;

/// A partition: node -> the nodes whose packets it drops (Jepsen's "grudge"). Asymmetric
/// grudges make one-way partitions.
pub type Grudge = BTreeMap<NodeId, BTreeSet<NodeId>>;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("the netns backend needs root (creating namespaces and iptables rules); run as root")]
    NotRoot,
    #[error("cannot run {command}: {source} (install iproute2 and iptables)")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("subnet {subnet}.0/24 is already used on this machine ({found}); pick another")]
    SubnetInUse { subnet: String, found: String },
}

pub fn is_root() -> bool {
    rustix::process::getuid().is_root()
}

pub fn require_root() -> Result<(), NetnsError> {
    if is_root() {
        Ok(())
    } else {
        Err(NetnsError::NotRoot)
    }
}

/// Runs a command, returns its stdout; a non-zero exit is an error carrying stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, NetnsError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(NetnsError::Failed { command, stderr });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command inside a namespace.
pub fn run_in(namespace: &str, program: &str, args: &[&str]) -> Result<String, NetnsError> {
    let mut full = vec!["netns", "exec", namespace, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// The network of one netns cluster. `create` builds it; `destroy` (idempotent) removes it.
#[derive(Clone, Debug)]
pub struct Network {
    pub layout: NetnsLayout,
    pub node_ids: Vec<NodeId>,
}

impl Network {
    /// Removes leftovers with the same names first (a crashed earlier run), then builds.
    /// On any failure, whatever was built is removed again.
    pub fn create(layout: &NetnsLayout, node_ids: &[NodeId]) -> Result<Network, NetnsError> {
        require_root()?;
        let network = Network {
            layout: layout.clone(),
            node_ids: node_ids.to_vec(),
        };
        network.destroy()?;
        check_subnet_free(layout)?;
        if let Err(error) = network.build() {
            let _ = network.destroy();
            return Err(error);
        }
        Ok(network)
    }

    fn build(&self) -> Result<(), NetnsError> {
        let bridge = self.layout.bridge();
        let bridge_cidr = format!("{}/24", self.layout.bridge_ip());
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run("ip", &["addr", "add", &bridge_cidr, "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        for id in &self.node_ids {
            self.build_node(*id)?;
        }
        Ok(())
    }

    fn build_node(&self, id: NodeId) -> Result<(), NetnsError> {
        let namespace = self.layout.namespace(id);
        let host = self.layout.veth_host(id);
        let peer = self.layout.veth_peer(id);
        let cidr = format!("{}/24", self.layout.node_ip(id));
        run("ip", &["netns", "add", &namespace])?;
        run(
            "ip",
            &["link", "add", &host, "type", "veth", "peer", "name", &peer],
        )?;
        run("ip", &["link", "set", &peer, "netns", &namespace])?;
        run(
            "ip",
            &["link", "set", &host, "master", &self.layout.bridge()],
        )?;
        run("ip", &["link", "set", &host, "up"])?;
        run_in(&namespace, "ip", &["link", "set", "lo", "up"])?;
        run_in(&namespace, "ip", &["link", "set", &peer, "name", "eth0"])?;
        run_in(&namespace, "ip", &["addr", "add", &cidr, "dev", "eth0"])?;
        run_in(&namespace, "ip", &["link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// Applies a partition: in node a's namespace, drop input from each node in `grudge[a]`.
    /// Dropping on input only (as Jepsen does) lets a one-way grudge cut one direction.
    pub fn block(&self, grudge: &Grudge) -> Result<(), NetnsError> {
        for (node, blocked) in grudge {
            let namespace = self.layout.namespace(*node);
            for other in blocked {
                let source = self.layout.node_ip(*other).to_string();
                let args = ["-w", "-A", "INPUT", "-s", &source, "-j", "DROP"];
                run_in(&namespace, "iptables", &args)?;
            }
        }
        Ok(())
    }

    /// Removes every partition rule. The namespaces are ours, so flushing INPUT is exact.
    pub fn heal(&self) -> Result<(), NetnsError> {
        for id in &self.node_ids {
            run_in(
                &self.layout.namespace(*id),
                "iptables",
                &["-w", "-F", "INPUT"],
            )?;
        }
        Ok(())
    }

    /// The INPUT rules of one namespace, as `iptables -S INPUT` prints them.
    pub fn rules(&self, id: NodeId) -> Result<String, NetnsError> {
        run_in(
            &self.layout.namespace(id),
            "iptables",
            &["-w", "-S", "INPUT"],
        )
    }

    /// Kills processes inside the namespaces, deletes namespaces, veths and the bridge.
    /// Idempotent: missing objects are skipped.
    pub fn destroy(&self) -> Result<(), NetnsError> {
        let namespaces: Vec<String> = self
            .node_ids
            .iter()
            .map(|id| self.layout.namespace(*id))
            .collect();
        let mut links: Vec<String> = self
            .node_ids
            .iter()
            .map(|id| self.layout.veth_host(*id))
            .collect();
        links.push(self.layout.bridge());
        remove_objects(&namespaces, &links)
    }
}

/// Removes everything named with `prefix` (namespaces `<prefix>-n<k>`, links `<prefix>v<k>`,
/// `<prefix>v<k>p` and `<prefix>br0`), whatever node count created it. Returns what it removed.
pub fn remove_leftovers(prefix: &str) -> Result<Vec<String>, NetnsError> {
    let is_node_suffix = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let namespaces: Vec<String> = list_namespaces()?
        .into_iter()
        .filter(|name| {
            name.strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix("-n"))
                .is_some_and(is_node_suffix)
        })
        .collect();
    let links: Vec<String> = list_links()?
        .into_iter()
        .filter(|name| {
            let Some(rest) = name.strip_prefix(prefix) else {
                return false;
            };
            if rest == "br0" {
                return true;
            }
            let Some(rest) = rest.strip_prefix('v') else {
                return false;
            };
            is_node_suffix(rest.strip_suffix('p').unwrap_or(rest))
        })
        .collect();
    remove_objects(&namespaces, &links)?;
    Ok(namespaces.into_iter().chain(links).collect())
}

fn remove_objects(namespaces: &[String], links: &[String]) -> Result<(), NetnsError> {
    let existing_namespaces = list_namespaces()?;
    for namespace in namespaces {
        if !existing_namespaces.contains(namespace) {
            continue;
        }
        kill_namespace_processes(namespace)?;
        // Deleting the namespace destroys the veth end inside it, and with it the pair.
        run("ip", &["netns", "del", namespace])?;
    }
    let existing_links = list_links()?;
    // Every link is tried even after a failure (a veth left must not leave the bridge too);
    // the first failure is reported.
    let mut first_error = None;
    for link in links {
        if !existing_links.contains(link) {
            continue;
        }
        // The kernel removes a veth asynchronously once its peer's namespace is gone, so the
        // link can vanish between the listing and this call: that is success.
        match run("ip", &["link", "del", link]) {
            Err(NetnsError::Failed { stderr, .. }) if link_already_gone(&stderr) => {}
            Err(error) => {
                first_error.get_or_insert(error);
            }
            Ok(_) => {}
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    wait_links_gone(links)
}

/// Whether `ip link del`'s error says the link no longer exists: iproute2's own lookup
/// ("Cannot find device") or the kernel's answer when the link went between that lookup and
/// the deletion ("RTNETLINK answers: No such device", ENODEV).
fn link_already_gone(stderr: &str) -> bool {
    stderr.contains("Cannot find device") || stderr.contains("No such device")
}

/// Polls until none of `links` exists, so a following `create` with the same names cannot
/// race the kernel's asynchronous veth removal.
fn wait_links_gone(links: &[String]) -> Result<(), NetnsError> {
    let start = std::time::Instant::now();
    loop {
        let existing = list_links()?;
        let left: Vec<&String> = links.iter().filter(|l| existing.contains(l)).collect();
        if left.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= std::time::Duration::from_millis(LINK_GONE_TIMEOUT_MS) {
            return Err(NetnsError::Failed {
                command: "ip link del".to_string(),
                stderr: format!(
                    "links {} still present after {LINK_GONE_TIMEOUT_MS} ms",
                    left.iter()
                        .map(|link| link.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(LINK_POLL_MS));
    }
}

/// SIGCONT then SIGKILL to every process in the namespace (a stopped process dies on SIGKILL
/// too, the SIGCONT only makes the order explicit), then waits for them to go.
fn kill_namespace_processes(namespace: &str) -> Result<(), NetnsError> {
    let pids: Vec<u32> = run("ip", &["netns", "pids", namespace])?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    for pid in &pids {
        let _ = crate::process::send_signal(*pid, rustix::process::Signal::CONT);
        let _ = crate::process::send_signal(*pid, rustix::process::Signal::KILL);
    }
    for pid in &pids {
        let _ = crate::process::wait_gone(*pid, crate::cluster::STOP_TIMEOUT);
    }
    Ok(())
}

pub fn list_namespaces() -> Result<Vec<String>, NetnsError> {
    let text = run("ip", &["netns", "list"])?;
    // Lines look like `kv-n1 (id: 3)` or just `kv-n1`.
    Ok(text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(String::from)
        .collect())
}

pub fn list_links() -> Result<Vec<String>, NetnsError> {
    let text = run("ip", &["-o", "link", "show"])?;
    // Lines look like `7: kvv1@if6: <BROADCAST,...`.
    Ok(text
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect())
}

/// Refuses a subnet that any existing interface address already uses (ours were removed
/// before this check), so the cluster can never shadow a real network.
fn check_subnet_free(layout: &NetnsLayout) -> Result<(), NetnsError> {
    let [a, b, c] = layout.subnet;
    let subnet = format!("{a}.{b}.{c}");
    let addresses = run("ip", &["-o", "-4", "addr", "show"])?;
    let routes = run("ip", &["-4", "route", "show"])?;
    let needle = format!("{subnet}.");
    // Match whole addresses only: 10.77.0. must not match inside 110.77.0.5.
    let uses_subnet = |line: &str| {
        line.match_indices(&needle).any(|(at, _)| {
            let before = line[..at].chars().next_back();
            !before.is_some_and(|c| c.is_ascii_digit() || c == '.')
        })
    };
    for line in addresses.lines().chain(routes.lines()) {
        if uses_subnet(line) {
            return Err(NetnsError::SubnetInUse {
                subnet,
                found: line.trim().to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::link_already_gone;

    /// The CI run of 2026-12-06 04:13 failed on the kernel's wording: the veth went with its
    /// namespace between iproute2's lookup and the deletion, and the bridge was left behind.
    #[test]
    fn a_link_gone_during_its_deletion_counts_as_deleted_and_other_errors_do_not() {
        assert!(link_already_gone("Cannot find device \"ktev1\"\n"));
        assert!(link_already_gone("RTNETLINK answers: No such device\n"));
        assert!(!link_already_gone(
            "RTNETLINK answers: Operation not permitted\n"
        ));
        assert!(!link_already_gone(
            "RTNETLINK answers: Device or resource busy\n"
        ));
    }
}
